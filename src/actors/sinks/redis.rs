//! `RedisSink`: live stats (DB 0) and leaderboards (DB 1), applied exactly once by Lua scripts
//! that check and move an offset guard in the same atomic step as the increments.
//!
//! On a single Redis one script call applies a whole batch under the partition's offset. On a
//! Redis Cluster a script may only touch one slot, so a batch goes as one call per player
//! (stats) or game (boards), each under that player's or game's own offset for the partition
//! (see [`crate::db::redis_keys`]); the partition's offset then records how far every call
//! got, for the next start. With REDIS_WAIT_REPLICAS, a batch counts as applied only once that
//! many replicas hold it, so a failover cannot lose counts whose Kafka offsets were committed.

use super::{sink_actor, tracked, SinkError};
use crate::actors::messages::*;
use crate::db::redis_keys::{self, Layout, RedisKeys, Store};
use crate::db::{RedisConn, RedisPool};
use crate::domain::leaderboard::{periods_of, Board, BoardTop, Period};
use actix::prelude::*;
use futures::{StreamExt, TryStreamExt};
use redis::{Script, ToRedisArgs};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Writes to and reads from Redis for all role actors of this process.
pub struct RedisSink {
    stats: RedisPool,
    boards: RedisPool,
    keys: RedisKeys,
    stats_script: Arc<Script>,
    scores_script: Arc<Script>,
    claim_script: Arc<Script>,
    open_script: Arc<Script>,
    advance_script: Arc<Script>,
    /// DEDUP_WINDOW_SECS; 0 when client retries are not deduplicated.
    dedup_window_secs: u64,
    /// DEDUP_BUCKETS: hashes one generation of claims is spread over.
    claim_buckets: u32,
    wait: WaitForReplicas,
    failures: u32,
}

/// REDIS_WAIT_REPLICAS and REDIS_WAIT_TIMEOUT_MS.
#[derive(Debug, Clone, Copy, Default)]
struct WaitForReplicas {
    replicas: u32,
    timeout_ms: u64,
}

/// DEDUP_BUCKETS' default, for sinks built without a configuration (tests).
const DEFAULT_CLAIM_BUCKETS: u32 = 1 << 19;

/// One script call, `EVALSHA` with the key it is routed by and guarded with, its arguments
/// written straight into the command (a batch's are megabytes; no copy in between).
struct Call {
    cmd: redis::Cmd,
    /// Arguments pushed so far.
    args: usize,
}

impl Call {
    fn new(script: &Script, key: &str) -> Self {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(1).arg(key);
        Call { cmd, args: 0 }
    }

    fn push(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.cmd.arg(arg);
        self.args += 1;
        self
    }

    /// Runs the call; a Redis that doesn't know the script yet (restarted, failed over, a new
    /// node) is given it and asked again.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        conn: &mut RedisConn,
    ) -> redis::RedisResult<T> {
        match self.cmd.query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                script.load_async(conn).await?;
                self.cmd.query_async(conn).await
            }
            answer => answer,
        }
    }
}

impl RedisSink {
    /// A sink over the stats (DB 0) and leaderboard (DB 1) pools (the same cluster, on a
    /// cluster), with every key under `prefix`, remembering event ids for `dedup_window_secs`
    /// (0: not at all).
    pub fn new(stats: RedisPool, boards: RedisPool, prefix: &str, dedup_window_secs: u64) -> Self {
        let layout = if stats.is_cluster() {
            Layout::Cluster
        } else {
            Layout::Single
        };
        RedisSink {
            stats,
            boards,
            keys: RedisKeys::with_layout(prefix, layout),
            stats_script: Arc::new(Script::new(STATS_LUA)),
            scores_script: Arc::new(Script::new(SCORES_LUA)),
            claim_script: Arc::new(Script::new(CLAIM_LUA)),
            open_script: Arc::new(Script::new(OPEN_LUA)),
            advance_script: Arc::new(Script::new(ADVANCE_LUA)),
            dedup_window_secs,
            claim_buckets: DEFAULT_CLAIM_BUCKETS,
            wait: WaitForReplicas::default(),
            failures: 0,
        }
    }

    /// Spreads each generation of retry claims over `buckets` hashes (DEDUP_BUCKETS).
    pub fn with_claim_buckets(mut self, buckets: u32) -> Self {
        self.claim_buckets = buckets.clamp(1, 1 << 24);
        self
    }

    /// Reports a batch applied only once `replicas` replicas hold it, waiting up to
    /// `timeout_ms` (REDIS_WAIT_REPLICAS, REDIS_WAIT_TIMEOUT_MS); 0 replicas: no wait.
    pub fn with_wait_for_replicas(mut self, replicas: u32, timeout_ms: u64) -> Self {
        self.wait = WaitForReplicas { replicas, timeout_ms };
        self
    }

