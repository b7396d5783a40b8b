//! `PgSink`: batched, idempotent writes to PostgreSQL.

use super::redis::{ReadTop, PERIODS};
use super::{tracked, LogState, SinkError, Tracked};
use crate::actors::messages::{DlqEntry, Payload, Position, Record};
use crate::db::PgPool;
use actix::prelude::*;
use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Int4, Int8, Jsonb, Text, Timestamptz, Uuid as SqlUuid, Varchar};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

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

impl Actor for PgSink {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        // Writes are small and concurrent per partition; a deep mailbox only hides a stall.
        ctx.set_mailbox_capacity(256);
    }
}

impl Tracked for PgSink {
    const STORE: &'static str = "PostgreSQL";
    fn failures(&mut self) -> &mut u32 {
        &mut self.failures
    }
}

impl Supervised for PgSink {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!("PostgreSQL sink restarting");
        self.failures = 0;
    }
}

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
    /// A retry of an event already counted ([`super::redis::ClaimFirst`]): it only moves the offset.
    pub retry: bool,
}

/// Stats aggregator: add a batch of events to player_statistics, once.
#[derive(Message)]
#[rtype(result = "Result<usize, SinkError>")]
pub struct UpsertStats {
    pub position: Position,
    pub rows: Arc<Vec<StatRow>>,
}

/// The top N of one board, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardTop {
    pub game_id: String,
    pub period: &'static str,
    pub entries: Vec<(String, i64)>,
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
}

fn pg_err(e: impl std::fmt::Display) -> SinkError {
    SinkError::Postgres(e.to_string())
}

#[derive(QueryableByName)]
struct NextOffset {
    #[diesel(sql_type = BigInt)]
    next_offset: i64,
}

/// Locks the partition's offset row for this log and returns the first offset not yet applied.
async fn lock_offset(conn: &mut AsyncPgConnection, p: &Position) -> diesel::QueryResult<i64> {
    diesel::sql_query(
        "INSERT INTO consumer_offsets (consumer_service, topic, kafka_partition, topic_id, next_offset) \
         VALUES ($1, $2, $3, $4, 0) ON CONFLICT DO NOTHING",
    )
    .bind::<Varchar, _>(p.service)
    .bind::<Varchar, _>(p.topic.as_ref())
    .bind::<Int4, _>(p.partition)
    .bind::<Varchar, _>(p.log.as_ref())
    .execute(conn)
    .await?;
    let row: NextOffset = diesel::sql_query(
        "SELECT next_offset FROM consumer_offsets \
         WHERE consumer_service = $1 AND topic = $2 AND kafka_partition = $3 AND topic_id = $4 FOR UPDATE",
    )
    .bind::<Varchar, _>(p.service)
    .bind::<Varchar, _>(p.topic.as_ref())
    .bind::<Int4, _>(p.partition)
    .bind::<Varchar, _>(p.log.as_ref())
    .get_result(conn)
    .await?;
    Ok(row.next_offset)
}

async fn store_offset(conn: &mut AsyncPgConnection, p: &Position, next: i64) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "UPDATE consumer_offsets SET next_offset = $5, updated_at = now() \
         WHERE consumer_service = $1 AND topic = $2 AND kafka_partition = $3 AND topic_id = $4 \
         AND next_offset < $5",
    )
    .bind::<Varchar, _>(p.service)
    .bind::<Varchar, _>(p.topic.as_ref())
    .bind::<Int4, _>(p.partition)
    .bind::<Varchar, _>(p.log.as_ref())
    .bind::<BigInt, _>(next)
    .execute(conn)
    .await
    .map(drop)
}

#[derive(QueryableByName)]
struct LogOffset {
    #[diesel(sql_type = Varchar)]
    topic_id: String,
    #[diesel(sql_type = BigInt)]
    next_offset: i64,
}

