//! A backlog: a million events already on the topic when the consumers start, from 20,000
//! players in 50 games. All three roles must drain it to zero lag (every group's committed
//! offsets at the end of the topic), in writes small enough to finish, and every store must then
//! hold exactly what the events say.

use crate::helpers::*;
use crate::model::count;
use gamemetrics::actors::Role;
use gamemetrics::config::Config;
use gamemetrics::domain::GameEvent;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use redis::AsyncCommands;
use std::collections::HashMap;
use std::time::Duration;

const EVENTS: usize = 1_000_000;
const PLAYERS: usize = 20_000;
const GAMES: usize = 50;

/// The i-th event of the backlog: player and game spread evenly, every third one scores i % 7.
fn backlog_event(i: usize, now: chrono::DateTime<chrono::Utc>) -> GameEvent {
    let scoring = i.is_multiple_of(3);
    let body = serde_json::json!({
        "event_id": uuid::Uuid::from_u128(i as u128 + 1),
        "event_type": if scoring { "player_score" } else { "session_start" },
        "player_id": format!("p{}", i % PLAYERS),
        "game_id": format!("g{}", i % GAMES),
        "timestamp": "2024-01-15T12:00:00Z",
        "ingested_at": now.to_rfc3339(),
        "data": if scoring { serde_json::json!({"score": i % 7}) } else { serde_json::json!({}) },
    });
    serde_json::from_value(body).expect("a valid event")
}

/// Writes the backlog straight to the topic, keyed by player as the API writes it.
async fn produce_backlog(config: &Config) {
    let producer: FutureProducer = gamemetrics::kafka::client_config(&config.kafka)
        .expect("config")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .expect("producer");
    let now = chrono::Utc::now();
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(50_000) {
        let sends: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let e = backlog_event(i, now);
                let (key, value) = (e.player_id.as_str().to_owned(), e.to_wire());
                let producer = producer.clone();
                let topic = config.kafka.kafka_topic.clone();
                async move {
                    producer
                        .send(
                            FutureRecord::to(&topic).key(&key).payload(&value),
                            Duration::from_secs(60),
                        )
                        .await
                        .expect("produced")
                }
            })
            .collect();
        futures::future::join_all(sends).await;
    }
    producer.flush(Duration::from_secs(60)).expect("flushed");
}

#[actix_web::test]
async fn a_million_event_backlog_drains_through_every_role_into_exact_stores() {
    let config = pipeline_config(|c| {
        c.consumer.dedup_window_secs = 600;
        c.consumer.leaderboard_retention_days = 36_500;
    })
    .await;
    produce_backlog(&config).await;
    assert_eq!(topic_message_count(&config), EVENTS as i64);

    let consumers = start_consumers(&config, &Role::ALL);
    for role in Role::ALL {
        let group = format!("{}{}", config.consumer.consumer_group_prefix, role.group_id());
        eventually(
            Duration::from_secs(900),
            &format!("{group} at zero lag"),
            || async { (committed_total(&config, &group) == EVENTS as i64).then_some(()) },
        )
        .await;
    }

    assert_eq!(
        count(&config, "SELECT count(*) AS n FROM events").await,
        EVENTS as i64
    );
    assert_eq!(
        count(
            &config,
            "SELECT sum(total_events)::bigint AS n FROM player_statistics"
        )
        .await,
        EVENTS as i64
    );
    assert_eq!(
        count(&config, "SELECT count(*) AS n FROM player_statistics").await,
        PLAYERS as i64
    );
    let prefix = &config.redis.redis_key_prefix;
    let mut stats = redis_conn(&config, 0).await;
    let mut pipe = redis::pipe();
    for p in 0..PLAYERS {
        pipe.hget(format!("{prefix}player_stats:p{p}"), "total_events");
    }
    let totals: Vec<i64> = pipe.query_async(&mut stats).await.expect("stats hashes");
    assert_eq!(totals.iter().sum::<i64>(), EVENTS as i64);
    assert!(totals.iter().all(|t| *t == (EVENTS / PLAYERS) as i64));

    // Every game's all-time board: the sum of its players' scores.
    let mut want: HashMap<String, i64> = HashMap::new();
    for i in (0..EVENTS).step_by(3) {
        *want.entry(format!("g{}", i % GAMES)).or_default() += (i % 7) as i64;
    }
    let mut boards = redis_conn(&config, 1).await;
    for (game, total) in want {
        let board: Vec<(String, i64)> = boards
            .zrange_withscores(format!("{prefix}leaderboard:{game}:alltime"), 0, -1)
            .await
            .expect("board");
        assert_eq!(board.iter().map(|(_, s)| s).sum::<i64>(), total, "{game}");
    }
    for c in consumers {
        c.shutdown(Duration::from_secs(20)).await;
    }
}
