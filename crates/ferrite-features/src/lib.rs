//! The feature store: declarative definitions, offline data in Parquet read with Polars,
//! materialization into online stores, online reads and push writes, and point-in-time
//! correct training sets.
//!
//! Owns the definitions (`definitions`), request-time expressions (`expr`), the offline
//! store (`offline`), the online stores behind the `OnlineStore` trait (`online`), and the
//! operations on them (`materialize`, `serving`, `training`). It does not own the wire
//! protocol (`ferrite-server`) nor models.

pub mod definitions;
mod error;
pub mod expr;
mod frame;
pub mod materialize;
pub mod offline;
pub mod online;
pub mod serving;
pub mod training;
pub mod value;

pub use definitions::{FeatureRef, FeatureView, Registry};
pub use error::FeatureError;
pub use offline::ParquetSource;
pub use online::{OnlineStore, StoreConfig};
pub use value::{DType, KeyType, Micros, Value};
