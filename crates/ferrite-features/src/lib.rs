//! The feature store: offline data in Parquet read with Polars, online stores that serve
//! the latest values per entity.
//!
//! Owns reading sources and the online store behind the `OnlineStore` trait. It does not
//! own the wire protocol (`ferrite-server`) nor models.

mod error;
pub mod offline;
pub mod online;

pub use error::FeatureError;
pub use offline::ParquetSource;
pub use online::OnlineStore;
