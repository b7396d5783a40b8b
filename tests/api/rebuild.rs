//! Rebuilding a lost Redis: the stats and leaderboard consumers stop, Redis loses everything of
//! ours, events keep coming (ingestion and the logger run on), `gamemetrics rebuild redis`
//! recomputes the stores from `events`, the consumers start again, and every hash and sorted
//! set equals the model of all accepted events: nothing missing at the seam, nothing counted
//! twice, client retries after the rebuild still counted once.

use crate::helpers::*;
use crate::model::{assert_state, events, with_retries, Model};
use gamemetrics::actors::Role;
use gamemetrics::config::Config;
use std::process::Output;
use std::time::Duration;

/// Runs `gamemetrics rebuild redis` against the test's topic, groups, schema and prefix.
async fn rebuild(config: &Config) -> Output {
    rebuild_with(config, &[]).await
}

/// `gamemetrics rebuild redis` with more arguments.
async fn rebuild_with(config: &Config, more: &[&str]) -> Output {
    let (c, more): (Config, Vec<String>) = (config.clone(), more.iter().map(|s| s.to_string()).collect());
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gamemetrics"));
        if let Some(ca) = &c.redis.redis_ca_file {
            cmd.env("REDIS_CA_FILE", ca);
        }
        cmd.args(["rebuild", "redis"])
            .args(&more)
            .env("KAFKA_BROKERS", c.kafka.brokers())
            .env("KAFKA_TOPIC", &c.kafka.kafka_topic)
            .env("DATABASE_URL", c.database.database_url.expose())
            .env("REDIS_URL", c.redis.redis_url.expose())
            .env("REDIS_KEY_PREFIX", &c.redis.redis_key_prefix)
            .env("REDIS_CLUSTER", c.redis.redis_cluster.to_string())
            .env("CONSUMER_GROUP_PREFIX", &c.consumer.consumer_group_prefix)
            .env(
                "LEADERBOARD_RETENTION_DAYS",
                c.consumer.leaderboard_retention_days.to_string(),
            )
            .env("DEDUP_WINDOW_SECS", c.consumer.dedup_window_secs.to_string())
            .env("DEDUP_BUCKETS", c.consumer.dedup_buckets.to_string())
            .env("RUST_LOG", "error")
            .output()
            .expect("run gamemetrics rebuild redis")
    })
    .await
    .expect("join")
}

/// Deletes every key of the test's prefix in both databases (on a cluster, on every primary):
/// to this test, a lost Redis (the server is shared with tests running beside it, so no
/// FLUSHALL).
async fn lose_redis(config: &Config) -> usize {
    let keys = redis_keys(config);
    let mut lost = 0;
    for db in [0, 1] {
        let pool = gamemetrics::db::redis_pool(&config.redis, db).expect("Redis pool");
        let mut c = pool.get().await.expect("Redis");
        for kind in ["hash", "zset", "string"] {
            for key in c.scan_keys(&keys.pattern(""), kind).await.expect("SCAN") {
                redis::cmd("DEL")
                    .arg(&key)
                    .query_async::<()>(&mut c)
                    .await
                    .expect("DEL");
                lost += 1;
            }
        }
    }
    lost
}

#[actix_web::test]
async fn a_lost_redis_rebuilt_mid_stream_joins_what_the_consumers_add_next() {
    lost_and_rebuilt(true, None).await;
}

/// Without retry claims the offsets the rebuild sets are all that keeps records below the cut,
/// which the consumers read again, from counting twice.
#[actix_web::test]
async fn without_retry_dedup_the_offsets_alone_join_the_rebuild_to_the_consumers() {
    lost_and_rebuilt(false, None).await;
}

/// On a Redis Cluster the offsets are per player and game as well, on every shard (and, without
/// retry claims, all that keeps records read again from counting twice).
#[actix_web::test]
async fn a_lost_redis_cluster_is_rebuilt_the_same_way() {
    lost_and_rebuilt(false, Some(cluster_redis(cluster_port()))).await;
}

