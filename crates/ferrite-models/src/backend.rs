//! The seam every model backend implements.

use std::sync::Arc;

use crate::trees::TreeEnsemble;
use crate::{ModelError, Tensor};

/// A loaded model that runs batches. Inputs reach it already checked against the model's
/// config (names, types, shapes); outputs come back in the model's output order.
pub trait ModelBackend: Send + Sync {
    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError>;

    /// The model's tree ensemble, when it is one that [`TreeEnsemble`] evaluates: a copy for
    /// work that a run per row does badly (explanations), never the answer itself.
    fn tree_ensemble(&self) -> Option<&Arc<TreeEnsemble>> {
        None
    }
}
