//! Sinks: the only actors that talk to PostgreSQL and Redis. Both run under an actix
//! `Supervisor`: a sink that stops (after repeated failures) is restarted with fresh state,
//! and the role actor that was waiting re-sends its batch.
//!
//! Every write is idempotent: it carries the Kafka offsets of its records and applies, in one
//! transaction or one Lua script, only the records at or above the offset stored beside the data.

pub mod postgres;
pub mod redis;

use std::time::Duration;

/// Consecutive failures after which a sink stops itself to be restarted by its supervisor.
const RESTART_AFTER_FAILURES: u32 = 5;

/// Why a sink write failed. All of them are retried by the role actor with backoff; none sends
/// a record to the DLQ, because a database being down says nothing about the record.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("Redis: {0}")]
    Redis(String),
    #[error("sink unavailable: {0}")]
    Mailbox(#[from] actix::MailboxError),
}

/// How long a sink waits for a pooled connection before reporting a transient failure.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
