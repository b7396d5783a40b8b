//! A DLQ you can act on: a scoring event with a score the leaderboard refuses is dead-lettered
//! (the logger stored it, the stats counted it), its row is corrected, `gamemetrics dlq
//! replay` produces it again, and it counts exactly once in every store; replaying it again,
//! even with `--again`, changes nothing.

use crate::helpers::*;
use crate::model::count;
use gamemetrics::actors::Role;
use gamemetrics::config::Config;
use redis::AsyncCommands;
use serde_json::{json, Value};
use std::process::{Command, Output};
use std::time::Duration;

/// Runs `gamemetrics dlq …` against the test's Kafka topic and database.
fn dlq(config: &Config, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gamemetrics"))
        .arg("dlq")
        .args(args)
        .env("KAFKA_BROKERS", config.kafka.brokers())
        .env("KAFKA_TOPIC", &config.kafka.kafka_topic)
        .env("DATABASE_URL", config.database.database_url.expose())
        .env("RUST_LOG", "error")
        .output()
        .expect("run gamemetrics dlq")
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Sets a dead letter's `original_event` to `event` (an SQL expression), as an operator would.
async fn correct(config: &Config, id: &str, event: &str) {
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(format!("UPDATE dlq SET original_event = {event} WHERE id = {id}")),
        &mut pg_conn(config).await,
    )
    .await
    .expect("correct the row");
}

async fn score(config: &Config, game: &str, player: &str) -> Option<i64> {
    let key = format!("{}:alltime", redis_keys(config).board_base(game));
    let mut c = redis_view(config, 1).conn().await.ok()?;
    c.zscore(&key, player).await.ok()?
}

async fn total_events(config: &Config, player: &str) -> Option<i64> {
    let mut c = redis_view(config, 0).conn().await.ok()?;
    c.hget(redis_keys(config).player_stats(player), "total_events")
        .await
        .ok()?
}

