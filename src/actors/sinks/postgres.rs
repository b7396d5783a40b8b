//! `PgSink`: batched, idempotent writes to PostgreSQL. Each handler is one transaction that
//! locks the partition's offset row (`db::offsets`), writes only the records at or above it and
//! moves it; the queries themselves live in `db/`.

use super::{sink_actor, tracked, SinkError};
use crate::actors::messages::*;
use crate::actors::Role;
use crate::db::{self, PgPool};
use actix::prelude::*;
use diesel_async::AsyncConnection;
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio::sync::oneshot;

/// Writes to PostgreSQL for all role actors of this process.
pub struct PgSink {
    pool: PgPool,
    /// Consecutive failed writes; reset by any success.
    failures: u32,
    /// Board writes that arrived while one was running: the next write serves them all at once.
    boards_waiting: Vec<(WriteBoards, oneshot::Sender<Result<(), SinkError>>)>,
    /// Whether a board write is running, or the gap after one.
    boards: BoardWrites,
    /// The least time from one board write's end to the next one's start (the process-wide
    /// LEADERBOARD_MIN_FLUSH_GAP_MS).
    board_gap: Duration,
}

/// Where the process's board writes stand.
enum BoardWrites {
    Idle,
    Running,
    /// The gap after a write, ended by this timer (or early by an urgent write).
    Gap(SpawnHandle),
}

impl PgSink {
    /// A sink writing through `pool`.
    pub fn new(pool: PgPool) -> Self {
        PgSink {
            pool,
            failures: 0,
            boards_waiting: Vec::new(),
            boards: BoardWrites::Idle,
            board_gap: Duration::ZERO,
        }
    }

    /// Keeps at least `gap` between two board writes of this process.
    pub fn with_board_gap(mut self, gap: Duration) -> Self {
        self.board_gap = gap;
        self
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

sink_actor!(PgSink, "PostgreSQL", restarting: |sink: &mut PgSink| {
    // The write that was running is gone with the old context; its callers see their reply
    // dropped and send again, as the waiting ones do now.
    sink.boards = BoardWrites::Idle;
    sink.boards_waiting.clear();
});

fn pg_err(e: impl std::fmt::Display) -> SinkError {
    SinkError::Postgres(e.to_string())
}

impl From<diesel::result::Error> for SinkError {
    fn from(e: diesel::result::Error) -> Self {
        if refused_for_content(&e) {
            SinkError::Rejected {
                store: "PostgreSQL",
                message: e.to_string(),
            }
        } else {
            pg_err(e)
        }
    }
}

/// PostgreSQL's data exceptions (class 22) as their messages begin, for errors diesel reports
/// without a kind of their own.
const DATA_EXCEPTIONS: &[&str] = &[
    "invalid input syntax",
    "invalid input value",
    "value too long",
    "out of range",
    "invalid byte sequence",
    "unsupported unicode escape sequence",
    "cannot be represented",
    "division by zero",
    "malformed",
];

/// Whether PostgreSQL refused the statement for what it carried (a constraint, a value it
/// can't store), as opposed to being unreachable, overloaded or in a failover: the first will
/// fail again however often it is sent.
fn refused_for_content(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind as Kind, Error};
    match e {
        Error::DatabaseError(
            Kind::CheckViolation
            | Kind::NotNullViolation
            | Kind::ForeignKeyViolation
            | Kind::RestrictViolation
            | Kind::ExclusionViolation,
            _,
        ) => true,
        Error::DatabaseError(Kind::Unknown, info) => {
            let m = info.message().to_ascii_lowercase();
            DATA_EXCEPTIONS.iter().any(|d| m.contains(d))
        }
        Error::SerializationError(_) => true,
        _ => false,
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

impl Handler<LoadForgotten> for PgSink {
    type Result = ResponseActFuture<Self, Result<Forgotten, SinkError>>;

    fn handle(&mut self, msg: LoadForgotten, _: &mut Context<Self>) -> Self::Result {
        in_transaction!(self, msg, |conn| {
            Ok(Forgotten {
                all: db::forget::all_ids(conn).await?,
                pending: db::forget::pending_ids(conn, msg.role).await?,
            })
        })
    }
}

impl Handler<ForgetInPg> for PgSink {
    type Result = ResponseActFuture<Self, Result<Vec<String>, SinkError>>;

    fn handle(&mut self, msg: ForgetInPg, _: &mut Context<Self>) -> Self::Result {
        in_transaction!(self, msg, |conn| {
            let player = msg.player_id.as_str();
            match msg.role {
                Role::Logger => db::forget::remove_events(conn, player).await?,
                // Each role also deletes the dead letters it wrote itself.
                Role::Stats => db::forget::remove_statistics(conn, player).await?,
                Role::Leaderboard => {
                    // Under the boards' locks, as every top-N write: none can interleave.
                    let games: Vec<String> = db::forget::board_games(conn, player).await?;
                    db::boards::lock(conn, &games).await?;
                    return Ok(db::forget::remove_board_rows(conn, player).await?);
                }
            }
            Ok(Vec::new())
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
                        Payload::NotForUs | Payload::Forget { .. } => {}
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
                let dead: Vec<DlqEntry> = fresh
                    .iter()
                    .filter_map(|r| {
                        r.dead.as_ref().map(|reason| DlqEntry {
                            offset: r.offset,
                            // What the stats kept of it; the whole event is in `events` and on
                            // the topic at the row's position.
                            original: serde_json::json!({"player_id": r.player_id, "event_type": r.event_type}),
                            reason: reason.clone(),
                        })
                    })
                    .collect();
                db::dlq::insert(conn, p, &dead).await?;
                if let Some(last) = fresh.last() {
                    db::offsets::store(conn, p, last.offset + 1).await?;
                }
                Ok(fresh.iter().filter(|r| !r.retry).count())
            }
        })
    }
}

/// Every partition of a process touches most games' boards, and each partition's write rewrites
/// their top N under the same advisory locks: run one at a time, at most one per board gap,
/// with whatever arrived meanwhile merged into the next, they rewrite each board once per write
/// instead of once per partition. (Three partitions wrote the same 150 boards three times over,
/// a third of a 2-core machine in PostgreSQL.)
impl Handler<WriteBoards> for PgSink {
    type Result = ResponseFuture<Result<(), SinkError>>;

    fn handle(&mut self, msg: WriteBoards, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, answer) = oneshot::channel();
        let urgent = msg.urgent;
        self.boards_waiting.push((msg, reply));
        if urgent {
            self.end_board_gap(ctx);
        }
        self.write_waiting_boards(ctx);
        Box::pin(async move {
            answer
                .await
                .unwrap_or_else(|_| Err(SinkError::Postgres("the sink restarted during the write".into())))
        })
    }
}

/// A partition's board lane has one write in flight: once it sits here waiting out the gap, that
/// partition's urgent write can't be sent until it is done, so the partition says so instead.
impl Handler<HurryBoards> for PgSink {
    type Result = ();

