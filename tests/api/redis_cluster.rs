//! Redis Cluster, as ElastiCache runs it with cluster mode on: 3 primaries and 3 replicas, TLS
//! and an AUTH token (scripts/redis-cluster). The pipeline and the read API run on it, with
//! every script call inside one slot; and a primary killed mid-stream (its replica promoted)
//! loses no counted event and counts none twice.

use crate::helpers::*;
use crate::model::*;
use gamemetrics::actors::Role;
use gamemetrics::config::Config;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// The cluster slot `key` hashes to, as the cluster computes it.
async fn slot(config: &Config, key: &str) -> i64 {
    let mut c = redis_view(config, 0).conn().await.expect("cluster");
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut c)
        .await
        .expect("CLUSTER KEYSLOT")
}

/// Every role on `redis`, each batch waiting for a replica.
async fn cluster_pipeline(redis: gamemetrics::config::RedisConfig) -> Pipeline {
    spawn_pipeline(&Role::ALL, |c| {
        c.consumer.leaderboard_retention_days = 36_500;
        c.redis = redis;
        c.redis.redis_wait_replicas = 1;
    })
    .await
}

#[actix_web::test]
async fn the_pipeline_and_the_read_api_run_on_a_tls_redis_cluster() {
    let redis = cluster_redis(cluster_port());
    gamemetrics::db::check_redis(&redis, true)
        .await
        .expect("the cluster passes the start-up check");
    let p = cluster_pipeline(redis).await;
    let (app, config) = (&p.app, p.app.config.clone());

    // Client retries too: on a cluster the claims are kept per player and per game.
    let mut evs = events(400, 77);
    let retries = with_retries(&mut evs, 2, 40, 77);
    evs.extend(retries);
    let mut model = Model::default();
    let accepted = post_all(app, evs, 8).await;
    for (ev, id) in &accepted {
        model.add(ev, id);
    }
    assert_state(&config, &model).await;

    // The players' keys are spread over the shards (so batches really were split per slot),
    // and each player's keys share one slot.
    let keys = redis_keys(&config);
    let mut shards = BTreeSet::new();
    for player in model.stats.keys() {
        let s = slot(&config, &keys.player_stats(player)).await;
        shards.insert(s * 3 / 16384);
        assert_eq!(
            s,
            slot(&config, &format!("x{{{player}}}")).await,
            "{player}'s key is tagged"
        );
    }
    assert!(shards.len() >= 2, "8 players on one shard: {shards:?}");

    // The read API reads the cluster.
    let (player, (total, _, _)) = model.stats.iter().next().expect("a player");
    let body: Value = app
        .get(&format!("/player/{player}/stats"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["total_events"], json!(total));
    assert_eq!(body["source"], "redis");
    let game = model.newest_day.keys().next().expect("a game");
    let res = app
        .get(&format!("/games/{game}/leaderboard?period=alltime&limit=3"))
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    let want: Vec<Value> = model
        .ranked(game, "alltime")
        .into_iter()
        .take(3)
        .map(|(p, s)| json!([p, s]))
        .collect();
    let got: Vec<Value> = body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| json!([e["player_id"], e["score"]]))
        .collect();
    assert_eq!(got, want);

    // Forgetting a player finds their board entries on every shard.
    let forgotten = "player-5";
    let pg = gamemetrics::db::pg_pool(&config.database);
    let admin = gamemetrics::auth::create_key(&pg, None, None)
        .await
        .expect("admin key");
    let res = app
        .client
        .delete(format!("{}/players/{forgotten}", app.address))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(res.status(), 202);
    let mut without = Model::default();
    for (ev, id) in accepted.iter().filter(|(ev, _)| ev["player_id"] != forgotten) {
        without.add(ev, id);
    }
    assert!(without.stats.len() < model.stats.len(), "the player had events");
    assert_state(&config, &without).await;
    let mut stats = redis_view(&config, 0).conn().await.expect("Redis");
    let exists: bool = redis::AsyncCommands::exists(&mut stats, keys.player_stats(forgotten))
        .await
        .expect("EXISTS");
    assert!(!exists, "the player's stats hash is gone");
}

/// The node of the test's own cluster that is primary for `slot`, and its process id, from
/// `CLUSTER NODES` (`id host:port@bus,hostname flags master ping pong epoch state slots...`).
fn primary_of(base: u16, slot: i64) -> (u16, i32) {
    let out = cli(base, &["cluster", "nodes"]);
    let port = String::from_utf8_lossy(&out)
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let serves = f.get(8..)?.iter().any(|range| {
                let mut ends = range.split('-').filter_map(|n| n.parse::<i64>().ok());
                let a = ends.next();
                let b = ends.next().or(a);
                matches!((a, b), (Some(a), Some(b)) if a <= slot && slot <= b)
            });
            let primary = f.get(2)?.split(',').any(|flag| flag == "master");
            let port = f.get(1)?.split(['@', ':']).nth(1)?.parse::<u16>().ok()?;
            (serves && primary).then_some(port)
        })
        .expect("a primary for the slot");
    let pid = std::fs::read_to_string(format!(
        "/tmp/gamemetrics-services/redis-cluster/{port}/redis.pid"
    ))
    .expect("pid file")
    .trim()
    .parse()
    .expect("pid");
    (port, pid)
}