#[actix_web::test]
async fn a_corrected_dead_letter_replays_into_every_store_exactly_once() {
    let p = spawn_pipeline(&Role::ALL, |c| c.consumer.leaderboard_retention_days = 36_500).await;
    let (app, config) = (&p.app, p.app.config.clone());
    let (game, player) = ("game-dlq", "player-dlq");
    let event = |score: Value| {
        json!({"event_type": "player_score", "player_id": player, "game_id": game,
               "timestamp": "2024-01-15T10:00:00Z", "data": {"score": score}})
    };
    assert_eq!(app.post_event(&event(json!(10))).await.status(), 200);
    let res = app.post_event(&event(json!(-5))).await;
    assert_eq!(res.status(), 200);
    let bad: Value = res.json().await.expect("json");
    let bad_id = bad["event_id"].as_str().expect("id").to_owned();

    // Dead-lettered by the leaderboard; stored and counted by the others.
    let where_bad = format!("original_event->>'event_id' = '{bad_id}'");
    eventually(Duration::from_secs(30), "the dead letter", || async {
        (count(
            &config,
            &format!("SELECT count(*) AS n FROM dlq WHERE {where_bad}"),
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    let id = count(
        &config,
        &format!("SELECT id::bigint AS n FROM dlq WHERE {where_bad}"),
    )
    .await;
    let id = id.to_string();
    let listed = lines(&dlq(&config, &["list", "--service", "leaderboard-manager"]));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"].to_string(), id);
    assert!(listed[0]["error_message"]
        .as_str()
        .expect("reason")
        .contains("data.score"));
    let shown: Value = serde_json::from_slice(&dlq(&config, &["show", &id]).stdout).expect("json");
    assert_eq!(shown["kafka_topic"], json!(config.kafka.kafka_topic));
    assert!(shown["kafka_offset"].is_i64());
    eventually(Duration::from_secs(30), "the stats and the board", || async {
        (total_events(&config, player).await == Some(2) && score(&config, game, player).await == Some(10))
            .then_some(())
    })
    .await;

    // Uncorrected, it is refused with the reason and stays as it was.
    let refused = dlq(&config, &["replay", &id]);
    assert!(!refused.status.success());
    let outcome = &lines(&refused)[0];
    assert_eq!(outcome["outcome"], "refused");
    assert!(outcome["reason"].as_str().expect("reason").contains("data.score"));
    let replays = format!("SELECT replay_count::bigint AS n FROM dlq WHERE id = {id}");
    assert_eq!(count(&config, &replays).await, 0);

    // Corrected and replayed: the board takes it, once; the stats and `events` don't again.
    correct(&config, &id, "jsonb_set(original_event, '{data,score}', '100')").await;
    let dry = lines(&dlq(&config, &["replay", "--dry-run", &id]));
    assert_eq!(dry[0]["outcome"], "would_replay");
    assert_eq!(count(&config, &replays).await, 0, "a dry run changes nothing");
    let replayed = dlq(&config, &["replay", &id]);
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    let outcome = &lines(&replayed)[0];
    assert_eq!(outcome["outcome"], "replayed");
    assert_eq!(outcome["services"], json!(["leaderboard-manager"]));
    assert_eq!(count(&config, &replays).await, 1);
    eventually(Duration::from_secs(30), "the replayed score", || async {
        (score(&config, game, player).await == Some(110)).then_some(())
    })
    .await;

    // Again: refused as already replayed; with --again produced, and not counted twice.
    let again = lines(&dlq(&config, &["replay", &id]));
    assert_eq!(again[0]["outcome"], "already_replayed");
    let forced = lines(&dlq(&config, &["replay", "--again", &id]));
    assert_eq!(forced[0]["outcome"], "replayed");
    assert_eq!(count(&config, &replays).await, 2);
    // A later event of the same player (same partition) shows the consumers went past it.
    assert_eq!(app.post_event(&event(json!(1))).await.status(), 200);
    eventually(Duration::from_secs(30), "the later event", || async {
        (score(&config, game, player).await == Some(111) && total_events(&config, player).await == Some(3))
            .then_some(())
    })
    .await;
    let events = format!("SELECT count(*) AS n FROM events WHERE player_id = '{player}'");
    assert_eq!(count(&config, &events).await, 3);
    eventually(Duration::from_secs(30), "player_statistics", || async {
        let n = format!("SELECT coalesce(max(total_events), 0)::bigint AS n FROM player_statistics WHERE player_id = '{player}'");
        (count(&config, &n).await == 3).then_some(())
    })
    .await;
    // Nothing else was dead-lettered on the way.
    assert_eq!(count(&config, "SELECT count(*) AS n FROM dlq").await, 1);
}

#[actix_web::test]
async fn a_record_no_consumer_could_read_replays_for_all_three_once_fixed() {
    let p = spawn_pipeline(&Role::ALL, |c| c.consumer.leaderboard_retention_days = 36_500).await;
    let config = p.app.config.clone();
    let player = "player-poison";
    produce_raw(&config, player, b"{\"event_type\": \"player_score\", truncated").await;
    eventually(Duration::from_secs(30), "the dead letter", || async {
        (count(
            &config,
            "SELECT count(*) AS n FROM dlq WHERE consumer_service = 'event-logger'",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    let id = count(&config, "SELECT id::bigint AS n FROM dlq")
        .await
        .to_string();
    let fixed = json!({"event_id": uuid::Uuid::new_v4(), "event_type": "player_score", "player_id": player,
        "game_id": "game-poison", "timestamp": "2024-01-15T10:00:00Z", "ingested_at": "2024-01-15T10:00:00Z",
        "data": {"score": 7}});
    correct(&config, &id, &format!("'{fixed}'::jsonb")).await;
    let out = dlq(&config, &["replay", "--service", "event-logger"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let outcome = &lines(&out)[0];
    assert_eq!(outcome["outcome"], "replayed");
    assert_eq!(
        outcome["services"],
        json!(["event-logger", "stats-aggregator", "leaderboard-manager"])
    );
    eventually(Duration::from_secs(30), "every store", || async {
        let stored = count(&config, "SELECT count(*) AS n FROM events").await == 1;
        (stored
            && total_events(&config, player).await == Some(1)
            && score(&config, "game-poison", player).await == Some(7))
        .then_some(())
    })
    .await;
    // The replayed record is dead-lettered by nobody: the row is the one it came from.
    assert_eq!(count(&config, "SELECT count(*) AS n FROM dlq").await, 1);
}
