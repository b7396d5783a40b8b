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

/// The sinks' pool does not PING a connection before every checkout (under load that PING
/// waited in Redis's queue behind the scripts, a second wait per call): a connection Redis
/// closed is found by the command that fails on it and replaced, so the next checkout works.
#[tokio::test]
async fn a_pooled_connection_redis_closed_is_replaced_after_the_command_that_failed_on_it() {
    let config = test_config();
    let pool = gamemetrics::db::redis_pool(&config.redis, 0).expect("pool");
    {
        let mut conn = pool.get().await.expect("a pooled connection");
        let id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .expect("CLIENT ID");
        let mut admin = redis_conn(&config, 0).await;
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut admin)
            .await
            .expect("CLIENT KILL");
        assert_eq!(killed, 1, "Redis closed the pooled connection");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let failed: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        assert!(
            failed.is_err(),
            "a command on the closed connection fails: {failed:?}"
        );
    }
    // The pool holds one connection, the closed one: it must not come back.
    let mut conn = pool.get().await.expect("a pooled connection");
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("the next checkout is a working connection");
    assert_eq!(pong, "PONG");
}
