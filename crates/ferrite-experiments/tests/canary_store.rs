//! Shared canary state: every store keeps "a rollback always wins, otherwise the newer
//! generation"; a rollback survives a restart on the embedded store; two replicas on one
//! real Redis agree after one of them rolls back.

mod canary_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use canary_support::{NAME, Sim, arm, canary, experiment};
use ferrite_experiments::state::Transition;
use ferrite_experiments::{
    CanaryState, CanaryStatus, CanaryStore, EmbeddedCanaryStore, MemoryCanaryStore, RedisCanaryStore,
};
use ferrite_test_support::RedisServer;

fn state(generation: u64, status: CanaryStatus) -> CanaryState {
    let mut s = CanaryState::new("exp", 0.05, 0);
    for g in 0..generation {
        let last = g + 1 == generation;
        s = s.transition(Transition {
            at_ms: g,
            from_share: s.share,
            to_share: if last && status == CanaryStatus::RolledBack {
                0.0
            } else {
                0.25
            },
            status: if last { status } else { CanaryStatus::Running },
            reason: format!("step {g}"),
            replica: "test".into(),
        });
    }
    s
}

async fn check_contract(store: &dyn CanaryStore) {
    let key = "exp.v0";
    assert_eq!(store.load(key).await.unwrap(), None);
    assert!(store.save(key, &state(0, CanaryStatus::Running)).await.unwrap());
    assert_eq!(
        store.load(key).await.unwrap(),
        Some(state(0, CanaryStatus::Running))
    );
    // The same or an older generation is refused; a newer one is written.
    assert!(!store.save(key, &state(0, CanaryStatus::Running)).await.unwrap());
    assert!(store.save(key, &state(3, CanaryStatus::Running)).await.unwrap());
    assert!(!store.save(key, &state(2, CanaryStatus::Running)).await.unwrap());
    // A rollback wins even from an older generation, and stays.
    assert!(
        store
            .save(key, &state(2, CanaryStatus::RolledBack))
            .await
            .unwrap()
    );
    assert!(!store.save(key, &state(9, CanaryStatus::Running)).await.unwrap());
    assert!(
        !store
            .save(key, &state(5, CanaryStatus::RolledBack))
            .await
            .unwrap()
    );
    let stored = store.load(key).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.generation), (CanaryStatus::RolledBack, 2));
    assert_eq!(store.load("other.v0").await.unwrap(), None);
}

#[tokio::test]
async fn every_store_keeps_the_same_rule() {
    check_contract(&MemoryCanaryStore::default()).await;
    let dir = tempfile::tempdir().unwrap();
    check_contract(&EmbeddedCanaryStore::open(dir.path()).unwrap()).await;
    let redis = RedisServer::start();
    check_contract(&RedisCanaryStore::connect(&redis.url()).await.unwrap()).await;
}

/// Sends a 10 %-failing canary's traffic until this replica rolls it back.
fn fail_until_rolled_back(sim: &mut Sim) {
    let mut requests = 0;
    while sim.share() > 0.0 {
        sim.request(arm(0.10, 5), arm(0.0, 5));
        requests += 1;
        assert!(requests < 1_000_000, "never rolled back");
    }
}

#[tokio::test]
async fn a_rollback_survives_a_restart_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = || experiment(canary("min_requests = 200"));
    {
        let store = Arc::new(EmbeddedCanaryStore::open(dir.path()).unwrap());
        let mut sim = Sim::new(config(), store, 1);
        fail_until_rolled_back(&mut sim);
        sim.controller.sync_now().await;
    }
    let store = Arc::new(EmbeddedCanaryStore::open(dir.path()).unwrap());
    let mut restarted = Sim::new(config(), store, 2);
    assert_eq!(
        restarted.share(),
        0.05,
        "a fresh controller starts at the configured share"
    );
    restarted.controller.sync_now().await;
    assert_eq!(restarted.share(), 0.0);
    let view = &restarted.controller.list()[0];
    assert_eq!(view.state.status, CanaryStatus::RolledBack);
    assert_eq!(view.state.history.len(), 1);
    for _ in 0..5_000 {
        assert!(
            !restarted.request(arm(0.0, 5), arm(0.0, 5)),
            "a unit got the canary"
        );
    }
    // A bucket_version bump starts a fresh canary.
    let mut bumped = config();
    bumped.bucket_version = 1;
    let store = Arc::new(EmbeddedCanaryStore::open(dir.path()).unwrap());
    let fresh = Sim::new(bumped, store, 3);
    fresh.controller.sync_now().await;
    assert_eq!(fresh.share(), 0.05);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_agree_after_one_rolls_back() {
    let redis = RedisServer::start();
    let config = || experiment(canary("min_requests = 200"));
    let store = |url: String| async move {
        let s: Arc<dyn CanaryStore> = Arc::new(RedisCanaryStore::connect(&url).await.unwrap());
        s
    };
    let mut a = Sim::replica(config(), store(redis.url()).await, 1, "replica-a");
    let mut b = Sim::replica(config(), store(redis.url()).await, 2, "replica-b");
    let every = Duration::from_millis(100);
    let (sync_a, sync_b) = (a.controller.spawn_sync(every), b.controller.spawn_sync(every));

    fail_until_rolled_back(&mut a);
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.share() != 0.0 {
        assert!(Instant::now() < deadline, "replica b never saw the rollback");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen_by_b = &b.controller.list()[0].state;
    assert_eq!(seen_by_b.status, CanaryStatus::RolledBack);
    assert_eq!(seen_by_b.history[0].replica, "replica-a");
    assert_eq!(seen_by_b, &a.controller.list()[0].state);
    assert_eq!(
        b.controller.current_weights(NAME).unwrap()[1],
        ("v8".to_string(), 0.0)
    );
    for _ in 0..5_000 {
        assert!(
            !b.request(arm(0.0, 5), arm(0.0, 5)),
            "replica b still sends units to the canary"
        );
    }
    sync_a.abort();
    sync_b.abort();
}
