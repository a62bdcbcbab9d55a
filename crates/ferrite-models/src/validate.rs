//! Checking requests against a model's config.

use crate::{ModelConfig, ModelError, Tensor};

/// Every declared input exactly once, with its declared type and a shape that fits.
pub fn check_inputs(config: &ModelConfig, inputs: &[Tensor]) -> Result<(), ModelError> {
    let bad = |m: String| Err(ModelError::InvalidInput(m));
    for t in inputs {
        if !config.inputs.iter().any(|s| s.name == t.name) {
            let names: Vec<&str> = config.inputs.iter().map(|s| s.name.as_str()).collect();
            return bad(format!("unknown input {:?}; the model takes {names:?}", t.name));
        }
    }
    for spec in &config.inputs {
        let mut given = inputs.iter().filter(|t| t.name == spec.name);
        let Some(t) = given.next() else {
            return bad(format!("missing input {:?}", spec.name));
        };
        if given.next().is_some() {
            return bad(format!("input {:?} is given twice", spec.name));
        }
        if t.dtype() != spec.dtype {
            return bad(format!(
                "input {:?} has datatype {}, expected {}",
                spec.name,
                t.dtype(),
                spec.dtype
            ));
        }
        let expected = config.full_shape(spec);
        let fits = t.shape.len() == expected.len()
            && t.shape
                .iter()
                .zip(&expected)
                .all(|(&got, &want)| want == -1 || got as i64 == want);
        if !fits {
            return bad(format!(
                "input {:?} has shape {:?}, expected {:?} (-1: any size)",
                spec.name, t.shape, expected
            ));
        }
        if config.max_batch_size > 0 && !(1..=config.max_batch_size).contains(&t.shape[0]) {
            return bad(format!(
                "input {:?} has batch size {}, expected 1..={}",
                spec.name, t.shape[0], config.max_batch_size
            ));
        }
        if !config.allow_non_finite
            && let Some(i) = t.data.first_non_finite()
        {
            return bad(format!(
                "input {:?} has a NaN or infinite value at element {i}; this model refuses them",
                spec.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TensorData;

    fn config() -> ModelConfig {
        toml::from_str(
            r#"
backend = "onnx"
max_batch_size = 8
inputs = [{ name = "x", dtype = "FP32", dims = [4] }, { name = "ids", dtype = "INT64", dims = [-1] }]
outputs = [{ name = "y", dtype = "FP32", dims = [2] }]
"#,
        )
        .unwrap()
    }

    fn x(shape: Vec<usize>, v: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::new("x", shape, TensorData::Fp32(vec![v; n])).unwrap()
    }

    fn ids(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor::new("ids", shape, TensorData::Int64(vec![1; n])).unwrap()
    }

    fn err(inputs: &[Tensor]) -> String {
        check_inputs(&config(), inputs).unwrap_err().to_string()
    }

    #[test]
    fn a_fitting_request_passes() {
        check_inputs(&config(), &[x(vec![3, 4], 1.0), ids(vec![3, 17])]).unwrap();
    }

    #[test]
    fn each_mistake_says_what_was_expected() {
        assert!(err(&[x(vec![1, 4], 1.0)]).contains("missing input \"ids\""));
        assert!(err(&[x(vec![1, 4], 1.0), ids(vec![1, 2]), x(vec![1, 4], 1.0)]).contains("given twice"));
        let z = Tensor::new("z", vec![1], TensorData::Fp32(vec![0.0])).unwrap();
        assert!(err(&[z, x(vec![1, 4], 1.0), ids(vec![1, 1])]).contains("unknown input \"z\""));
        assert!(err(&[x(vec![1, 5], 1.0), ids(vec![1, 1])]).contains("expected [-1, 4]"));
        assert!(err(&[x(vec![4], 1.0), ids(vec![1, 1])]).contains("expected [-1, 4]"));
        assert!(err(&[x(vec![9, 4], 1.0), ids(vec![9, 1])]).contains("batch size 9, expected 1..=8"));
        let wrong_type = Tensor::new("x", vec![1, 4], TensorData::Fp64(vec![0.0; 4])).unwrap();
        assert!(err(&[wrong_type, ids(vec![1, 1])]).contains("datatype FP64, expected FP32"));
        assert!(err(&[x(vec![1, 4], f32::NAN), ids(vec![1, 1])]).contains("NaN"));
    }

    #[test]
    fn non_finite_values_pass_when_the_config_allows_them() {
        let mut c = config();
        c.allow_non_finite = true;
        check_inputs(&c, &[x(vec![1, 4], f32::INFINITY), ids(vec![1, 1])]).unwrap();
    }
}
