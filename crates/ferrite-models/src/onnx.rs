//! Running an ONNX model through ONNX Runtime.

use std::path::Path;
use std::sync::Mutex;

use ndarray::ArrayD;
use ort::session::Session;
use ort::value::Tensor;

use crate::{ModelError, OnnxRuntime};

/// One loaded ONNX model. `ort::Session::run` takes `&mut self`, so calls are serialised
/// on a mutex; the batching queue in front of it is what makes that cheap.
pub struct OnnxModel {
    session: Mutex<Session>,
    input_names: Vec<String>,
    output_names: Vec<String>,
}

impl OnnxModel {
    /// Loads `path` with `intra_threads` threads for each run (0 lets ONNX Runtime choose).
    pub fn load(rt: &OnnxRuntime, path: &Path, intra_threads: usize) -> Result<Self, ModelError> {
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

    /// Runs the model on float32 inputs given by name and returns every output, in the
    /// model's output order.
    pub fn run_f32(
        &self,
        inputs: Vec<(String, ArrayD<f32>)>,
    ) -> Result<Vec<(String, ArrayD<f32>)>, ModelError> {
        for (name, _) in &inputs {
            if !self.input_names.contains(name) {
                return Err(ModelError::InvalidInput(format!(
                    "no input named {name:?}; the model takes {:?}",
                    self.input_names
                )));
            }
        }
        let values = inputs
            .into_iter()
            .map(|(name, array)| Ok((name, Tensor::from_array(array)?)))
            .collect::<Result<Vec<_>, ort::Error>>()?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| ModelError::Inference("session lock poisoned".into()))?;
        let outputs = session.run(values)?;
        self.output_names
            .iter()
            .map(|name| {
                let array = outputs[name.as_str()].try_extract_array::<f32>()?.to_owned();
                Ok((name.clone(), array))
            })
            .collect()
    }
}
