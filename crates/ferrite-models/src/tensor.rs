//! Typed tensors: what a backend takes and returns, free of any wire format.

use serde::Deserialize;

use crate::ModelError;

/// Element types, named as in the KServe v2 protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum DataType {
    #[serde(rename = "BOOL")]
    Bool,
    #[serde(rename = "INT32")]
    Int32,
    #[serde(rename = "INT64")]
    Int64,
    #[serde(rename = "FP32")]
    Fp32,
    #[serde(rename = "FP64")]
    Fp64,
    /// Variable-length byte strings (ONNX `string`).
    #[serde(rename = "BYTES")]
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 6] = [
        DataType::Bool,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// The protocol name: `FP32`, `INT64`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    pub fn parse(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// Bytes per element in the raw little-endian encoding; `None` for BYTES.
    pub fn element_size(self) -> Option<usize> {
        match self {
            DataType::Bool => Some(1),
            DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The elements of a tensor in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(Vec<Vec<u8>>),
}

impl TensorData {
    pub fn dtype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TensorData::Bool(v) => v.len(),
            TensorData::Int32(v) => v.len(),
            TensorData::Int64(v) => v.len(),
            TensorData::Fp32(v) => v.len(),
            TensorData::Fp64(v) => v.len(),
            TensorData::Bytes(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements of `parts` end to end; every part must be of this type.
    pub fn concat(parts: &[&TensorData]) -> Result<TensorData, ModelError> {
        macro_rules! join {
            ($variant:ident) => {{
                let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
                for p in parts {
                    match p {
                        TensorData::$variant(v) => out.extend_from_slice(v),
                        other => {
                            return Err(ModelError::InvalidInput(format!(
                                "cannot join {} with {}",
                                DataType::$variant,
                                other.dtype()
                            )));
                        }
                    }
                }
                TensorData::$variant(out)
            }};
        }
        Ok(match parts.first().map(|p| p.dtype()) {
            None => return Err(ModelError::InvalidInput("nothing to join".into())),
            Some(DataType::Bool) => join!(Bool),
            Some(DataType::Int32) => join!(Int32),
            Some(DataType::Int64) => join!(Int64),
            Some(DataType::Fp32) => join!(Fp32),
            Some(DataType::Fp64) => join!(Fp64),
            Some(DataType::Bytes) => join!(Bytes),
        })
    }

    /// Elements `start..end`.
    pub fn slice(&self, start: usize, end: usize) -> TensorData {
        match self {
            TensorData::Bool(v) => TensorData::Bool(v[start..end].to_vec()),
            TensorData::Int32(v) => TensorData::Int32(v[start..end].to_vec()),
            TensorData::Int64(v) => TensorData::Int64(v[start..end].to_vec()),
            TensorData::Fp32(v) => TensorData::Fp32(v[start..end].to_vec()),
            TensorData::Fp64(v) => TensorData::Fp64(v[start..end].to_vec()),
            TensorData::Bytes(v) => TensorData::Bytes(v[start..end].to_vec()),
        }
    }

    /// Index of the first NaN or infinite element, for float tensors.
    pub fn first_non_finite(&self) -> Option<usize> {
        // Every request is checked and almost none fails: a pass without an early exit (which
        // the compiler turns into SIMD) first, the position only when there is one.
        match self {
            TensorData::Fp32(v) if v.iter().fold(false, |bad, x| bad | !x.is_finite()) => {
                v.iter().position(|x| !x.is_finite())
            }
            TensorData::Fp64(v) if v.iter().fold(false, |bad, x| bad | !x.is_finite()) => {
                v.iter().position(|x| !x.is_finite())
            }
            _ => None,
        }
    }
}

/// A named tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    /// Builds a tensor, checking that the shape holds exactly the given elements.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: TensorData) -> Result<Tensor, ModelError> {
        let name = name.into();
        let expected = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        match expected {
            Some(n) if n == data.len() => Ok(Tensor { name, shape, data }),
            _ => Err(ModelError::InvalidInput(format!(
                "tensor {name:?}: shape {shape:?} needs {} elements, got {}",
                expected.map_or("more than 2^64".to_string(), |n| n.to_string()),
                data.len()
            ))),
        }
    }

    pub fn dtype(&self) -> DataType {
        self.data.dtype()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_must_match_the_element_count() {
        assert!(Tensor::new("x", vec![2, 3], TensorData::Fp32(vec![0.0; 6])).is_ok());
        let err = Tensor::new("x", vec![2, 3], TensorData::Fp32(vec![0.0; 5]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[2, 3]") && err.contains("6") && err.contains("5"),
            "{err}"
        );
        assert!(Tensor::new("x", vec![usize::MAX, 2], TensorData::Int64(vec![])).is_err());
    }

    #[test]
    fn names_round_trip_and_sizes_match_the_protocol() {
        for d in DataType::ALL {
            assert_eq!(DataType::parse(d.as_str()), Some(d));
        }
        assert_eq!(DataType::parse("FP16"), None);
        assert_eq!(DataType::Fp64.element_size(), Some(8));
        assert_eq!(DataType::Bytes.element_size(), None);
    }

    #[test]
    fn concat_and_slice_are_inverse() {
        let a = TensorData::Int64(vec![1, 2]);
        let b = TensorData::Int64(vec![3]);
        let joined = TensorData::concat(&[&a, &b]).unwrap();
        assert_eq!(joined, TensorData::Int64(vec![1, 2, 3]));
        assert_eq!(joined.slice(0, 2), a);
        assert_eq!(joined.slice(2, 3), b);
        assert!(TensorData::concat(&[&a, &TensorData::Fp32(vec![1.0])]).is_err());
    }

    #[test]
    fn non_finite_values_are_found() {
        assert_eq!(TensorData::Fp32(vec![1.0, f32::NAN]).first_non_finite(), Some(1));
        assert_eq!(TensorData::Fp64(vec![f64::INFINITY]).first_non_finite(), Some(0));
        assert_eq!(TensorData::Fp32(vec![1.0]).first_non_finite(), None);
    }
}
