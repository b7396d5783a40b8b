//! Messages between actors: source ↔ role actors, and role actors → sinks. Every message has
//! named fields; results say what the sender waits for.

use crate::domain::leaderboard::BoardTop;
use crate::domain::GameEvent;
use actix::prelude::*;
use serde_json::Value;
use std::sync::Arc;

/// Where a batch came from: the consumer service (the seed's name), topic, the topic's log and
/// partition. Sinks key their stored offsets by it.
#[derive(Debug, Clone)]
pub struct Position {
    pub service: &'static str,
    pub topic: Arc<str>,
    /// The topic's id ([`crate::kafka::TopicId`]): a topic created again under the same name is
    /// another log whose offsets start over, so every stored offset is kept per log.
    pub log: Arc<str>,
    pub partition: i32,
}

impl Position {
    /// Where this position's offsets are kept.
    pub fn partition_log(&self) -> crate::db::PartitionLog<'_> {
        crate::db::PartitionLog {
            service: self.service,
            topic: &self.topic,
            partition: self.partition,
            log: &self.log,
        }
    }
}

/// One Kafka record after parsing: an event, or the reason it can never be one.
#[derive(Debug, Clone)]
pub enum Payload {
    Event(GameEvent),
    Poison {
        original: Value,
        reason: String,
    },
    /// A replayed dead letter for other consumers: it only moves the offset.
    NotForUs,
    /// `gamemetrics players forget`: remove this player from the role's stores once every
    /// record before this one is durable, and drop the player's records from now on.
    Forget {
        player_id: String,
    },
}

/// A parsed record and its offset.
#[derive(Debug, Clone)]
pub struct Record {
    pub offset: i64,
    pub payload: Payload,
}

/// Source → role actor: the next record of the partition, in offset order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Consumed {
    pub record: Record,
}

/// Role actor → source: every record below `next_offset` is durably applied, and every record
/// below `released_next` no longer held in the role's memory.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Applied {
    /// The log the offset belongs to: a source that moved to a new log ignores the old one's.
    pub log: Arc<str>,
    /// Every record below it is durable: what may be committed.
    pub next_offset: i64,
    /// Every record below it has left the lanes that hold records' contents (what
    /// PARTITION_MAX_IN_FLIGHT bounds). At or past `next_offset`: past it while records wait
    /// only for a follow-up write that holds a key of theirs (the leaderboard's top-N write).
    pub released_next: i64,
}

/// Flush every buffer now, whatever its size or timer (shutdown and tests).
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct FlushAll;

/// Asks a role actor how far it has durably applied and how far it has read.
#[derive(Message, Clone, Copy)]
#[rtype(result = "Progress")]
pub struct GetProgress;

/// The answer to [`GetProgress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub struct Progress {
    /// Every record below this offset is durable.
    pub applied_next: i64,
    /// Every record below this offset has left the lanes holding records' contents; never
    /// below `applied_next`.
    pub released_next: i64,
    /// One past the last record received.
    pub seen_next: i64,
}

impl Progress {
    /// True when everything received has been applied.
    pub fn settled(&self) -> bool {
        self.applied_next >= self.seen_next
    }
}

pub use crate::db::dlq::DlqEntry;