/// Makes `consumer_offsets` ready for the partition's current log: finds what was applied of it,
/// adopts a row stored before offsets were kept per log, or starts a new row at 0 and says so.
async fn open_log(conn: &mut AsyncPgConnection, p: &Position, log_end: i64) -> diesel::QueryResult<LogState> {
    let rows: Vec<LogOffset> = diesel::sql_query(
        "SELECT topic_id, next_offset FROM consumer_offsets \
         WHERE consumer_service = $1 AND topic = $2 AND kafka_partition = $3 FOR UPDATE",
    )
    .bind::<Varchar, _>(p.service)
    .bind::<Varchar, _>(p.topic.as_ref())
    .bind::<Int4, _>(p.partition)
    .load(conn)
    .await?;
    if let Some(row) = rows.iter().find(|r| r.topic_id == *p.log) {
        return Ok(LogState::of(row.next_offset, log_end));
    }
    if let [legacy] = rows.as_slice() {
        // Stored before offsets were kept per log: it is this log's only if this log has
        // reached it; a row beyond the log's end can't be from this log.
        if legacy.topic_id.is_empty() && legacy.next_offset <= log_end {
            diesel::sql_query(
                "UPDATE consumer_offsets SET topic_id = $4, updated_at = now() \
                 WHERE consumer_service = $1 AND topic = $2 AND kafka_partition = $3 AND topic_id = ''",
            )
            .bind::<Varchar, _>(p.service)
            .bind::<Varchar, _>(p.topic.as_ref())
            .bind::<Int4, _>(p.partition)
            .bind::<Varchar, _>(p.log.as_ref())
            .execute(conn)
            .await?;
            tracing::warn!(service = p.service, topic = %p.topic, partition = p.partition, log = %p.log,
                next_offset = legacy.next_offset, log_end, "PostgreSQL: offsets stored before topic ids adopted by the current log");
            return Ok(LogState::Open {
                next_offset: legacy.next_offset,
            });
        }
    }
    lock_offset(conn, p).await?;
    for old in &rows {
        tracing::warn!(service = p.service, topic = %p.topic, partition = p.partition,
            old_log = %old.topic_id, old_next_offset = old.next_offset, new_log = %p.log, new_next_offset = 0, log_end,
            "PostgreSQL: the topic's offsets start over (a new log under the same name): applying it from its start");
    }
    Ok(LogState::Open { next_offset: 0 })
}

async fn insert_dlq(
    conn: &mut AsyncPgConnection,
    p: &Position,
    entries: &[&DlqEntry],
) -> diesel::QueryResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let originals: Vec<Value> = entries.iter().map(|e| e.original.clone()).collect();
    let reasons: Vec<&str> = entries.iter().map(|e| e.reason.as_str()).collect();
    let offsets: Vec<i64> = entries.iter().map(|e| e.offset).collect();
    diesel::sql_query(
        "INSERT INTO dlq (original_event, error_message, consumer_service, kafka_topic, kafka_partition, \
                          kafka_offset, kafka_topic_id) \
         SELECT o, m, $3, $4, $5, off, $7 FROM unnest($1::jsonb[], $2::text[], $6::bigint[]) AS t(o, m, off) \
         ON CONFLICT (consumer_service, kafka_topic, kafka_topic_id, kafka_partition, kafka_offset) DO NOTHING",
    )
    .bind::<Array<Jsonb>, _>(originals)
    .bind::<Array<Text>, _>(reasons)
    .bind::<Varchar, _>(p.service)
    .bind::<Varchar, _>(p.topic.as_ref())
    .bind::<Int4, _>(p.partition)
    .bind::<Array<Int8>, _>(offsets)
    .bind::<Varchar, _>(p.log.as_ref())
    .execute(conn)
    .await
    .map(drop)
}

/// Source → sink before a partition's first record: get `consumer_offsets` ready for its log.
#[derive(Message)]
#[rtype(result = "Result<LogState, SinkError>")]
pub struct OpenLog {
    pub position: Position,
    /// The partition's high watermark now: no offset of this log is stored beyond it.
    pub log_end: i64,
}

impl Handler<OpenLog> for PgSink {
    type Result = ResponseActFuture<Self, Result<LogState, SinkError>>;

    fn handle(&mut self, msg: OpenLog, _: &mut Context<Self>) -> Self::Result {
        let pool = self.pool.clone();
        tracked(self, async move {
            let mut conn = pool.get().await.map_err(pg_err)?;
            let OpenLog { position, log_end } = msg;
            conn.transaction(async |conn| open_log(conn, &position, log_end).await)
                .await
                .map_err(pg_err)
        })
    }
}

impl Handler<WriteEvents> for PgSink {
    type Result = ResponseActFuture<Self, Result<usize, SinkError>>;

    fn handle(&mut self, msg: WriteEvents, _: &mut Context<Self>) -> Self::Result {
        let pool = self.pool.clone();
        tracked(self, async move {
            let mut conn = pool.get().await.map_err(pg_err)?;
            let WriteEvents { position: p, records } = msg;
            conn.transaction(async |conn| {
                let from = lock_offset(conn, &p).await?;
                let fresh: Vec<&Record> = records.iter().filter(|r| r.offset >= from).collect();
                let mut events = EventColumns::default();
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
                insert_dlq(conn, &p, &dead.iter().collect::<Vec<_>>()).await?;
                if let Some(last) = fresh.last() {
                    store_offset(conn, &p, last.offset + 1).await?;
                }
                Ok::<usize, diesel::result::Error>(fresh.len())
            })
            .await
            .map_err(pg_err)
        })
    }
}

