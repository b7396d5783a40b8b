//! `consumer_offsets`: the next offset each consumer has applied, per partition and log, written
//! in the same transaction as the rows it guards.

use super::PartitionLog;
use crate::schema::consumer_offsets::dsl::*;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// What a store holds of a partition's current log, answered when a consumer opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogState {
    /// Every record of this log below `next_offset` is applied (0 for a log new to the store).
    Open { next_offset: i64 },
    /// The store says it applied more of this log than the log holds (a log truncated by an
    /// unclean leader election, or a store restored from elsewhere): records at offsets it
    /// thinks applied would be skipped, so the partition must not be consumed.
    Behind { stored: i64, log_end: i64 },
}

impl LogState {
    /// The state of a log of which `stored` was applied and `log_end` exists.
    pub fn of(stored: i64, log_end: i64) -> Self {
        if stored > log_end {
            LogState::Behind { stored, log_end }
        } else {
            LogState::Open { next_offset: stored }
        }
    }
}

/// The row of one partition's log, whatever it holds.
macro_rules! row_of {
    ($p:expr) => {
        consumer_offsets
            .filter(consumer_service.eq($p.service))
            .filter(topic.eq($p.topic))
            .filter(kafka_partition.eq($p.partition))
    };
}

/// Locks the partition's row for this log (creating it at 0) and returns the first offset not
/// yet applied. Callers are in a transaction; the lock holds until it ends.
pub async fn lock(conn: &mut AsyncPgConnection, p: PartitionLog<'_>) -> QueryResult<i64> {
    // The row exists for every write but a log's first: one statement per batch, not two (at
    // 1,000 events/s a role writes a batch per partition every few milliseconds).
    if let Some(next) = locked_row(conn, p).await? {
        return Ok(next);
    }
    diesel::insert_into(consumer_offsets)
        .values((
            consumer_service.eq(p.service),
            topic.eq(p.topic),
            kafka_partition.eq(p.partition),
            topic_id.eq(p.log),
            next_offset.eq(0),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    locked_row(conn, p).await?.ok_or(diesel::result::Error::NotFound)
}

/// The next offset of the partition's row for this log, locked, if the row exists.
async fn locked_row(conn: &mut AsyncPgConnection, p: PartitionLog<'_>) -> QueryResult<Option<i64>> {
    row_of!(p)
        .filter(topic_id.eq(p.log))
        .select(next_offset)
        .for_update()
        .get_result(conn)
        .await
        .optional()
}

/// Moves the partition's log to `next` (never back). Callers hold the row's lock ([`lock`]).
pub async fn store(conn: &mut AsyncPgConnection, p: PartitionLog<'_>, next: i64) -> QueryResult<()> {
    // Every batch runs it: kept prepared (diesel doesn't cache an UPDATE's statement).
    super::Prepared(
        diesel::update(row_of!(p).filter(topic_id.eq(p.log)).filter(next_offset.lt(next)))
            .set((next_offset.eq(next), updated_at.eq(diesel::dsl::now))),
    )
    .execute(conn)
    .await
    .map(drop)
}

/// Sets the partition's log to `next`, back or forward (`gamemetrics rebuild redis`, with the
/// consumer stopped).
pub async fn reset(conn: &mut AsyncPgConnection, p: PartitionLog<'_>, next: i64) -> QueryResult<()> {
    lock(conn, p).await?;
    diesel::update(row_of!(p).filter(topic_id.eq(p.log)))
        .set((next_offset.eq(next), updated_at.eq(diesel::dsl::now)))
        .execute(conn)
        .await
        .map(drop)
}

/// Makes `consumer_offsets` ready for the partition's current log: finds what was applied of it,
/// adopts a row stored before offsets were kept per log, or starts a new row at 0 and says so.
/// Callers are in a transaction.
pub async fn open(conn: &mut AsyncPgConnection, p: PartitionLog<'_>, log_end: i64) -> QueryResult<LogState> {
    let rows: Vec<(String, i64)> = row_of!(p)
        .select((topic_id, next_offset))
        .for_update()
        .load(conn)
        .await?;
    if let Some((_, stored)) = rows.iter().find(|(log, _)| log == p.log) {
        return Ok(LogState::of(*stored, log_end));
    }
    if let [(legacy, stored)] = rows.as_slice() {
        // Stored before offsets were kept per log: it is this log's only if this log has
        // reached it; a row beyond the log's end can't be from this log.
        if legacy.is_empty() && *stored <= log_end {
            diesel::update(row_of!(p).filter(topic_id.eq("")))
                .set((topic_id.eq(p.log), updated_at.eq(diesel::dsl::now)))
                .execute(conn)
                .await?;
            tracing::warn!(
                service = p.service,
                topic = p.topic,
                partition = p.partition,
                log = p.log,
                next_offset = stored,
                log_end,
                "PostgreSQL: offsets stored before topic ids adopted by the current log"
            );
            return Ok(LogState::Open { next_offset: *stored });
        }
    }
    lock(conn, p).await?;
    for (old_log, old_next) in &rows {
        tracing::warn!(service = p.service, topic = p.topic, partition = p.partition,
            old_log = %old_log, old_next_offset = old_next, new_log = p.log, new_next_offset = 0, log_end,
            "PostgreSQL: the topic's offsets start over (a new log under the same name): applying it from its start");
    }
    Ok(LogState::Open { next_offset: 0 })
}
