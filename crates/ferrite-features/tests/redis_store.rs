//! Redis really answers: a round trip on a real redis-server started for the test.

use ferrite_features::OnlineStore;
use ferrite_features::online::RedisStore;
use ferrite_test_support::RedisServer;

#[tokio::test]
async fn round_trip_on_a_real_server() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    store.health().await.unwrap();
    assert_eq!(store.kind(), "redis");

    let mut conn = store.connection();
    let _: () = redis::cmd("HSET")
        .arg("smoke")
        .arg("f")
        .arg("1.5")
        .query_async(&mut conn)
        .await
        .unwrap();
    let got: Option<String> = redis::cmd("HGET")
        .arg("smoke")
        .arg("f")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("1.5"));
}

#[tokio::test]
async fn a_server_that_is_gone_is_unavailable() {
    let server = RedisServer::start();
    let url = server.url();
    drop(server);
    let err = RedisStore::connect(&url)
        .await
        .err()
        .expect("no server listens there now");
    assert!(err.to_string().contains("cannot connect"), "{err}");
}