/// Why a sink write failed. A store that is unavailable (down, slow, failing over) says nothing
/// about the records: the batch is retried with backoff. A store that refuses what is in the
/// batch ([`SinkError::Rejected`]) would refuse it again: the lane splits the batch until the
/// record is alone and dead-letters it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("Redis: {0}")]
    Redis(String),
    #[error("sink unavailable: {0}")]
    Mailbox(#[from] actix::MailboxError),
    #[error("{store} write took longer than {after:?}")]
    Timeout {
        store: &'static str,
        after: std::time::Duration,
    },
    /// The store refused a value or a constraint failed: sending the same records again can't
    /// succeed.
    #[error("{store} refused a record: {message}")]
    Rejected { store: &'static str, message: String },
}

impl SinkError {
    /// True when the write did not finish in time (it may still land; the offset guards make
    /// that harmless): the batch was too big for the store's answer to come back in time.
    pub fn is_timeout(&self) -> bool {
        match self {
            SinkError::Timeout { .. } => true,
            SinkError::Redis(m) | SinkError::Postgres(m) => {
                let m = m.to_ascii_lowercase();
                m.contains("timed out") || m.contains("timeout")
            }
            SinkError::Mailbox(_) | SinkError::Rejected { .. } => false,
        }
    }

    /// True when the store refused the batch's content rather than being unavailable.
    pub fn is_rejected(&self) -> bool {
        matches!(self, SinkError::Rejected { .. })
    }
}

// ---- Opening a partition's log (source → sinks) ----

pub use crate::db::offsets::LogState;

/// Source → PostgreSQL sink before a partition's first record: get `consumer_offsets` ready for
/// its log.
#[derive(Message)]
#[rtype(result = "Result<LogState, SinkError>")]
pub struct OpenLogPg {
    pub position: Position,
    /// The partition's high watermark now: no offset of this log is stored beyond it.
    pub log_end: i64,
}

// ---- PostgreSQL sink ----

/// Logger: insert events (deduplicated on event_id) and dead letters, and the partition offset.
#[derive(Message)]
#[rtype(result = "Result<usize, SinkError>")]
pub struct WriteEvents {
    pub position: Position,
    pub records: Arc<Vec<Record>>,
}

/// One stats record for the batched player_statistics upsert.
#[derive(Debug, Clone)]
pub struct StatRow {
    pub offset: i64,
    /// A retry of an event already counted (same id, other offset) must not count again; the
    /// id scoped to its game ([`crate::domain::GameEvent::scoped_id`]).
    pub event_id: uuid::Uuid,
    pub player_id: String,
    pub event_type: String,
    /// A retry of an event already counted ([`ClaimFirst`]): it only moves the offset.
    pub retry: bool,
    /// `player_statistics` refused it (the reason): it is dead-lettered instead of counted.
    pub dead: Option<String>,
}

/// Stats aggregator: add a batch of events to player_statistics, once.
#[derive(Message)]
#[rtype(result = "Result<usize, SinkError>")]
pub struct UpsertStats {
    pub position: Position,
    pub rows: Arc<Vec<StatRow>>,
}

/// Leaderboard manager: replace the stored top N of every period of some games with what Redis
/// holds, and write dead letters.
#[derive(Message)]
#[rtype(result = "Result<(), SinkError>")]
pub struct WriteBoards {
    pub position: Position,
    pub game_ids: Vec<String>,
    pub n: usize,
    /// Where the snapshot is read from, inside the transaction, after the boards are locked:
    /// two writers of one board then always write in the order they read.
    pub reader: Recipient<ReadTop>,
    pub dlq: Vec<DlqEntry>,
    /// Somebody waits on this write (a drain before a shutdown or a revoke, a forget): it
    /// starts without waiting out the process's gap between two board writes.
    pub urgent: bool,
}

/// Leaderboard manager: somebody now waits on a board write already sent (a drain began, a
/// forget arrived): the sink starts the writes waiting out its gap now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct HurryBoards;

/// A role's part of forgetting a player in PostgreSQL (`db::forget`), recorded on its
/// tombstone. Answers the games whose stored top N lost the player (the leaderboard's).
#[derive(Message)]
#[rtype(result = "Result<Vec<String>, SinkError>")]
pub struct ForgetInPg {
    pub player_id: String,
    pub role: super::Role,
}

/// Every forgotten player id, for a role starting on a partition, and those this role has not
/// yet reported removed (a forget cut short by a crash or a revoke).
#[derive(Message)]
#[rtype(result = "Result<Forgotten, SinkError>")]
pub struct LoadForgotten {
    pub role: super::Role,
}

/// The answer to [`LoadForgotten`].
#[derive(Debug, Clone, Default)]
pub struct Forgotten {
    pub all: Vec<String>,
    /// Forgotten players whose removal this role hasn't finished.
    pub pending: Vec<String>,
}

// ---- Redis sink ----

/// One step of a role's part of forgetting a player in Redis: its stats hash (`Stats`, one
/// step), or its entries in every board, current and dated (`Boards`): the boards one page of
/// the database's keys holds, from `from`. A step's work is bounded whatever the database
/// holds (the boards' share it with up to a million retry-claim hashes); the caller sends the
/// next step until the answer's `next` is `None`.
#[derive(Message)]
#[rtype(result = "Result<ForgetStep, SinkError>")]
pub struct ForgetInRedis {
    pub player_id: String,
    pub db: LiveDb,
    pub from: crate::db::ScanCursor,
}

/// What one forget step did: the games whose current boards held the player, and where the
/// next step starts (`None`: done).
#[derive(Debug, Default)]
pub struct ForgetStep {
    pub games: Vec<String>,
    pub next: Option<crate::db::ScanCursor>,
}

/// One event's contribution to `player_stats:{player_id}`.
#[derive(Debug, Clone)]
pub struct StatDelta {
    pub offset: i64,
    /// A retry of an event already counted (same id, other offset) must not count again; the
    /// id scoped to its game ([`crate::domain::GameEvent::scoped_id`]).
    pub event_id: uuid::Uuid,
    pub player_id: String,
    pub event_type: String,
    /// RFC 3339 UTC with microseconds, so string order is time order.
    pub timestamp: String,
    /// When the API accepted the event, for the end-to-end latency metric.
    pub ingested_at: chrono::DateTime<chrono::Utc>,
}

/// Apply stats deltas to Redis DB 0, skipping offsets already applied and retries.
#[derive(Message)]
#[rtype(result = "Result<StatsApplied, SinkError>")]
pub struct ApplyStats {
    pub position: Position,
    pub deltas: Arc<Vec<StatDelta>>,
}

/// What [`ApplyStats`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsApplied {
    /// Deltas counted.
    pub applied: usize,
    /// Offsets at or above this were checked for retries (below it they were already applied
    /// before, and skipped unchecked).
    pub checked_from: i64,
    /// The checked offsets that are retries of an event counted at another offset.
    pub retries: Vec<i64>,
    /// Offsets left out because their player's stats key holds something else's data.
    pub refused: Vec<i64>,
}