    /// Pushes what a script claims an event id by (see `claim_fn!`): the bucket of `store`'s
    /// claims hashes it goes to, then its 16 bytes, that hash's field; both empty (no claim)
    /// when deduplication is off. The bucket is worked out here, not in the script: Lua turns
    /// a number into a key name with `sprintf`, a measurable share of a script's time.
    fn push_claim(&self, call: &mut Call, store: Store, scoped_id: &uuid::Uuid) {
        if self.dedup_window_secs > 0 {
            let buckets = self.keys.claim_buckets(store, self.claim_buckets);
            call.push(RedisKeys::claim_bucket(scoped_id, buckets))
                .push(scoped_id.as_bytes().as_slice());
        } else {
            call.push("").push("");
        }
    }

    /// Splits a batch into the groups one script call may touch: all of it on a single Redis;
    /// per player or game (`tag`) on a cluster, in first-seen order, each in offset order.
    fn groups<'a, T>(&self, items: &'a [T], tag: impl Fn(&'a T) -> &'a str) -> Vec<(&'a str, Vec<&'a T>)> {
        if self.keys.layout() == Layout::Single {
            return vec![("", items.iter().collect())];
        }
        let mut order: Vec<&'a str> = Vec::new();
        let mut by_tag: BTreeMap<&'a str, Vec<&'a T>> = BTreeMap::new();
        for item in items {
            let t = tag(item);
            by_tag
                .entry(t)
                .or_insert_with(|| {
                    order.push(t);
                    Vec::new()
                })
                .push(item);
        }
        order
            .into_iter()
            .map(|t| (t, by_tag.remove(t).unwrap_or_default()))
            .collect()
    }

    /// A call guarded by `tag`'s offsets of `position` (the partition's, on a single Redis),
    /// starting with the arguments every claiming script takes (see `claim_fn!`): this and the
    /// previous generation's claims-hash prefixes, the sighting's place, when this generation's
    /// hashes expire; then the guard's field. A generation is
    /// DEDUP_WINDOW_SECS long and its hashes live until the end of the next one, so a claim is
    /// kept for one to two windows.
    fn call(&self, script: &Script, store: Store, tag: &str, position: &Position) -> Call {
        let window = self.dedup_window_secs.max(1);
        let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
        let generation = now / window;
        let (key, field) = self.keys.guard(store, tag, position.partition_log());
        let mut call = Call::new(script, &key);
        call.push(self.keys.claims_of(store, tag, generation))
            .push(claim_tag(position))
            .push(self.keys.claims_of(store, tag, generation.saturating_sub(1)))
            .push((generation + 2) * window)
            .push(field);
        call
    }

    /// Runs `calls` of `script` (at once: they touch different slots), then, on a cluster,
    /// moves the partition's offset to `next` (one past the batch's newest record), then waits
    /// for the replicas. Answers each call's answer.
    fn run<T: redis::FromRedisValue + Send + 'static>(
        &mut self,
        pool: RedisPool,
        script: Arc<Script>,
        calls: Vec<Call>,
        position: &Position,
        next: Option<i64>,
    ) -> ResponseActFuture<Self, Result<Vec<T>, SinkError>> {
        let advance = match (self.keys.layout(), next) {
            (Layout::Cluster, Some(next)) => Some((
                self.advance_script.clone(),
                self.keys.offsets(position.partition_log()),
                next,
            )),
            _ => None,
        };
        let wait = self.wait;
        tracked(self, async move {
            let answers = futures::future::join_all(calls.into_iter().map(|call| {
                let (pool, script) = (pool.clone(), script.clone());
                async move {
                    let mut conn = pool.get().await.map_err(redis_err)?;
                    let answer = call.invoke::<T>(&script, &mut conn).await.map_err(redis_err)?;
                    Ok::<_, SinkError>((answer, conn))
                }
            }))
            .await;
            let mut out = Vec::with_capacity(answers.len());
            let mut last_conn = None;
            for answer in answers {
                let (answer, conn) = answer?;
                out.push(answer);
                last_conn = Some(conn);
            }
            if let (Some((script, key, next)), Some(conn)) = (advance, last_conn.as_mut()) {
                script
                    .key(key)
                    .arg(next)
                    .invoke_async::<()>(conn)
                    .await
                    .map_err(redis_err)?;
            }
            if let (true, Some(conn)) = (wait.replicas > 0, last_conn.as_mut()) {
                wait_for_replicas(conn, wait).await?;
            }
            Ok(out)
        })
    }
}

