//! What an experiment adds to a call, in-process: assigning a unit (GrowthBook's hash and
//! bucket ranges, with the canary's current share) and recording how the call went for the
//! canary's judgement, on the shipped `experiments/fraud_challenger.toml`.
//!
//!     cargo bench -p ferrite-benches --bench experiments
//!
//! The goal is < 2 µs of server CPU per call for both together.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ferrite_experiments::{Assigner, CanaryController, MemoryCanaryStore, SystemClock};

fn experiments(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../experiments");
    let configs = ferrite_experiments::config::load_dir(&dir).unwrap();
    let canaries = CanaryController::new(
        &configs,
        Arc::new(MemoryCanaryStore::default()),
        Arc::new(SystemClock),
        "bench",
    );
    let assigner = Assigner::new(configs, Some(canaries.clone())).unwrap();
    let units: Vec<String> = (1_000_000..1_004_096).map(|u: u64| u.to_string()).collect();
    let mut group = c.benchmark_group("experiment");
    let mut i = 0usize;
    group.bench_function("assign", |b| {
        b.iter(|| {
            i = (i + 1) % units.len();
            assigner.assign("fraud", &units[i], None)
        })
    });
    group.bench_function("assign_and_record", |b| {
        b.iter(|| {
            i = (i + 1) % units.len();
            let a = assigner.assign("fraud", &units[i], None).unwrap();
            canaries.record(&a.experiment, &a.variant.name, true, Duration::from_micros(900));
        })
    });
    group.finish();
}

criterion_group!(benches, experiments);
criterion_main!(benches);