    fn handle(&mut self, _: HurryBoards, ctx: &mut Context<Self>) {
        if !self.boards_waiting.is_empty() {
            for (waiting, _) in &mut self.boards_waiting {
                waiting.urgent = true;
            }
            self.end_board_gap(ctx);
            self.write_waiting_boards(ctx);
        }
    }
}

impl PgSink {
    /// Ends the gap after the last write, if that is what runs (not a write: the waiting urgent
    /// request then starts when it ends).
    fn end_board_gap(&mut self, ctx: &mut Context<Self>) {
        if let BoardWrites::Gap(gap) = self.boards {
            ctx.cancel_future(gap);
            self.boards = BoardWrites::Idle;
        }
    }

    /// Starts one write of every waiting board request, unless one is running.
    fn write_waiting_boards(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.boards, BoardWrites::Idle) || self.boards_waiting.is_empty() {
            return;
        }
        self.boards = BoardWrites::Running;
        let (writes, replies): (Vec<WriteBoards>, Vec<_>) =
            std::mem::take(&mut self.boards_waiting).into_iter().unzip();
        let write = in_transaction!(self, writes, |conn| {
            {
                let games: BTreeSet<&String> = writes.iter().flat_map(|w| &w.game_ids).collect();
                if let Some(first) = writes.first().filter(|_| !games.is_empty()) {
                    let game_ids: Vec<String> = games.into_iter().cloned().collect();
                    db::boards::lock(conn, &game_ids).await?;
                    let n = writes.iter().map(|w| w.n).max().unwrap_or(first.n);
                    let boards = first.reader.send(ReadTop { game_ids, n }).await??;
                    db::boards::write_top(conn, &boards).await?;
                }
                for w in &writes {
                    db::dlq::insert(conn, w.position.partition_log(), &w.dlq).await?;
                }
                Ok(())
            }
        });
        ctx.spawn(write.map(|result, sink, ctx| {
            for reply in replies {
                let _ = reply.send(result.clone());
            }
            if sink.boards_waiting.iter().any(|(waiting, _)| waiting.urgent) {
                // An urgent request came while this write ran: it would wait out a whole gap.
                sink.boards = BoardWrites::Idle;
                sink.write_waiting_boards(ctx);
                return;
            }
            // Requests arriving during the gap wait and share the next write, unless urgent.
            let gap = ctx.run_later(sink.board_gap, |sink, ctx| {
                sink.boards = BoardWrites::Idle;
                sink.write_waiting_boards(ctx);
            });
            sink.boards = BoardWrites::Gap(gap);
        }));
    }
}