/// Blocks until `wait.replicas` replicas hold every write this connection made (on a cluster:
/// every primary's replicas, for the writes to it). A script whose guard found nothing new
/// still writes its guard, so this covers a replayed batch whose first run wrote on another
/// connection.
async fn wait_for_replicas(conn: &mut RedisConn, wait: WaitForReplicas) -> Result<(), SinkError> {
    let acked: i64 = redis::cmd("WAIT")
        .arg(wait.replicas)
        .arg(wait.timeout_ms)
        .query_async(conn)
        .await
        .map_err(redis_err)?;
    if acked < i64::from(wait.replicas) {
        return Err(SinkError::Redis(format!(
            "only {acked} of {} replicas acknowledged the batch within {} ms (REDIS_WAIT_REPLICAS); it will be retried",
            wait.replicas, wait.timeout_ms
        )));
    }
    Ok(())
}

sink_actor!(RedisSink, "Redis");

fn redis_err(e: impl std::fmt::Display) -> SinkError {
    SinkError::Redis(e.to_string())
}

impl Handler<ApplyStats> for RedisSink {
    type Result = ResponseActFuture<Self, Result<StatsApplied, SinkError>>;

    fn handle(&mut self, msg: ApplyStats, _: &mut Context<Self>) -> Self::Result {
        let calls = self
            .groups(&msg.deltas, |d| d.player_id.as_str())
            .into_iter()
            .map(|(player, deltas)| {
                let mut call = self.call(&self.stats_script, Store::Stats, player, &msg.position);
                // What each delta's player completes into its key: the same for the whole call
                // (on a cluster a call is one player's).
                let (before, after) = self.keys.player_stats_affixes(player);
                call.push(before).push(after);
                for d in deltas {
                    call.push(d.offset);
                    self.push_claim(&mut call, Store::Stats, &d.event_id);
                    call.push(&d.player_id)
                        .push(format!("event_{}", d.event_type))
                        .push(&d.timestamp);
                }
                call
            })
            .collect();
        let next = msg.deltas.iter().map(|d| d.offset + 1).max();
        let (pool, script) = (self.stats.clone(), self.stats_script.clone());
        Box::pin(
            self.run::<StatsApplied>(pool, script, calls, &msg.position, next)
                .map(|answers, _, _| {
                    // A call skips what its guard had already applied, unchecked for retries;
                    // above the highest such mark every record was checked.
                    let answers = answers?;
                    Ok(StatsApplied {
                        applied: answers.iter().map(|a| a.applied).sum(),
                        checked_from: answers.iter().map(|a| a.checked_from).max().unwrap_or(0),
                        refused: answers.iter().flat_map(|a| a.refused.iter().copied()).collect(),
                        retries: answers.into_iter().flat_map(|a| a.retries).collect(),
                    })
                }),
        )
    }
}

impl Handler<ApplyScores> for RedisSink {
    type Result = ResponseActFuture<Self, Result<ScoresApplied, SinkError>>;

    fn handle(&mut self, msg: ApplyScores, _: &mut Context<Self>) -> Self::Result {
        let now = periods_of(chrono::Utc::now(), 0);
        let calls = self
            .groups(&msg.deltas, |d| d.game_id.as_str())
            .into_iter()
            .map(|(game, deltas)| {
                let mut call = self.call(&self.scores_script, Store::Boards, game, &msg.position);
                call.push(&now.day).push(&now.week);
                for period in Period::ALL {
                    call.push(RedisKeys::period_suffix(period));
                }
                call.push(redis_keys::DATED_SEPARATOR)
                    .push(redis_keys::CURRENT_MARKER_SUFFIX);
                for d in deltas {
                    call.push(d.offset);
                    self.push_claim(&mut call, Store::Boards, &d.event_id);
                    call.push(self.keys.board_base(&d.game_id))
                        .push(&d.player_id)
                        .push(d.score)
                        .push(&d.day)
                        .push(&d.week)
                        .push(d.day_expires_at)
                        .push(d.week_expires_at);
                }
                call
            })
            .collect();
        let next = msg.deltas.iter().map(|d| d.offset + 1).max();
        let (pool, script) = (self.boards.clone(), self.scores_script.clone());
        Box::pin(
            self.run::<Vec<i64>>(pool, script, calls, &msg.position, next)
                .map(|answers, _, _| {
                    let mut out = ScoresApplied::default();
                    for answer in answers? {
                        if let Some((n, refused)) = answer.split_first() {
                            out.applied += usize::try_from(*n).unwrap_or(0);
                            out.refused.extend_from_slice(refused);
                        }
                    }
                    Ok(out)
                }),
        )
    }
}

impl Handler<OpenLogRedis> for RedisSink {
    type Result = ResponseActFuture<Self, Result<LogState, SinkError>>;

