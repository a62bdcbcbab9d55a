//! Experiments on model versions: which variant a unit (user, visit, transaction) gets,
//! GrowthBook's bucketing exactly; shadow variants; canaries judged against the live baseline
//! and rolled back by themselves; the exposure log and the per-variant report.
//!
//! It does not run models or read features: the scoring pipelines ask it which model version
//! a call runs and tell it how that call went.
