//! The seam every model backend implements.

use crate::{ModelError, Tensor};

/// A loaded model that runs batches. Inputs reach it already checked against the model's
/// config (names, types, shapes); outputs come back in the model's output order.
pub trait ModelBackend: Send + Sync {
    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError>;
}