    fn handle(&mut self, msg: OpenLogRedis, _: &mut Context<Self>) -> Self::Result {
        let pool = match msg.db {
            LiveDb::Stats => self.stats.clone(),
            LiveDb::Boards => self.boards.clone(),
        };
        let p = msg.position;
        let o = p.partition_log();
        let keys = [
            self.keys.offsets(o),
            self.keys.legacy_offsets(o),
            self.keys.last_log(o),
        ];
        let script = self.open_script.clone();
        let rebuilding = self.keys.rebuilding(match msg.db {
            LiveDb::Stats => Store::Stats,
            LiveDb::Boards => Store::Boards,
        });
        tracked(self, async move {
            let mut conn = pool.get().await.map_err(redis_err)?;
            let rebuild: Option<String> = redis::cmd("GET")
                .arg(&rebuilding)
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
            if let Some(by) = rebuild {
                return Err(SinkError::Redis(format!(
                    "gamemetrics rebuild redis is running ({by}); the partition opens once it is done"
                )));
            }
            let (state, stored, old_log, old_next): (String, i64, String, i64) = script
                .key(&keys[..])
                .arg(p.log.as_ref())
                .arg(msg.log_end)
                .invoke_async(&mut conn)
                .await
                .map_err(redis_err)?;
            match state.as_str() {
                "adopted" => {
                    tracing::warn!(service = p.service, topic = %p.topic, partition = p.partition, log = %p.log,
                    next_offset = stored, log_end = msg.log_end, "Redis: offsets stored before topic ids adopted by the current log")
                }
                "new" if !old_log.is_empty() => {
                    tracing::warn!(service = p.service, topic = %p.topic, partition = p.partition,
                    old_log = %old_log, old_next_offset = old_next, new_log = %p.log, new_next_offset = 0, log_end = msg.log_end,
                    "Redis: the topic's offsets start over (a new log under the same name): applying it from its start")
                }
                _ => {}
            }
            Ok(LogState::of(stored, msg.log_end))
        })
    }
}

/// How long one forget step scans the boards' keys before it removes the player from the
/// boards found so far and answers: far below WRITE_TIMEOUT however busy Redis is, so every
/// step finishes and the next starts where it ended.
const FORGET_STEP_SCAN: std::time::Duration = std::time::Duration::from_secs(2);

/// Keys one forget step visits at most (~0.2 s of an idle Redis's time), so a step of a
/// database of millions of claims is no single long run even when Redis answers fast.
pub const FORGET_STEP_KEYS: usize = 100_000;

/// Keys one `SCAN` round trip of a forget visits: ~20 ms of Redis's time (2 µs a key, measured),
/// ten times [`crate::db::redis_conn::SCAN_COUNT`]. While a backlog drains, a round trip waits
/// up to ~1 s in line behind the consumers' scripts (measured on the 2-core machine), so the
/// number of round trips, not the keys, decides how long a forget takes: a million keys are
/// 100 of them, not 1,000. A forget is rare; other clients waiting 20 ms behind one page of it
/// is the price.
const FORGET_SCAN_COUNT: usize = 10_000;

/// Forgetting a player: their stats hash, or their entry in every board of every game, current
/// and dated (found by `SCAN`: which games a player scored in is known nowhere else once the
/// logger has deleted their events). Both are idempotent, so a step that fails is sent again.
impl Handler<ForgetInRedis> for RedisSink {
    type Result = ResponseActFuture<Self, Result<ForgetStep, SinkError>>;

    fn handle(&mut self, msg: ForgetInRedis, _: &mut Context<Self>) -> Self::Result {
        let keys = self.keys.clone();
        let player = msg.player_id;
        match msg.db {
            LiveDb::Stats => {
                let (pool, key) = (self.stats.clone(), keys.player_stats(&player));
                tracked(self, async move {
                    let mut conn = pool.get().await.map_err(redis_err)?;
                    redis::cmd("DEL")
                        .arg(&key)
                        .query_async::<i64>(&mut conn)
                        .await
                        .map_err(redis_err)?;
                    Ok(ForgetStep::default())
                })
            }
            LiveDb::Boards => {
                let (pool, mut at) = (self.boards.clone(), msg.from);
                tracked(self, async move {
                    let mut conn = pool.get().await.map_err(redis_err)?;
                    let started = tokio::time::Instant::now();
                    let (pattern, mut boards, mut visited) = (keys.board_pattern(), Vec::new(), 0);
                    let next = loop {
                        let (page, next) = conn
                            .scan_page(&at, &pattern, "zset", FORGET_SCAN_COUNT)
                            .await
                            .map_err(redis_err)?;
                        boards.extend(page);
                        visited += FORGET_SCAN_COUNT;
                        match next {
                            Some(next)
                                if visited < FORGET_STEP_KEYS && started.elapsed() < FORGET_STEP_SCAN =>
                            {
                                at = next
                            }
                            next => break next,
                        }
                    };
                    drop(conn);
                    boards.sort_unstable();
                    boards.dedup();
                    // One pipeline on a single Redis; on a cluster, where the boards live on every
                    // node, one ZREM per round trip, a few at once. A busy Redis makes each round
                    // trip wait behind the consumers' scripts: one per board took seconds.
                    let per_pipe = match keys.layout() {
                        Layout::Single => boards.len().max(1),
                        Layout::Cluster => 1,
                    };
                    let removed: Vec<Vec<String>> = futures::stream::iter(boards.chunks(per_pipe))
                        .map(|chunk| {
                            let (pool, player) = (pool.clone(), &player);
                            async move {
                                let mut pipe = redis::pipe();
                                for board in chunk {
                                    pipe.zrem(board, player);
                                }
                                let mut conn = pool.get().await.map_err(redis_err)?;
                                let counts: Vec<i64> =
                                    pipe.query_async(&mut conn).await.map_err(redis_err)?;
                                Ok::<_, SinkError>(
                                    chunk
                                        .iter()
                                        .zip(counts)
                                        .filter(|(_, n)| *n > 0)
                                        .map(|(board, _)| board.clone())
                                        .collect(),
                                )
                            }
                        })
                        .buffer_unordered(8)
                        .try_collect()
                        .await?;
                    let games = removed
                        .iter()
                        .flatten()
                        .filter_map(|board| keys.game_of_current_board(board))
                        .collect();
                    Ok(ForgetStep { games, next })
                })
            }
        }
    }
}

