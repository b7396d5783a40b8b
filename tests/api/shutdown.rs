//! Graceful shutdown of a consumer process: SIGTERM flushes what the buffers hold, commits the
//! offsets and exits 0, so the next owner neither re-reads nor loses anything.

use crate::helpers::*;
use crate::model::count;
use gamemetrics::actors::Role;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;

#[actix_web::test]
async fn sigterm_drains_the_stats_buffer_and_commits_before_exiting() {
    let config = pipeline_config(|_| {}).await;
    let app = spawn_app_with(|c| *c = config.clone()).await;
    // Buffer bounds no test reaches: only the shutdown can flush player_statistics.
    let mut child = Command::new(env!("CARGO_BIN_EXE_gamemetrics"))
        .args(["consume", "--role", "stats"])
        .env("KAFKA_BROKERS", config.kafka.brokers())
        .env("KAFKA_TOPIC", &config.kafka.kafka_topic)
        .env("DATABASE_URL", config.database.database_url.expose())
        .env("REDIS_URL", config.redis.redis_url.expose())
        .env("REDIS_KEY_PREFIX", &config.redis.redis_key_prefix)
        .env("CONSUMER_GROUP_PREFIX", &config.consumer.consumer_group_prefix)
        .env("STATS_FLUSH_EVENTS", "1000000")
        .env("STATS_FLUSH_INTERVAL_MS", "3600000")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .expect("consumer process");
    for i in 0..40 {
        let ev = json!({"event_type":"session_start","player_id":format!("p{}", i % 4),"game_id":"g"});
        assert_eq!(app.post_event(&ev).await.status(), 200);
    }
    // Live stats show every event in Redis while player_statistics still has nothing.
    let redis = redis_conn(&config, 0).await;
    let prefix = config.redis.redis_key_prefix.clone();
    eventually(Duration::from_secs(60), "live stats for all 40 events", || {
        let (mut r, prefix) = (redis.clone(), prefix.clone());
        async move {
            let mut total = 0;
            for p in 0..4 {
                let n: Option<i64> =
                    redis::AsyncCommands::hget(&mut r, format!("{prefix}player_stats:p{p}"), "total_events")
                        .await
                        .ok()?;
                total += n.unwrap_or(0);
            }
            (total == 40).then_some(())
        }
    })
    .await;
    assert_eq!(
        count(&config, "SELECT count(*) AS n FROM player_statistics").await,
        0
    );

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "exits cleanly after draining: {status:?}");

    assert_eq!(
        count(
            &config,
            "SELECT coalesce(sum(total_events), 0)::bigint AS n FROM player_statistics"
        )
        .await,
        40,
        "the buffer was flushed on SIGTERM"
    );
    let group = format!(
        "{}{}",
        config.consumer.consumer_group_prefix,
        Role::Stats.group_id()
    );
    assert_eq!(
        committed_total(&config, &group),
        40,
        "offsets committed before exit"
    );
}
