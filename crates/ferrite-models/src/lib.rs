//! Model backends: ONNX models through ONNX Runtime (`ort`, loaded at run time) and
//! native architectures written with candle, behind one `ModelBackend` trait.
//!
//! Owns model configs, loading and running a model, and typed tensors. It does not own the
//! wire protocol (that is `ferrite-server`).

mod backend;
pub mod candle_backend;
pub mod config;
pub mod efficientnet;
mod error;
pub mod mlp;
pub mod onnx;
mod queue;
pub mod repository;
pub mod runtime;
pub mod stats;
mod tensor;
pub mod trees;
pub mod validate;
pub mod warmup;

pub use backend::ModelBackend;
pub use config::{BackendKind, ModelConfig, TensorSpec, VersionPolicy};
pub use error::ModelError;
pub use onnx::OnnxModel;
pub use repository::{IndexEntry, LoadedModel, ModelRepository};
pub use runtime::OnnxRuntime;
pub use tensor::{DataType, Tensor, TensorData};