impl Handler<ClaimFirst> for RedisSink {
    type Result = ResponseActFuture<Self, Result<Vec<i64>, SinkError>>;

    fn handle(&mut self, msg: ClaimFirst, _: &mut Context<Self>) -> Self::Result {
        let calls = if self.dedup_window_secs == 0 {
            Vec::new()
        } else {
            self.groups(&msg.items, |i| i.player_id.as_str())
                .into_iter()
                .map(|(player, items)| {
                    let mut call = self.call(&self.claim_script, Store::Stats, player, &msg.position);
                    for i in items {
                        call.push(i.offset);
                        self.push_claim(&mut call, Store::Stats, &i.event_id);
                    }
                    call
                })
                .filter(|c| c.args > CLAIM_FIXED_ARGS)
                .collect()
        };
        let (pool, script) = (self.stats.clone(), self.claim_script.clone());
        Box::pin(
            self.run::<Vec<i64>>(pool, script, calls, &msg.position, None)
                .map(|answers, _, _| Ok(answers?.into_iter().flatten().collect())),
        )
    }
}

/// The arguments every guarded or claiming call starts with (see [`RedisSink::call`]).
const CLAIM_FIXED_ARGS: usize = 5;

/// What a claim records as the first sighting of an event id: `log:partition:` + offset.
/// Duplicates share a partition (the key is the player), and every lane reads a partition in
/// order, so whichever lane claims first records the lowest offset and all lanes agree. The log
/// is part of it because offsets repeat across logs: with the topic's name alone, an id claimed
/// at offset 7 of a deleted topic and seen again at offset 7 of its successor would look like a
/// replay of its first sighting and count twice. An id claimed on an earlier log is a retry on
/// the new one, as `events` also says: see docs/decisions.md.
fn claim_tag(p: &Position) -> String {
    // Eight characters of the log id (48 bits) tell logs of one topic name apart well enough,
    // at a third of the bytes of every claim.
    let log = p.log.get(..8).unwrap_or(&p.log);
    format!("{log}:{}:", p.partition)
}

impl Handler<ReadTop> for RedisSink {
    type Result = ResponseActFuture<Self, Result<Vec<BoardTop>, SinkError>>;

    fn handle(&mut self, msg: ReadTop, _: &mut Context<Self>) -> Self::Result {
        let pool = self.boards.clone();
        let stop = isize::try_from(msg.n).unwrap_or(isize::MAX) - 1;
        // One pipeline on a single Redis; on a cluster one per game (a game's boards share a
        // slot), sent at once.
        let per_pipe = match self.keys.layout() {
            Layout::Single => msg.game_ids.len().max(1),
            Layout::Cluster => 1,
        };
        let pipes: Vec<redis::Pipeline> = msg
            .game_ids
            .chunks(per_pipe)
            .map(|games| {
                let mut pipe = redis::pipe();
                for game in games {
                    for period in Period::ALL {
                        pipe.zrevrange_withscores(self.keys.board(game, &Board::Current(period)), 0, stop);
                    }
                }
                pipe
            })
            .collect();
        tracked(self, async move {
            let answers = futures::future::join_all(pipes.into_iter().map(|pipe| {
                let pool = pool.clone();
                async move {
                    let mut conn = pool.get().await.map_err(redis_err)?;
                    pipe.query_async::<Vec<Vec<(String, f64)>>>(&mut conn)
                        .await
                        .map_err(redis_err)
                }
            }))
            .await;
            let mut tops = Vec::new();
            for answer in answers {
                tops.extend(answer?);
            }
            let mut tops = tops.into_iter();
            let mut out = Vec::new();
            for game in msg.game_ids {
                for period in Period::ALL {
                    let entries = tops.next().unwrap_or_default();
                    out.push(BoardTop {
                        game_id: game.clone(),
                        period,
                        // Sorted-set scores are doubles; ours are integer sums well inside 2^53.
                        entries: entries.into_iter().map(|(p, s)| (p, s as i64)).collect(),
                    });
                }
            }
            Ok(out)
        })
    }
}

