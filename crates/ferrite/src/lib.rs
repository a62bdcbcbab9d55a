//! The `ferrite` command's library side: what the subcommands do, so tests can call it.

pub mod bench;
pub mod build_index;
pub mod experiment;
pub mod npy;
