//! `PgSink`: batched, idempotent writes to PostgreSQL. Each handler is one transaction that
//! locks the partition's offset row (`db::offsets`), writes only the records at or above it and
//! moves it; the queries themselves live in `db/`.

use super::{sink_actor, tracked, SinkError};
use crate::actors::messages::*;
use crate::db::{self, PgPool};
use actix::prelude::*;
use diesel_async::AsyncConnection;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Writes to PostgreSQL for all role actors of this process.
pub struct PgSink {
    pool: PgPool,
    /// Consecutive failed writes; reset by any success.
    failures: u32,
}

impl PgSink {
    /// A sink writing through `pool`.
    pub fn new(pool: PgPool) -> Self {
        PgSink { pool, failures: 0 }
    }
}

/// `in_transaction!(sink, msg, |conn| body)`: the sink's tracked response running `body` in one
/// transaction on a pooled connection, with `msg` moved in. A macro, not a method: the bound
/// diesel-async puts on transaction closures can't be named outside it.
macro_rules! in_transaction {
    ($sink:expr, $msg:ident, |$conn:ident| $body:block) => {{
        let pool = $sink.pool.clone();
        tracked($sink, async move {
            let $msg = $msg;
            let mut connection = pool.get().await.map_err(pg_err)?;
            connection
                .transaction::<_, SinkError, _>(async |$conn| $body)
                .await
        })
    }};
}

sink_actor!(PgSink, "PostgreSQL");

fn pg_err(e: impl std::fmt::Display) -> SinkError {
    SinkError::Postgres(e.to_string())
}

impl From<diesel::result::Error> for SinkError {
    fn from(e: diesel::result::Error) -> Self {
        pg_err(e)
    }
}

impl Handler<OpenLogPg> for PgSink {
    type Result = ResponseActFuture<Self, Result<LogState, SinkError>>;

    fn handle(&mut self, msg: OpenLogPg, _: &mut Context<Self>) -> Self::Result {
        in_transaction!(self, msg, |conn| {
            Ok(db::offsets::open(conn, msg.position.partition_log(), msg.log_end).await?)
        })
    }
}

impl Handler<WriteEvents> for PgSink {
    type Result = ResponseActFuture<Self, Result<usize, SinkError>>;

    fn handle(&mut self, msg: WriteEvents, _: &mut Context<Self>) -> Self::Result {
        in_transaction!(self, msg, |conn| {
            {
                let WriteEvents { position, records } = &msg;
                let p = position.partition_log();
                let from = db::offsets::lock(conn, p).await?;
                let fresh: Vec<&Record> = records.iter().filter(|r| r.offset >= from).collect();
                let mut events = db::events::EventColumns::default();
                let mut dead = Vec::new();
                for r in &fresh {
                    match &r.payload {
                        Payload::Event(e) => events.push(e),
                        Payload::Poison { original, reason } => dead.push(DlqEntry {
                            offset: r.offset,
                            original: original.clone(),
                            reason: reason.clone(),
                        }),
                    }
                }
                events.insert(conn).await?;
                db::dlq::insert(conn, p, &dead).await?;
                if let Some(last) = fresh.last() {
                    db::offsets::store(conn, p, last.offset + 1).await?;
                }
                Ok(fresh.len())
            }
        })
    }
}

impl Handler<UpsertStats> for PgSink {
    type Result = ResponseActFuture<Self, Result<usize, SinkError>>;

    fn handle(&mut self, msg: UpsertStats, _: &mut Context<Self>) -> Self::Result {
        in_transaction!(self, msg, |conn| {
            {
                let UpsertStats { position, rows } = &msg;
                let p = position.partition_log();
                let from = db::offsets::lock(conn, p).await?;
                let fresh: Vec<&StatRow> = rows.iter().filter(|r| r.offset >= from).collect();
                // Aggregate per player first: one row per player per batch keeps the upsert from
                // touching a row twice in one statement.
                let mut per_player: HashMap<&str, (i32, Map<String, Value>)> = HashMap::new();
                for r in fresh.iter().filter(|r| !r.retry) {
                    let (total, breakdown) = per_player.entry(r.player_id.as_str()).or_default();
                    *total += 1;
                    let n = breakdown.get(&r.event_type).and_then(Value::as_i64).unwrap_or(0);
                    breakdown.insert(r.event_type.clone(), Value::from(n + 1));
                }
                db::stats::add(conn, per_player).await?;
                if let Some(last) = fresh.last() {
                    db::offsets::store(conn, p, last.offset + 1).await?;
                }
                Ok(fresh.iter().filter(|r| !r.retry).count())
            }
        })
    }
}

impl Handler<WriteBoards> for PgSink {
    type Result = ResponseActFuture<Self, Result<(), SinkError>>;

    fn handle(&mut self, msg: WriteBoards, _: &mut Context<Self>) -> Self::Result {
        in_transaction!(self, msg, |conn| {
            {
                let WriteBoards {
                    position,
                    game_ids,
                    n,
                    reader,
                    dlq,
                } = &msg;
                if !game_ids.is_empty() {
                    db::boards::lock(conn, game_ids).await?;
                    let boards = reader
                        .send(ReadTop {
                            game_ids: game_ids.clone(),
                            n: *n,
                        })
                        .await??;
                    db::boards::write_top(conn, &boards).await?;
                }
                db::dlq::insert(conn, position.partition_log(), dlq).await?;
                Ok(())
            }
        })
    }
}