/// The events columns as arrays, for one `INSERT … SELECT FROM unnest(…)` per batch.
#[derive(Default)]
struct EventColumns {
    ids: Vec<uuid::Uuid>,
    types: Vec<String>,
    players: Vec<String>,
    games: Vec<String>,
    timestamps: Vec<DateTime<Utc>>,
    ingested: Vec<DateTime<Utc>>,
    data: Vec<Value>,
}

impl EventColumns {
    fn push(&mut self, e: &crate::domain::GameEvent) {
        self.ids.push(e.event_id);
        self.types.push(e.event_type.as_str().to_owned());
        self.players.push(e.player_id.as_str().to_owned());
        self.games.push(e.game_id.as_str().to_owned());
        self.timestamps.push(e.timestamp);
        self.ingested.push(e.ingested_at);
        self.data.push(Value::Object(e.data.clone()));
    }

    async fn insert(self, conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        diesel::sql_query(
            "INSERT INTO events (event_id, event_type, player_id, game_id, event_timestamp, ingested_at, data) \
             SELECT * FROM unnest($1::uuid[], $2::varchar[], $3::varchar[], $4::varchar[], \
                                  $5::timestamptz[], $6::timestamptz[], $7::jsonb[]) \
             ON CONFLICT (event_id, game_id) DO NOTHING",
        )
        .bind::<Array<SqlUuid>, _>(self.ids)
        .bind::<Array<Varchar>, _>(self.types)
        .bind::<Array<Varchar>, _>(self.players)
        .bind::<Array<Varchar>, _>(self.games)
        .bind::<Array<Timestamptz>, _>(self.timestamps)
        .bind::<Array<Timestamptz>, _>(self.ingested)
        .bind::<Array<Jsonb>, _>(self.data)
        .execute(conn)
        .await
        .map(drop)
    }
}

impl Handler<UpsertStats> for PgSink {
    type Result = ResponseActFuture<Self, Result<usize, SinkError>>;

    fn handle(&mut self, msg: UpsertStats, _: &mut Context<Self>) -> Self::Result {
        let pool = self.pool.clone();
        tracked(self, async move {
            let mut conn = pool.get().await.map_err(pg_err)?;
            let UpsertStats { position: p, rows } = msg;
            conn.transaction(async |conn| {
                let from = lock_offset(conn, &p).await?;
                let fresh: Vec<&StatRow> = rows.iter().filter(|r| r.offset >= from).collect();
                // Aggregate per player first: one row per player per batch keeps the
                // upsert from touching a row twice in one statement.
                let mut per_player: HashMap<&str, (i32, Map<String, Value>)> = HashMap::new();
                for r in fresh.iter().filter(|r| !r.retry) {
                    let (total, breakdown) = per_player.entry(r.player_id.as_str()).or_default();
                    *total += 1;
                    let n = breakdown.get(&r.event_type).and_then(Value::as_i64).unwrap_or(0);
                    breakdown.insert(r.event_type.clone(), Value::from(n + 1));
                }
                if !per_player.is_empty() {
                    let mut players = Vec::new();
                    let mut totals = Vec::new();
                    let mut breakdowns = Vec::new();
                    for (player, (total, breakdown)) in per_player {
                        players.push(player.to_owned());
                        totals.push(total);
                        breakdowns.push(Value::Object(breakdown));
                    }
                    diesel::sql_query(UPSERT_STATS)
                        .bind::<Array<Varchar>, _>(players)
                        .bind::<Array<Int4>, _>(totals)
                        .bind::<Array<Jsonb>, _>(breakdowns)
                        .execute(conn)
                        .await?;
                }
                if let Some(last) = fresh.last() {
                    store_offset(conn, &p, last.offset + 1).await?;
                }
                Ok::<usize, diesel::result::Error>(fresh.iter().filter(|r| !r.retry).count())
            })
            .await
            .map_err(pg_err)
        })
    }
}

/// Adds a batch's counts to what is stored: totals add, breakdowns add key by key.
const UPSERT_STATS: &str = "\
INSERT INTO player_statistics AS ps (player_id, total_events, event_breakdown, updated_at, created_at)
SELECT p, t, b, now(), now() FROM unnest($1::varchar[], $2::int4[], $3::jsonb[]) AS u(p, t, b)
ON CONFLICT (player_id) DO UPDATE SET
    total_events = ps.total_events + EXCLUDED.total_events,
    event_breakdown = (
        SELECT COALESCE(jsonb_object_agg(k, n), '{}'::jsonb) FROM (
            SELECT k, SUM(v::bigint) AS n FROM (
                SELECT key AS k, value AS v FROM jsonb_each_text(ps.event_breakdown)
                UNION ALL
                SELECT key, value FROM jsonb_each_text(EXCLUDED.event_breakdown)
            ) AS both_sides GROUP BY k
        ) AS summed),
    updated_at = now()";