fn cli(port: u16, args: &[&str]) -> Vec<u8> {
    std::process::Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(redis_tls_dir().join("ca.crt"))
        .args([
            "-h",
            "localhost",
            "-p",
            &port.to_string(),
            "-a",
            &redis_tls_token(),
            "--no-auth-warning",
        ])
        .args(args)
        .output()
        .expect("redis-cli")
        .stdout
}

fn script(args: &[&str]) {
    let status = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/redis-cluster"))
        .args(args)
        .status()
        .expect("scripts/redis-cluster");
    assert!(status.success(), "scripts/redis-cluster {args:?}");
}

#[actix_web::test]
async fn a_cluster_primary_killed_mid_stream_loses_and_doubles_nothing() {
    // A cluster of its own: the kill must not disturb the other tests' cluster.
    let base: u16 = 7101;
    script(&["up", &base.to_string()]);
    let p = cluster_pipeline(cluster_redis(base)).await;
    let (app, config) = (&p.app, p.app.config.clone());
    let keys = redis_keys(&config);

    let mut evs = events(2_000, 5);
    let retries = with_retries(&mut evs, 3, 100, 5);
    evs.extend(retries);
    // The primary holding player-0's stats dies while events flow; its replica takes over
    // (cluster-node-timeout 2 s) and the dead node comes back later as a replica.
    let victim = primary_of(base, slot(&config, &keys.player_stats("player-0")).await);
    let mut chunks = evs.chunks(700);
    let mut accepted = post_all(app, chunks.next().expect("a chunk").to_vec(), 8).await;
    // SIGKILL while the consumers still apply what was just accepted; the next events arrive
    // during the failover (cluster-node-timeout 2 s), the last after the dead node is back as
    // a replica: until then WAIT 1 can't be met on that shard, so its live writes wait.
    let killed = std::process::Command::new("kill")
        .args(["-9", &victim.1.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    accepted.extend(post_all(app, chunks.next().expect("a chunk").to_vec(), 8).await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    script(&["node-start", &victim.0.to_string()]);
    // The replica was promoted: the dead primary came back as its replica.
    eventually(
        Duration::from_secs(20),
        "the killed primary back as a replica",
        || async {
            let role = cli(victim.0, &["role"]);
            String::from_utf8_lossy(&role).starts_with("slave").then_some(())
        },
    )
    .await;
    for chunk in chunks {
        accepted.extend(post_all(app, chunk.to_vec(), 8).await);
    }
    let mut model = Model::default();
    for (ev, id) in &accepted {
        model.add(ev, id);
    }
    assert_state(&config, &model).await;
    drop(p);
    script(&["down", &base.to_string()]);
}

#[tokio::test]
async fn a_cluster_taken_for_a_single_redis_a_single_redis_taken_for_a_cluster_and_a_wrong_token_are_refused_at_start(
) {
    /// The start-up check's refusal of the cluster's configuration as `adjust` leaves it.
    async fn refusal(adjust: impl FnOnce(&mut gamemetrics::config::RedisConfig), what: &str) -> String {
        let mut redis = cluster_redis(cluster_port());
        adjust(&mut redis);
        gamemetrics::db::check_redis(&redis, true)
            .await
            .expect_err(what)
            .to_string()
    }

    let err = refusal(
        |r| r.redis_cluster = false,
        "a cluster without REDIS_CLUSTER is refused",
    )
    .await;
    assert!(err.contains("set REDIS_CLUSTER=true"), "{err}");

    let err = refusal(
        |r| r.redis_url = test_config().redis.redis_url,
        "REDIS_CLUSTER on a single Redis is refused",
    )
    .await;
    assert!(err.contains("cluster support disabled"), "{err}");

    let wrong = format!("rediss://:not-the-token@localhost:{}", cluster_port());
    let err = refusal(
        |r| r.redis_url = wrong.parse().expect("url"),
        "a wrong token is refused",
    )
    .await;
    assert!(err.contains("authentication failed"), "{err}");
    assert!(!err.contains("not-the-token"), "the token is not echoed: {err}");

    let err = refusal(
        |r| r.redis_key_prefix = "tenant{1}:".into(),
        "a prefix with a brace is refused on a cluster",
    )
    .await;
    assert!(err.contains("brace"), "{err}");
}
