//! A single Redis with a replica, its replica promoted by hand after the primary dies (as
//! ElastiCache without cluster mode, whose primary endpoint then moves). Replication is
//! asynchronous: the test stalls the replication link (a proxy stops forwarding), lets a
//! stretch of events be counted on the primary alone, kills the primary with SIGKILL, promotes
//! the replica and points the endpoint at it. With REDIS_WAIT_REPLICAS=1 every accepted event
//! is counted exactly once afterwards; with 0 the stretch the replica never got is lost, which
//! shows what the wait buys, and that this test would see it missing.

use crate::helpers::*;
use crate::model::*;
use crate::proxy::Proxy;
use gamemetrics::actors::Role;
use redis::AsyncCommands;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A throwaway redis-server on `port` (a replica of `of`, if given), killed on drop.
struct Server(Child);

impl Server {
    fn start(port: u16, of: Option<u16>) -> Server {
        let dir = std::env::temp_dir().join(format!("gamemetrics-failover-{port}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null());
        if let Some(primary) = of {
            cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        Server(cmd.spawn().expect("redis-server"))
    }

    /// SIGKILL: nothing flushed, nothing handed over.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn conn(port: u16) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).expect("url");
    let mut last = None;
    for _ in 0..50 {
        match client.get_multiplexed_async_connection().await {
            Ok(c) => return c,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("redis on {port}: {last:?}");
}

async fn wait_synced(port: u16) {
    eventually(Duration::from_secs(20), "the replica synced", || async {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn(port).await)
            .await
            .ok()?;
        info.contains("master_link_status:up").then_some(())
    })
    .await;
}

/// Sum of every player's total_events in DB 0 of the Redis on `port`.
async fn counted(port: u16, keys: &gamemetrics::db::redis_keys::RedisKeys, model: &Model) -> i64 {
    let mut c = conn(port).await;
    let mut sum = 0;
    for player in model.stats.keys() {
        let n: Option<i64> = c
            .hget(keys.player_stats(player), "total_events")
            .await
            .unwrap_or(None);
        sum += n.unwrap_or(0);
    }
    sum
}

fn total(model: &Model) -> i64 {
    model.stats.values().map(|(t, _, _)| t).sum()
}

/// Runs the failover on ports `base..base+3`; answers the model of what was accepted and the
/// test's configuration.
async fn fail_over(base: u16, wait_replicas: u32) -> (Model, Model, gamemetrics::config::Config) {
    let (p_port, r_port, r2_port) = (base, base + 1, base + 2);
    let mut primary = Server::start(p_port, None);
    conn(p_port).await;
    // The replica follows the primary through a proxy that can stall the link.
    let link = Proxy::start(addr(p_port)).await;
    let _replica = Server::start(r_port, Some(link.port));
    wait_synced(r_port).await;
    // Clients reach "the primary endpoint": a proxy the test moves at failover.
    let endpoint = Proxy::start(addr(p_port)).await;

    let p = spawn_pipeline(&Role::ALL, |c| {
        c.consumer.leaderboard_retention_days = 36_500;
        c.redis.redis_url = format!("redis://127.0.0.1:{}", endpoint.port)
            .parse()
            .expect("url");
        c.redis.redis_wait_replicas = wait_replicas;
        c.redis.redis_wait_timeout_ms = 300;
    })
    .await;
    let (app, config) = (&p.app, p.app.config.clone());
    let keys = redis_keys(&config);
    let evs = events(900, 13);
    let mut model = Model::default();
    let mut stalled = Model::default();

    for (ev, id) in post_all(app, evs[..300].to_vec(), 8).await {
        model.add(&ev, &id);
    }
    // Once the replica has all of that, the link stalls; the next stretch is counted on the
    // primary (and only there).
    eventually(
        Duration::from_secs(30),
        "the first stretch on the replica",
        || async { (counted(r_port, &keys, &model).await == total(&model)).then_some(()) },
    )
    .await;
    link.freeze(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (ev, id) in post_all(app, evs[300..600].to_vec(), 8).await {
        model.add(&ev, &id);
        stalled.add(&ev, &id);
    }
    // Without the wait the lanes count it all on the primary; with it, the first batch of the
    // stretch is counted there and then retried until a replica holds it.
    let before = total(&model) - total(&stalled);
    // 60 s: with the whole suite running beside it, the lanes' backoff after the first failed
    // WAITs once stretched this past 30 s (a CI run on 2026-11-30).
    eventually(
        Duration::from_secs(60),
        "the stretch counted on the primary",
        || async {
            let n = counted(p_port, &keys, &model).await;
            let done = if wait_replicas > 0 {
                n > before
            } else {
                n == total(&model)
            };
            done.then_some(())
        },
    )
    .await;

    // The primary dies with it; the replica is promoted by hand, gets a replica of its own,
    // and the endpoint moves to it.
    primary.kill();
    link.drop_connections();
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut conn(r_port).await)
        .await
        .expect("promote");
    let _replica2 = Server::start(r2_port, Some(r_port));
    wait_synced(r2_port).await;
    endpoint.retarget(addr(r_port));

    for (ev, id) in post_all(app, evs[600..].to_vec(), 8).await {
        model.add(&ev, &id);
    }
    if wait_replicas > 0 {
        assert_state(&config, &model).await;
    } else {
        // Everything lands in PostgreSQL; Redis holds all but the stalled stretch, for good.
        let want = total(&model) - total(&stalled);
        eventually(Duration::from_secs(30), "the stretch lost", || async {
            (counted(r_port, &keys, &model).await == want).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            counted(r_port, &keys, &model).await,
            want,
            "nothing brought it back"
        );
    }
    (model, stalled, config)
}

#[actix_web::test]
async fn a_replica_promoted_by_hand_has_every_counted_event_when_batches_wait_for_it() {
    let (model, stalled, _) = fail_over(6391, 1).await;
    assert!(!stalled.stats.is_empty() && total(&stalled) < total(&model));
}

#[actix_web::test]
async fn without_the_wait_a_promoted_replica_misses_what_only_the_primary_had() {
    let (model, stalled, _) = fail_over(6395, 0).await;
    assert!(total(&stalled) > 0 && total(&stalled) < total(&model));
}