impl Handler<WriteBoards> for PgSink {
    type Result = ResponseActFuture<Self, Result<(), SinkError>>;

    fn handle(&mut self, msg: WriteBoards, _: &mut Context<Self>) -> Self::Result {
        let pool = self.pool.clone();
        tracked(self, async move {
            let mut conn = pool.get().await.map_err(pg_err)?;
            let WriteBoards {
                position,
                game_ids,
                n,
                reader,
                dlq,
            } = msg;
            conn.transaction::<_, SinkError, _>(async |conn| {
                if !game_ids.is_empty() {
                    lock_boards(conn, &game_ids).await?;
                    let boards = reader
                        .send(ReadTop {
                            game_ids: game_ids.clone(),
                            n,
                        })
                        .await??;
                    write_boards(conn, &boards).await?;
                }
                insert_dlq(conn, &position, &dlq.iter().collect::<Vec<_>>()).await?;
                Ok(())
            })
            .await
        })
    }
}

impl From<diesel::result::Error> for SinkError {
    fn from(e: diesel::result::Error) -> Self {
        pg_err(e)
    }
}

/// Takes the transaction-scoped advisory lock of every period's board of these games, in one
/// fixed order so two writers can't deadlock.
async fn lock_boards(conn: &mut AsyncPgConnection, game_ids: &[String]) -> diesel::QueryResult<()> {
    let (mut games, mut periods) = (Vec::new(), Vec::new());
    for g in game_ids {
        for p in PERIODS {
            games.push(g.as_str());
            periods.push(p);
        }
    }
    diesel::sql_query(
        "SELECT pg_advisory_xact_lock(h) FROM \
         (SELECT DISTINCT hashtext(g || '/' || p) AS h FROM unnest($1::text[], $2::text[]) AS t(g, p) ORDER BY h) AS s",
    )
    .bind::<Array<Text>, _>(&games)
    .bind::<Array<Text>, _>(&periods)
    .execute(conn)
    .await
    .map(drop)
}

/// Makes the table hold exactly these top N for every board given, in two statements however
/// many boards there are. Callers hold the boards' advisory locks (`lock_boards`).
async fn write_boards(conn: &mut AsyncPgConnection, boards: &[BoardTop]) -> diesel::QueryResult<()> {
    if boards.is_empty() {
        return Ok(());
    }
    let board_games: Vec<&str> = boards.iter().map(|b| b.game_id.as_str()).collect();
    let board_periods: Vec<&str> = boards.iter().map(|b| b.period).collect();
    let (mut games, mut periods, mut players, mut ranks, mut scores) =
        (vec![], vec![], vec![], vec![], vec![]);
    for b in boards {
        for (rank, (player, score)) in (1..).zip(&b.entries) {
            games.push(b.game_id.as_str());
            periods.push(b.period);
            players.push(player.as_str());
            ranks.push(rank);
            scores.push(*score);
        }
    }
    diesel::sql_query(
        "DELETE FROM leaderboards l \
         WHERE (l.game_id, l.period) IN (SELECT g, p FROM unnest($1::varchar[], $2::varchar[]) AS b(g, p)) \
         AND NOT EXISTS (SELECT 1 FROM unnest($3::varchar[], $4::varchar[], $5::varchar[]) AS n(g, p, pl) \
                         WHERE n.g = l.game_id AND n.p = l.period AND n.pl = l.player_id)",
    )
    .bind::<Array<Varchar>, _>(&board_games)
    .bind::<Array<Varchar>, _>(&board_periods)
    .bind::<Array<Varchar>, _>(&games)
    .bind::<Array<Varchar>, _>(&periods)
    .bind::<Array<Varchar>, _>(&players)
    .execute(conn)
    .await?;
    diesel::sql_query(
        "INSERT INTO leaderboards AS l (game_id, player_id, period, rank, score, updated_at) \
         SELECT g, pl, p, r, s, now() \
         FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::int4[], $5::int8[]) AS t(g, p, pl, r, s) \
         ON CONFLICT (game_id, player_id, period) \
         DO UPDATE SET rank = EXCLUDED.rank, score = EXCLUDED.score, updated_at = now() \
         WHERE l.rank <> EXCLUDED.rank OR l.score <> EXCLUDED.score",
    )
    .bind::<Array<Varchar>, _>(&games)
    .bind::<Array<Varchar>, _>(&periods)
    .bind::<Array<Varchar>, _>(&players)
    .bind::<Array<Int4>, _>(ranks)
    .bind::<Array<Int8>, _>(scores)
    .execute(conn)
    .await
    .map(drop)
}
