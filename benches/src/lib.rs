//! Criterion micro-benchmarks of Ferrite's hot paths, in-process (no gRPC). The end-to-end
//! numbers over gRPC come from `ferrite bench`; both are recorded in BENCHMARKS.md.
