//! How long the sinks' Redis connections wait for a reply.

use crate::helpers::*;

/// A reply that takes a second (`BLPOP` on a list nobody pushes to, which holds only this
/// connection, not the server) comes back through the sinks' pool: its connections do not give
/// up at redis-rs's default of 500 ms, which on a busy Redis cut and retried script calls that
/// were merely slow.
#[tokio::test]
async fn the_sinks_connections_wait_longer_than_half_a_second_for_a_reply() {
    let config = test_config();
    let key = format!("test:{}:never-pushed", uuid::Uuid::new_v4().simple());
    let pool = gamemetrics::db::redis_pool(&config.redis, 0).expect("pool");
    let mut conn = pool.get().await.expect("a pooled connection");
    let reply: Option<(String, String)> = redis::cmd("BLPOP")
        .arg(&key)
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("BLPOP answers nil after its 1 s, not a time-out");
    assert_eq!(reply, None);
}
