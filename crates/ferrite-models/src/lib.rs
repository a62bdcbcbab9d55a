//! Model backends: ONNX models through ONNX Runtime (`ort`, loaded at run time) and
//! native architectures written with candle.
//!
//! Owns loading and running a model. It does not own the wire protocol (that is
//! `ferrite-server`) nor which version takes traffic (that is the repository, later).

mod error;
pub mod mlp;
pub mod onnx;
pub mod runtime;

pub use error::ModelError;
pub use onnx::OnnxModel;
pub use runtime::OnnxRuntime;
