//! The Kafka half of the ingest path alone, for `scripts/bench-ingest`'s open loop: events are
//! due at a fixed rate and each is sent with gamemetrics' own producer (same settings as
//! `serve`: acks=all, idempotence, linger, lz4; from the same environment), timed from when it
//! was due to its acknowledgement. Next to `examples/openloop` against `serve` and against a bare
//! handler, it splits the ingest API's latency into what HTTP costs and what Kafka does.
//!
//!   produceloop RATE SECONDS
//!
//! Prints `sent p50_ms p99_ms max_ms failed`, as `openloop` does.

#[path = "shared/open_loop.rs"]
mod open_loop;

use clap::Parser;
use gamemetrics::config::KafkaConfig;
use gamemetrics::domain::{EventType, GameEvent, GameId, PlayerId};
use gamemetrics::kafka::EventProducer;
use gamemetrics::metrics::Metrics;
use std::time::{Duration, Instant};

/// KAFKA_* from the environment, with `serve`'s defaults.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    kafka: KafkaConfig,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, rate, secs] = args.as_slice() else {
        return Err("usage: produceloop RATE SECONDS".into());
    };
    let rate: f64 = rate.parse()?;
    let secs: f64 = secs.parse()?;
    let kafka = Args::parse_from(["produceloop"]).kafka;
    let producer = EventProducer::new(&kafka, Metrics::new()?)?;
    producer.check_ready(Duration::from_secs(10)).await?;

    // A warm-up first, as `openloop` gets: the idempotent producer's id and the partitions'
    // leaders are fetched with the first sends (~0.5 s here), which would land in the tail.
    run(&producer, rate, 2.0).await?;
    let (all, failed) = run(&producer, rate, secs).await?;
    open_loop::print_summary(all, failed);
    Ok(())
}

/// Sends `rate` events a second for `secs` seconds; answers each one's latency from when it was
/// due, and how many failed.
async fn run(
    producer: &EventProducer,
    rate: f64,
    secs: f64,
) -> Result<(Vec<f64>, u64), Box<dyn std::error::Error>> {
    let total = (rate * secs) as u64;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(100_000);
    let schedule = open_loop::schedule(Instant::now(), rate, total, tx);
    let mut sends = tokio::task::JoinSet::new();
    let mut i = 0u64;
    while let Some(due) = rx.recv().await {
        let (producer, event) = (producer.clone(), event(i)?);
        i += 1;
        sends.spawn(async move {
            let ok = producer.send(&event).await.is_ok();
            (due.elapsed().as_secs_f64() * 1000.0, ok)
        });
    }
    schedule.join().map_err(|_| "the schedule thread panicked")?;
    let mut all = Vec::with_capacity(total as usize);
    let mut failed = 0u64;
    while let Some(done) = sends.join_next().await {
        let (ms, ok) = done?;
        all.push(ms);
        failed += u64::from(!ok);
    }
    Ok((all, failed))
}

/// The same event `scripts/bench-ingest` posts, as the API would put it on the topic.
fn event(i: u64) -> Result<GameEvent, Box<dyn std::error::Error>> {
    let now = chrono::Utc::now();
    Ok(GameEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: EventType::parse("player_score")?,
        player_id: PlayerId::parse(format!("player-{}", i % 100))?,
        game_id: GameId::parse("game-1")?,
        timestamp: now,
        ingested_at: now,
        data: serde_json::json!({"score": 1500, "level": 7, "map": "forest"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    })
}