async fn lost_and_rebuilt(dedup: bool, cluster: Option<gamemetrics::config::RedisConfig>) {
    let p = spawn_pipeline(&Role::ALL, |c| {
        c.consumer.leaderboard_retention_days = 36_500;
        if !dedup {
            c.consumer.dedup_window_secs = 0;
        }
        if let Some(redis) = cluster {
            c.redis = redis;
        }
    })
    .await;
    let (app, config) = (&p.app, p.app.config.clone());
    let mut evs = events(900, 31);
    let mut retries = with_retries(&mut evs, 3, 90, 31);
    if !dedup {
        retries.clear();
    }
    let mut parts = evs.chunks(300);
    let mut model = Model::default();
    let mut accept = |accepted: Vec<(serde_json::Value, String)>| {
        for (ev, id) in &accepted {
            model.add(ev, id);
        }
    };

    accept(post_all(app, parts.next().expect("part").to_vec(), 8).await);
    let mut consumers = p.consumers;
    let leaderboard = consumers.pop().expect("leaderboard");
    let stats = consumers.pop().expect("stats");
    // Stopped with work in hand: whatever they hadn't applied is re-read after the rebuild.
    stats.shutdown(Duration::from_secs(10)).await;
    leaderboard.shutdown(Duration::from_secs(10)).await;

    // Redis is lost while events keep coming; the logger stores them.
    let (accepted, lost) = tokio::join!(post_all(app, parts.next().expect("part").to_vec(), 4), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        lose_redis(&config).await
    });
    accept(accepted);
    assert!(lost > 0, "the stores had keys to lose");

    // Refused while a stats consumer is a member of its group.
    let running = start_consumers(&config, &[Role::Stats]);
    let out = eventually(Duration::from_secs(30), "the refusal", || async {
        let out = rebuild(&config).await;
        (!out.status.success()).then_some(out)
    })
    .await;
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("stop the stats and leaderboard consumers"), "{why}");
    for c in running {
        c.shutdown(Duration::from_secs(10)).await;
    }
    lose_redis(&config).await;

    // The rebuild runs while the third part is posted.
    let (accepted, out) = tokio::join!(post_all(app, parts.next().expect("part").to_vec(), 4), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        eventually(
            Duration::from_secs(60),
            "a rebuild once the group is empty",
            || async {
                let out = rebuild(&config).await;
                out.status.success().then_some(out)
            },
        )
        .await
    });
    accept(accepted);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(report["players"].as_u64().expect("players") > 0, "{report}");
    assert!(report["board_entries"].as_u64().expect("entries") > 0, "{report}");

    // The consumers come back and carry on from the cut; client retries of events counted by
    // the rebuild (and of ones they apply themselves) count once.
    let _back = start_consumers(&config, &[Role::Stats, Role::Leaderboard]);
    accept(post_all(app, retries, 4).await);
    assert_state(&config, &model).await;
}

/// One game's boards lost while the rest of Redis is whole: only the leaderboard stops, the
/// logger runs ahead of it meanwhile, `rebuild redis --game` rebuilds that game at the
/// leaderboard's place, and every board (that game's and the others') and every stats hash
/// ends equal to the model.
#[actix_web::test]
async fn one_games_lost_boards_are_rebuilt_while_only_the_leaderboard_pauses() {
    let p = spawn_pipeline(&Role::ALL, |c| c.consumer.leaderboard_retention_days = 36_500).await;
    let (app, config) = (&p.app, p.app.config.clone());
    let mut evs = events(900, 37);
    let retries = with_retries(&mut evs, 3, 90, 37);
    let mut parts = evs.chunks(300);
    let mut model = Model::default();
    let mut accept = |accepted: Vec<(serde_json::Value, String)>| {
        for (ev, id) in &accepted {
            model.add(ev, id);
        }
    };
    accept(post_all(app, parts.next().expect("part").to_vec(), 8).await);
    let mut consumers = p.consumers;
    let leaderboard = consumers.pop().expect("leaderboard");
    leaderboard.shutdown(Duration::from_secs(10)).await;
    // The logger (and stats) run on past the stopped leaderboard.
    accept(post_all(app, parts.next().expect("part").to_vec(), 4).await);

    // game-1's boards go; the other games' and the stats stay.
    let keys = redis_keys(&config);
    let pool = gamemetrics::db::redis_pool(&config.redis, 1).expect("pool");
    let mut c = pool.get().await.expect("Redis");
    let mut lost = 0;
    for kind in ["zset", "string"] {
        for key in c
            .scan_keys(&keys.game_boards_pattern("game-1"), kind)
            .await
            .expect("SCAN")
        {
            redis::cmd("DEL")
                .arg(&key)
                .query_async::<()>(&mut c)
                .await
                .expect("DEL");
            lost += 1;
        }
    }
    assert!(lost > 0, "game-1 had boards");

    let (accepted, out) = tokio::join!(post_all(app, parts.next().expect("part").to_vec(), 4), async {
        rebuild_with(&config, &["--game", "game-1"]).await
    });
    accept(accepted);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(report["board_entries"].as_u64().expect("entries") > 0, "{report}");

    let _back = start_consumers(&config, &[Role::Leaderboard]);
    accept(post_all(app, retries, 4).await);
    assert_state(&config, &model).await;
}
