//! The ONNX backend: a model file run by ONNX Runtime.

use std::path::Path;
use std::sync::Mutex;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynMapValueType, DynSequenceValueType, DynValue, TensorElementType, TensorRef, ValueType};

use crate::{DataType, ModelBackend, ModelError, Tensor, TensorData};

/// One loaded ONNX model. `ort::Session::run` takes `&mut self`, so runs are serialised on a
/// mutex; the batching queue in front of it is what keeps that cheap.
pub struct OnnxModel {
    session: Mutex<Session>,
    input_names: Vec<String>,
    output_names: Vec<String>,
}

impl OnnxModel {
    /// Loads `path` with `intra_threads` threads for each run (0 lets ONNX Runtime choose).
    pub fn load(rt: &crate::OnnxRuntime, path: &Path, intra_threads: usize) -> Result<Self, ModelError> {
        let fail = |e: ort::Error| ModelError::Load {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut builder = Session::builder(rt.environment()).map_err(fail)?;
        if intra_threads > 0 {
            builder = builder
                .with_intra_threads(intra_threads)
                .map_err(|e| fail(e.into()))?;
        }
        let session = builder.commit_from_file(path).map_err(fail)?;
        let input_names = session.inputs().iter().map(|o| o.name().to_string()).collect();
        let output_names = session.outputs().iter().map(|o| o.name().to_string()).collect();
        Ok(OnnxModel {
            session: Mutex::new(session),
            input_names,
            output_names,
        })
    }

    pub fn input_names(&self) -> &[String] {
        &self.input_names
    }

    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }
}

impl ModelBackend for OnnxModel {
    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        let mut values: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for t in inputs {
            if !self.input_names.contains(&t.name) {
                return Err(ModelError::InvalidInput(format!(
                    "no input named {:?}; the model takes {:?}",
                    t.name, self.input_names
                )));
            }
            values.push((t.name.clone(), to_ort(t)?));
        }
        let mut session = self
            .session
            .lock()
            .map_err(|_| ModelError::Inference("session lock poisoned".into()))?;
        let outputs = session.run(values)?;
        self.output_names
            .iter()
            .map(|name| from_ort(name, &outputs[name.as_str()]))
            .collect()
    }
}

/// A view of the tensor's data for ONNX Runtime; strings are copied, numbers are not.
fn to_ort(t: &Tensor) -> Result<SessionInputValue<'_>, ModelError> {
    let shape = t.shape.clone();
    let value: SessionInputValue<'_> = match &t.data {
        TensorData::Fp32(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
        TensorData::Fp64(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
        TensorData::Int32(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
        TensorData::Int64(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
        TensorData::Bool(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
        TensorData::Bytes(v) => {
            let strings = v
                .iter()
                .map(|b| String::from_utf8(b.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    ModelError::InvalidInput(format!(
                        "{}: BYTES elements must be UTF-8 for ONNX strings",
                        t.name
                    ))
                })?;
            ort::value::Tensor::from_string_array((shape, strings.as_slice()))?.into()
        }
    };
    Ok(value)
}

fn from_ort(name: &str, value: &DynValue) -> Result<Tensor, ModelError> {
    let unsupported = |what: String| {
        ModelError::Inference(format!(
            "output {name:?} is {what}, which Ferrite does not serve; export the model with plain \
             tensor outputs (for scikit-learn/LightGBM/XGBoost classifiers: without ZipMap)"
        ))
    };
    let ty = match value.dtype() {
        ValueType::Tensor { ty, .. } => ty,
        ValueType::Sequence(inner) if is_class_probability_map(inner) => return zipmap_rows(name, value),
        other => return Err(unsupported(format!("{other:?}"))),
    };
    macro_rules! numeric {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>()?;
            (
                shape.iter().map(|&d| d as usize).collect::<Vec<_>>(),
                TensorData::$variant(data.to_vec()),
            )
        }};
    }
    let (shape, data) = match ty {
        TensorElementType::Float32 => numeric!(f32, Fp32),
        TensorElementType::Float64 => numeric!(f64, Fp64),
        TensorElementType::Int32 => numeric!(i32, Int32),
        TensorElementType::Int64 => numeric!(i64, Int64),
        TensorElementType::Bool => numeric!(bool, Bool),
        TensorElementType::String => {
            let (shape, strings) = value.try_extract_strings()?;
            let shape = shape.iter().map(|&d| d as usize).collect::<Vec<_>>();
            (
                shape,
                TensorData::Bytes(strings.into_iter().map(String::into_bytes).collect()),
            )
        }
        other => return Err(unsupported(format!("a {other:?} tensor"))),
    };
    Tensor::new(name, shape, data)
}

/// What classifier converters emit with ZipMap: one `{class: probability}` map per row.
fn is_class_probability_map(ty: &ValueType) -> bool {
    matches!(
        ty,
        ValueType::Map {
            key: TensorElementType::Int64,
            value: TensorElementType::Float32
        }
    )
}

/// A sequence of `{class: probability}` maps, served as an FP32 `[rows, classes]` tensor with
/// classes in ascending order: the same answer as the model exported without ZipMap.
fn zipmap_rows(name: &str, value: &DynValue) -> Result<Tensor, ModelError> {
    let sequence = value.view().downcast::<DynSequenceValueType>()?;
    let maps = sequence.try_extract_sequence::<DynMapValueType>()?;
    let mut data = Vec::new();
    let mut classes = None;
    for map in &maps {
        let mut pairs = map.try_extract_key_values::<i64, f32>()?;
        pairs.sort_unstable_by_key(|(class, _)| *class);
        let keys: Vec<i64> = pairs.iter().map(|(class, _)| *class).collect();
        match &classes {
            None => classes = Some(keys),
            Some(first) if *first != keys => {
                return Err(ModelError::Inference(format!(
                    "output {name:?}: rows have different classes"
                )));
            }
            Some(_) => {}
        }
        data.extend(pairs.into_iter().map(|(_, p)| p));
    }
    let width = classes.map_or(0, |c| c.len());
    Tensor::new(name, vec![maps.len(), width], TensorData::Fp32(data))
}

/// The protocol type that an ONNX tensor element type is served as, if any.
pub fn data_type_of(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}
