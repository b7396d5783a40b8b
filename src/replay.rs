//! `gamemetrics dlq replay`: a dead letter, once its row is corrected, produced to the topic
//! again with its `event_id`, for the consumers that didn't apply it the first time.
//!
//! The logger dead-letters what no consumer could read, so its dead letters are replayed for
//! all three; the leaderboard dead-letters a scoring event whose score it refused (the logger
//! stored it and the stats counted it), so its are replayed for the leaderboard alone. The
//! others skip the replayed record ([`crate::kafka::REPLAY_FOR_HEADER`]), so it can't count
//! twice there; where it does apply, the event id's retry claim keeps a second replay from
//! counting again (within `DEDUP_WINDOW_SECS`), and the row records the replay so the command
//! won't produce it twice unless asked.

use crate::actors::messages::Payload;
use crate::actors::Role;
use crate::config::Config;
use crate::db::dlq::{self, DlqFilter, DlqRow};
use crate::domain::GameEvent;
use crate::kafka::{EventProducer, ProduceError};
use crate::metrics::Metrics;
use diesel_async::AsyncConnection;

/// What a replay did with one dead letter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Produced again, for these consumers, to this partition and offset.
    Replayed {
        services: Vec<&'static str>,
        partition: i32,
        offset: i64,
    },
    /// `--dry-run`: would be produced for these consumers.
    WouldReplay { services: Vec<&'static str> },
    /// Replayed before (at this time); `--again` produces it once more.
    AlreadyReplayed { at: chrono::DateTime<chrono::Utc> },
    /// Still not an event the consumers would apply; the row stays as it is.
    Refused { reason: String },
}

/// One dead letter's replay.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replay {
    pub id: i32,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// What can stop a replay as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] diesel::result::Error),
    #[error(transparent)]
    Connect(#[from] crate::db::DbError),
    #[error("Kafka: {0}")]
    Kafka(String),
    #[error("dead letter {id}: producing it failed: {source}")]
    Produce { id: i32, source: ProduceError },
}

/// The consumers a dead letter written by `service` with `reason` is replayed for: the
/// logger's are records no consumer could read, for all three, except those PostgreSQL refused
/// (`events` alone left them out: the stats and boards counted them), for the logger alone.
pub fn targets(service: &str, reason: &str) -> Vec<&'static str> {
    match Role::ALL.iter().find(|r| r.service() == service) {
        Some(Role::Logger) if reason.starts_with(REFUSED_BY_POSTGRES) => vec![Role::Logger.service()],
        Some(Role::Logger) | None => Role::ALL.iter().map(|r| r.service()).collect(),
        Some(role) => vec![role.service()],
    }
}

/// How the reason of a record PostgreSQL refused begins (`SinkError::Rejected`'s message).
const REFUSED_BY_POSTGRES: &str = "PostgreSQL refused a record";

/// The event a dead letter now holds, if the consumers it is replayed for would apply it.
pub fn check(row: &DlqRow, scoring: &[String]) -> Result<GameEvent, String> {
    let bytes = serde_json::to_vec(&row.original_event).map_err(|e| e.to_string())?;
    let event = match crate::actors::source::parse(Some(&bytes)) {
        Payload::Event(event) => event,
        Payload::Poison { reason, .. } => return Err(reason),
        Payload::NotForUs | Payload::Forget { .. } => return Err("not an event".into()),
    };
    let scores = scoring.iter().any(|t| t == event.event_type.as_str());
    if row.consumer_service == Role::Leaderboard.service() && scores {
        crate::domain::leaderboard::score_of(&event)?;
    }
    Ok(event)
}

/// Replays the dead letters `filter` selects, oldest first.
pub async fn replay(
    config: &Config,
    filter: &DlqFilter,
    dry_run: bool,
    again: bool,
) -> Result<Vec<Replay>, ReplayError> {
    let mut conn = crate::db::connect(&config.database).await?;
    let producer = if dry_run {
        None
    } else {
        let metrics = Metrics::new().map_err(|e| ReplayError::Kafka(e.to_string()))?;
        Some(EventProducer::new(&config.kafka, metrics).map_err(|e| ReplayError::Kafka(e.to_string()))?)
    };
    let scoring = &config.consumer.scoring_event_types;
    let mut out = Vec::new();
    for row in dlq::list(&mut conn, filter).await? {
        let id = row.id;
        let outcome = match (check(&row, scoring), row.replayed_at, &producer) {
            (Err(reason), _, _) => Outcome::Refused { reason },
            (Ok(_), Some(at), _) if !again => Outcome::AlreadyReplayed { at },
            (Ok(_), _, None) => Outcome::WouldReplay {
                services: targets(&row.consumer_service, &row.error_message),
            },
            (Ok(_), _, Some(producer)) => replay_one(&mut conn, producer, id, scoring, again).await?,
        };
        tracing::info!(dlq_id = id, outcome = ?outcome, "dead letter replay");
        out.push(Replay { id, outcome });
    }
    if let Some(p) = producer {
        p.flush(std::time::Duration::from_secs(5));
    }
    Ok(out)
}

/// Produces one dead letter inside a transaction holding its row, and records the replay
/// there: two replays of one row at once produce it once.
async fn replay_one(
    conn: &mut diesel_async::AsyncPgConnection,
    producer: &EventProducer,
    id: i32,
    scoring: &[String],
    again: bool,
) -> Result<Outcome, ReplayError> {
    conn.transaction::<_, ReplayError, _>(async |conn| {
        let Some(row) = dlq::lock(conn, id).await? else {
            return Ok(Outcome::Refused {
                reason: "deleted meanwhile".into(),
            });
        };
        let event = match check(&row, scoring) {
            Ok(event) => event,
            Err(reason) => return Ok(Outcome::Refused { reason }),
        };
        if let (Some(at), false) = (row.replayed_at, again) {
            return Ok(Outcome::AlreadyReplayed { at });
        }
        let services = targets(&row.consumer_service, &row.error_message);
        let delivery = producer
            .replay(&event, &services)
            .await
            .map_err(|source| ReplayError::Produce { id, source })?;
        dlq::mark_replayed(conn, id).await?;
        Ok(Outcome::Replayed {
            services,
            partition: delivery.partition,
            offset: delivery.offset,
        })
    })
    .await
}