impl redis::FromRedisValue for StatsApplied {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        let all: Vec<i64> = redis::FromRedisValue::from_redis_value(v)?;
        match all.as_slice() {
            [applied, checked_from, n_refused, rest @ ..] => {
                let n = usize::try_from(*n_refused).unwrap_or(0).min(rest.len());
                Ok(StatsApplied {
                    applied: usize::try_from(*applied).unwrap_or(0),
                    checked_from: *checked_from,
                    refused: rest[..n].to_vec(),
                    retries: rest[n..].to_vec(),
                })
            }
            _ => Err("the stats script answers at least three integers".into()),
        }
    }
}

/// One scoring event's contribution to a game's boards.
#[derive(Debug, Clone)]
pub struct ScoreDelta {
    pub offset: i64,
    /// A retry of an event already scored (same id, other offset) must not score again; the id
    /// scoped to its game ([`crate::domain::GameEvent::scoped_id`]).
    pub event_id: uuid::Uuid,
    pub game_id: String,
    pub player_id: String,
    pub score: i64,
    /// `YYYY-MM-DD` of the event's UTC day, and the Unix time its dated board expires.
    pub day: String,
    pub day_expires_at: i64,
    /// `YYYY-Www` of the event's ISO week, and the Unix time its dated board expires.
    pub week: String,
    pub week_expires_at: i64,
    /// When the API accepted the event, for the end-to-end latency metric.
    pub ingested_at: chrono::DateTime<chrono::Utc>,
}

/// What [`ApplyScores`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScoresApplied {
    /// Deltas scored.
    pub applied: usize,
    /// Offsets left out because a board key of their game holds something else's data.
    pub refused: Vec<i64>,
}

/// Apply score deltas to Redis DB 1, skipping offsets already applied and refusing (without
/// writing) those whose keys hold something else's data.
#[derive(Message)]
#[rtype(result = "Result<ScoresApplied, SinkError>")]
pub struct ApplyScores {
    pub position: Position,
    pub deltas: Arc<Vec<ScoreDelta>>,
}

/// Stats' PostgreSQL lane asks which of its event ids are retries of an event
/// already seen at another offset (its Redis lane asks inside its own script). Answers the
/// offsets of the retries, which must not be counted.
#[derive(Message)]
#[rtype(result = "Result<Vec<i64>, SinkError>")]
pub struct ClaimFirst {
    pub position: Position,
    pub items: Vec<ClaimItem>,
}

/// One event [`ClaimFirst`] asks about.
#[derive(Debug, Clone)]
pub struct ClaimItem {
    pub offset: i64,
    /// Scoped to its game, as [`StatRow::event_id`].
    pub event_id: uuid::Uuid,
    /// Whose claims it is kept with on a Redis Cluster.
    pub player_id: String,
}

/// Which Redis database a role keeps its offsets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveDb {
    /// DB 0: player stats.
    Stats,
    /// DB 1: leaderboards.
    Boards,
}

/// Source → sink before a partition's first record: get the role's Redis offset ready for the
/// partition's current log (see [`OpenLogPg`]).
#[derive(Message)]
#[rtype(result = "Result<LogState, SinkError>")]
pub struct OpenLogRedis {
    pub position: Position,
    /// The partition's high watermark now: no offset of this log is stored beyond it.
    pub log_end: i64,
    pub db: LiveDb,
}

/// Read the current top N of every period of some games.
#[derive(Message)]
#[rtype(result = "Result<Vec<BoardTop>, SinkError>")]
pub struct ReadTop {
    pub game_ids: Vec<String>,
    pub n: usize,
}