/// The retry check shared by every script: `first(field, bucket, off)` is true unless the event
/// id `field` (16 bytes; empty: no check) was already claimed by a different sighting. A claim
/// records where the id was first seen (ARGV[2], the partition's tag `log:partition:`, then the
/// offset `off`, as given); claiming again from the same place (a replay after a crash) still
/// answers true, so a replayed first sighting is counted exactly once by the offset guard.
///
/// Claims live in hashes, a generation (DEDUP_WINDOW_SECS) at a time, each generation spread over
/// DEDUP_BUCKETS buckets by the id's first bytes (`bucket`, from `RedisKeys::claim_bucket`):
/// ARGV[1] and ARGV[3] are this and the previous generation's prefixes, ARGV[4] when this
/// generation's hashes expire. A hash of under 128 short fields is a compact listpack, ~42
/// bytes a claim where a key of its own took ~210. A claim found only in the previous
/// generation is copied into this one: a sighting renews it, so a lane that asks later (the
/// stats PostgreSQL lane after a restart) still finds the claim the others relied on.
macro_rules! claim_fn {
    () => {
        r#"
local function first(field, bucket, off)
  if field == '' then return true end
  local cur = ARGV[1] .. bucket
  local pos = ARGV[2] .. off
  local seen
  -- A first sighting is the common case: HSETNX claims it in one call where HGET then HSET took
  -- two (a claim already here costs one more call, which only a retry or a replay pays).
  if redis.call('HSETNX', cur, field, pos) == 0 then
    seen = redis.call('HGET', cur, field)
  else
    seen = redis.call('HGET', ARGV[3] .. bucket, field)
    if seen then redis.call('HSET', cur, field, seen) end
    redis.call('EXPIREAT', cur, ARGV[4], 'NX')
  end
  if not seen then return true end
  return seen == pos
end
"#
    };
}

/// The offset guard around a guarded script's loop: `applied` is where the partition (or, on a
/// cluster, this player or game in it) stands, a record at or above it is new, `nxt` is where it
/// will stand. The guard is KEYS[1], a string; or, when ARGV[5] is not empty, that field of the
/// hash KEYS[1].
macro_rules! guard_open {
    () => {
        r#"
local function guard_get()
  if ARGV[5] == '' then return redis.call('GET', KEYS[1]) end
  return redis.call('HGET', KEYS[1], ARGV[5])
end
local applied = tonumber(guard_get() or '0')
local nxt, n = applied, 0
"#
    };
}

/// Moves the guard past the records the loop saw (see `guard_open!`). It is written even when
/// it doesn't move: a write is what a following WAIT waits for, and a replay that found the
/// batch applied must still wait until the replicas hold what the first run wrote.
macro_rules! guard_close {
    () => {
        r#"
if ARGV[5] == '' then redis.call('SET', KEYS[1], nxt) else redis.call('HSET', KEYS[1], ARGV[5], nxt) end
"#
    };
}

