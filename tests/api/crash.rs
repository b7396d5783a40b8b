//! Crash safety: consumer processes are killed with SIGKILL at random moments while thousands
//! of events flow, restarted, and afterwards PostgreSQL and Redis must equal the model computed
//! from the accepted events: nothing lost, nothing counted twice.

use crate::helpers::*;
use crate::model::{assert_state, events, with_retries, Model};
use gamemetrics::config::Config;
use rand::{Rng, SeedableRng};
use std::process::{Command, Stdio};
use std::time::Duration;

const ROLES: [&str; 3] = ["logger", "stats", "leaderboard"];

/// Starts `gamemetrics consume --role <role>` as its own process with the test's configuration.
fn spawn_consumer(config: &Config, role: &str) -> KillOnDrop {
    let c = &config.consumer;
    Command::new(env!("CARGO_BIN_EXE_gamemetrics"))
        .args(["consume", "--role", role])
        .env("KAFKA_BROKERS", config.kafka.brokers())
        .env("KAFKA_TOPIC", &config.kafka.kafka_topic)
        .env("DATABASE_URL", config.database.database_url.expose())
        .env("DATABASE_POOL_SIZE", "4")
        .env("REDIS_URL", config.redis.redis_url.expose())
        .env("REDIS_KEY_PREFIX", &config.redis.redis_key_prefix)
        .env("CONSUMER_GROUP_PREFIX", &c.consumer_group_prefix)
        .env("STATS_FLUSH_INTERVAL_MS", c.stats_flush_interval_ms.to_string())
        .env(
            "LEADERBOARD_FLUSH_INTERVAL_MS",
            c.leaderboard_flush_interval_ms.to_string(),
        )
        .env(
            "LEADERBOARD_RETENTION_DAYS",
            c.leaderboard_retention_days.to_string(),
        )
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .expect("start a consumer process")
}

#[actix_web::test]
async fn consumers_killed_mid_stream_lose_nothing_and_count_nothing_twice() {
    let config = pipeline_config(|c| c.consumer.leaderboard_retention_days = 36_500).await;
    let app = spawn_app_with(|c| *c = config.clone()).await;
    // Killed when dropped, failed or not (a failing run once left three for half an hour).
    let mut procs: Vec<_> = ROLES.iter().map(|r| spawn_consumer(&config, r)).collect();

    // Ingest 3,000 events, 16 requests at a time, while a killer takes processes down.
    // Every event has a client-chosen id, and 300 are retried (interleaved, some concurrently
    // with their original): the kills must not make a retry count.
    let mut evs = events(3_000, 42);
    let retries = with_retries(&mut evs, 1, 300, 42);
    let mut sends = evs.clone();
    for (i, r) in retries.into_iter().enumerate() {
        sends.insert((i * 11 + 50).min(sends.len()), r);
    }
    let posting = post_all(&app, sends, 16);
    let done = std::cell::Cell::new(false);
    let posting = async {
        let accepted = posting.await;
        done.set(true);
        accepted
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let killing = async {
        let mut kills = 0;
        // Kill for as long as events flow, at least 12 times and at most 60, then stop.
        while kills < 60 && !(done.get() && kills >= 12) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(200..1200))).await;
            let i = rng.random_range(0..ROLES.len());
            let _ = procs[i].0.kill(); // SIGKILL: no flush, no commit, no goodbye
            let _ = procs[i].0.wait();
            procs[i] = spawn_consumer(&config, ROLES[i]);
            kills += 1;
        }
        kills
    };
    let (accepted, kills) = futures::join!(posting, killing);
    assert!(kills >= 12);
    assert_eq!(accepted.len(), 3_301);

    let mut model = Model::default();
    for (ev, id) in &accepted {
        model.add(ev, id);
    }
    assert_state(&config, &model).await;
}
