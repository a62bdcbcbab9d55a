//! A multi-layer perceptron written with candle: the simplest native architecture, and the
//! building block of the Wide & Deep and CNN models that come later.

use candle_core::Tensor;
use candle_nn::{Linear, Module, VarBuilder};

use crate::ModelError;

/// Dense layers with ReLU between them and none after the last.
/// Layer `i` reads its weights from `layers.{i}.weight` ([out, in]) and `layers.{i}.bias`.
pub struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    /// `dims` lists the width of every layer boundary: `[in, hidden.., out]`.
    pub fn new(vb: VarBuilder, dims: &[usize]) -> Result<Self, ModelError> {
        if dims.len() < 2 {
            return Err(ModelError::InvalidInput(format!(
                "an MLP needs at least an input and an output width, got {dims:?}"
            )));
        }
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| candle_nn::linear(w[0], w[1], vb.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Mlp { layers })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i + 1 < self.layers.len() {
                h = h.relu()?;
            }
        }
        Ok(h)
    }
}

/// Wide & Deep: a linear "wide" part and an MLP "deep" part over the same input, summed.
/// Weights: `wide.weight` ([out, in]), `wide.bias`, and `deep.layers.{i}.*` as in [`Mlp`].
pub struct WideDeep {
    wide: Linear,
    deep: Mlp,
}

impl WideDeep {
    /// `dims` are the deep part's widths `[in, hidden.., out]`; the wide part maps in -> out.
    pub fn new(vb: VarBuilder, dims: &[usize]) -> Result<Self, ModelError> {
        let deep = Mlp::new(vb.pp("deep"), dims)?;
        let wide = candle_nn::linear(dims[0], dims[dims.len() - 1], vb.pp("wide"))?;
        Ok(WideDeep { wide, deep })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok((self.wide.forward(x)? + self.deep.forward(x)?)?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;

    use super::Mlp;

    #[test]
    fn forward_matches_a_hand_computed_two_layer_network() {
        let dev = Device::Cpu;
        // Layer 0: 2 -> 2, layer 1: 2 -> 1.
        let tensors = HashMap::from([
            (
                "layers.0.weight".to_string(),
                Tensor::new(&[[1f32, -1.], [2., 0.5]], &dev).unwrap(),
            ),
            (
                "layers.0.bias".to_string(),
                Tensor::new(&[0f32, -1.], &dev).unwrap(),
            ),
            (
                "layers.1.weight".to_string(),
                Tensor::new(&[[1f32, 2.]], &dev).unwrap(),
            ),
            ("layers.1.bias".to_string(), Tensor::new(&[0.5f32], &dev).unwrap()),
        ]);
        let mlp = Mlp::new(VarBuilder::from_tensors(tensors, DType::F32, &dev), &[2, 2, 1]).unwrap();
        let x = Tensor::new(&[[1f32, 3.], [2., -2.]], &dev).unwrap();
        let y: Vec<Vec<f32>> = mlp.forward(&x).unwrap().to_vec2().unwrap();
        // Row 0: h = relu([1-3, 2+1.5-1]) = [0, 2.5]; y = 0 + 5 + 0.5 = 5.5.
        // Row 1: h = relu([2+2, 4-1-1]) = [4, 2];    y = 4 + 4 + 0.5 = 8.5.
        assert_eq!(y, vec![vec![5.5], vec![8.5]]);
    }

    #[test]
    fn missing_weights_are_an_error_not_a_panic() {
        let dev = Device::Cpu;
        let vb = VarBuilder::from_tensors(HashMap::new(), DType::F32, &dev);
        assert!(Mlp::new(vb, &[2, 1]).is_err());
        let vb = VarBuilder::from_tensors(HashMap::new(), DType::F32, &dev);
        assert!(Mlp::new(vb, &[2]).is_err());
    }
}