/// ARGV: the four claim arguments, the guard's field, what comes before and after a player id
/// in its stats key, then per event: offset, claim bucket, claim field, player_id, the stats
/// field of its type (`event_` + event_type), timestamp.
/// Answers {counted, first offset checked, number refused, the refused offsets..., the retries'
/// offsets...}: the stats PostgreSQL lane reuses these answers instead of asking again.
///
/// A key something else wrote with another type would fail the script halfway (WRONGTYPE), with
/// half the batch counted and the guard unmoved, so a retry would count that half again: such
/// keys are found before anything is written to them (a pcall'd read at a player's first event
/// in the call), and their events are left out and answered as refused (they are dead-lettered).
/// A field of our hash overwritten with a non-integer is not checked for (a check per field
/// would cost as much as the increments): its HINCRBY fails the call, which is retried.
const STATS_LUA: &str = concat!(
    claim_fn!(),
    guard_open!(),
    r#"
-- A key's type is checked at its first touch in the call, by reading its `last_event` with
-- pcall (WRONGTYPE is answered, not raised) before its claim: nothing else in the call can change
-- it. `last[key]` keeps that field for the rest of the call (false: refused), so a player's
-- later events compare against it without another read. Increments are strings: Lua would
-- `sprintf` a number.
local pre, post = ARGV[6], ARGV[7]
local last, refused, retries = {}, {}, {}
for i = 8, #ARGV, 6 do
  local off = tonumber(ARGV[i])
  if off >= applied then
    local key = pre .. ARGV[i + 3] .. post
    local seen = last[key]
    if seen == nil then
      local got = redis.pcall('HGET', key, 'last_event')
      if type(got) == 'table' then seen = false else seen = got or '' end
      last[key] = seen
    end
    if seen == false then
      refused[#refused + 1] = off
    elseif not first(ARGV[i + 2], ARGV[i + 1], ARGV[i]) then
      retries[#retries + 1] = off
    else
      redis.call('HINCRBY', key, 'total_events', '1')
      redis.call('HINCRBY', key, ARGV[i + 4], '1')
      local ts = ARGV[i + 5]
      if ts > seen then
        redis.call('HSET', key, 'last_event', ts)
        last[key] = ts
      end
      n = n + 1
    end
    if off + 1 > nxt then nxt = off + 1 end
  end
end
"#,
    guard_close!(),
    r#"
local out = { n, applied, #refused }
for _, off in ipairs(refused) do out[#out + 1] = off end
for _, off in ipairs(retries) do out[#out + 1] = off end
return out
"#
);

/// KEYS: the log's offset key, the partition's offset key from before offsets were kept per
/// log, and the key naming the partition's last log. ARGV: the log, its end offset. Answers
/// {state, applied offset of this log, the log it replaces ('' if none), that log's offset}.
/// A legacy offset is adopted only if no log was named since and this log has reached it.
const OPEN_LUA: &str = r#"
local stored = redis.call('GET', KEYS[1])
local prev = redis.call('GET', KEYS[3])
redis.call('SET', KEYS[3], ARGV[1])
if stored then return { 'known', tonumber(stored), '', 0 } end
if prev == ARGV[1] then return { 'known', 0, '', 0 } end
local legacy = redis.call('GET', KEYS[2])
if legacy and not prev and tonumber(legacy) <= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], legacy)
  redis.call('DEL', KEYS[2])
  return { 'adopted', tonumber(legacy), '', 0 }
end
if prev then return { 'new', 0, prev, tonumber(redis.call('GET', KEYS[2] .. ':' .. prev) or '0') } end
if legacy then return { 'new', 0, 'from before topic ids', tonumber(legacy) } end
return { 'new', 0, '', 0 }
"#;

/// KEYS[1]: the guard of the claims' player (it routes the call to their slot). ARGV: the four
/// claim arguments, the guard's field (unused), then per event: offset, claim bucket, claim
/// field. Returns the retries' offsets.
const CLAIM_LUA: &str = concat!(
    claim_fn!(),
    r#"
local retries = {}
for i = 6, #ARGV, 3 do
  if not first(ARGV[i + 2], ARGV[i + 1], ARGV[i]) then retries[#retries + 1] = tonumber(ARGV[i]) end
end
return retries
"#
);

/// ARGV: the four claim arguments, the guard's field, the server's current day and ISO week, the
/// board key suffixes of daily, weekly and alltime, the dated-board separator and the
/// current-marker suffix, then per event: offset, claim bucket, claim field, the game's board
/// base key, player, score, day, week, day expiry, week expiry. Answers {scored, the refused
/// offsets...}. `…:daily` is the board of the newest day seen that is not ahead of the
/// server's clock (a client clock running fast must not end today early), named by its marker
/// (`…:daily:current`), and carries that day's expiry; an event of that day is counted there
/// only. Other days' events go to their dated boards
/// (`…:daily:2024-01-15`), which keep past periods until their retention ends. When the current
/// day moves on, its board is renamed to its dated key (expiry and all) and the new day's board
/// starts as its dated board if events arrived for it early, else empty. A current board
/// without an expiry was written when every event also went to the dated board of its day,
/// which is then whole: it is dropped instead. Readers of the dated board of the current day
/// read the current board (`http::query::boards`).
const SCORES_LUA: &str = concat!(
    claim_fn!(),
    guard_open!(),
    r#"
local server = { ARGV[6], ARGV[7] }
local suffix = { ARGV[8], ARGV[9] }
local alltime, sep, marker_suffix = ARGV[10], ARGV[11], ARGV[12]
-- Within one call, a board's expiry is set once and a marker is read once: at thousands of
-- events per call that is a third of the commands.
local expiry_set, markers = {}, {}
local now
local function clock()
  if now == nil then now = tonumber(redis.call('TIME')[1]) end
  return now
end
-- A game's key names are built once per call, not per event: a call's thousands of events
-- name ~50 games, and every concatenation makes Lua hash and intern a new string.
local names = {}
local function names_of(base)
  local g = names[base]
  if g == nil then
    g = { alltime = base .. alltime, current = {}, marker = {}, dated = {} }
    for k = 1, 2 do
      g.current[k] = base .. suffix[k]
      g.marker[k] = g.current[k] .. marker_suffix
      g.dated[k] = {}
    end
    names[base] = g
  end
  return g
end
local function dated_of(g, k, stamp)
  local d = g.dated[k][stamp]
  if d == nil then
    d = g.current[k] .. sep .. stamp
    g.dated[k][stamp] = d
  end
  return d
end
-- Keys something else wrote with another type are found before anything is written (see the
-- stats script): their events are left out and answered as refused. A game costs three TYPEs a
-- call (its all-time and current boards); a dated board is checked only if an event of another
-- period may write it, and a marker is read with pcall, which answers WRONGTYPE instead of failing.
local kinds, refused, skip = {}, {}, {}
local function is(key, want)
  local ok = kinds[key]
  if ok == nil then
    local t = redis.call('TYPE', key)['ok']
    ok = t == 'none' or t == want
    kinds[key] = ok
  end
  return ok
end
local BAD = {}
local function marker_of(g, k)
  local marker = g.marker[k]
  local cur = markers[marker]
  if cur == nil then
    cur = redis.pcall('GET', marker)
    if type(cur) == 'table' then cur = BAD end
    markers[marker] = cur
  end
  return cur
end
for i = 13, #ARGV, 10 do
  local off = tonumber(ARGV[i])
  if off >= applied then
    local g = names_of(ARGV[i + 3])
    local ok = is(g.alltime, 'zset')
    for k = 1, 2 do
      local cur, stamp = marker_of(g, k), ARGV[i + 5 + k]
      ok = ok and cur ~= BAD and is(g.current[k], 'zset')
      if ok and stamp ~= cur then
        ok = is(dated_of(g, k, stamp), 'zset')
        -- A rollover (below) sends this call's later events of the ending period to its dated
        -- board, which it renames the current board over, unless there is no current board to
        -- rename (or an old one it drops): then that dated board is written as it is.
        if ok and cur and stamp <= server[k] and stamp > cur and redis.call('PTTL', g.current[k]) < 0 then
          ok = is(dated_of(g, k, cur), 'zset')
        end
      end
    end
    if not ok then
      refused[#refused + 1] = off
      skip[off] = true
    end
  end
end
for i = 13, #ARGV, 10 do
  local off = tonumber(ARGV[i])
  if off >= applied and not skip[off] and first(ARGV[i + 2], ARGV[i + 1], ARGV[i]) then
    local g, player, score = names_of(ARGV[i + 3]), ARGV[i + 4], ARGV[i + 5]
    redis.call('ZINCRBY', g.alltime, score, player)
    for k = 1, 2 do
      local current, stamp, expires = g.current[k], ARGV[i + 5 + k], ARGV[i + 7 + k]
      local marker = g.marker[k]
      local cur = markers[marker]
      local board = current
      if stamp <= server[k] and ((not cur) or stamp > cur) then
        -- The current period ends: its board becomes its dated one (see above).
        local ttl = cur and redis.call('PTTL', current) or -1
        if ttl >= 0 then
          redis.call('RENAME', current, dated_of(g, k, cur))
        elseif ttl == -1 then
          redis.call('DEL', current)
        end
        redis.call('SET', marker, stamp)
        markers[marker] = stamp
        local early = dated_of(g, k, stamp)
        if redis.call('EXISTS', early) == 1 then redis.call('RENAME', early, current) end
        expiry_set[current] = nil
      elseif stamp ~= cur then
        board = dated_of(g, k, stamp)
      end
      redis.call('ZINCRBY', board, score, player)
      -- A board's expiry is a function of its period: set once per call. A board past its
      -- retention is deleted by it, so it is set again on its next event; only an expiry within
      -- a second of the clock needs asking whether it deleted the board.
      if not expiry_set[board] then
        redis.call('EXPIREAT', board, expires)
        expiry_set[board] = tonumber(expires) > clock() + 1 or redis.call('EXISTS', board) == 1
      end
    end
    n = n + 1
  end
  if off >= applied and off + 1 > nxt then nxt = off + 1 end
end
"#,
    guard_close!(),
    r#"
local out = { n }
for _, off in ipairs(refused) do out[#out + 1] = off end
return out
"#
);

/// KEYS[1]: a partition's offset on a cluster. ARGV[1]: how far a batch's calls applied it.
/// Moves it forward only: batches of a partition may finish out of order after a retry.
const ADVANCE_LUA: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
"#;
