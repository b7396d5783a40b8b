//! `RedisSink`: live stats (DB 0) and leaderboards (DB 1), applied exactly once by Lua scripts
//! that check and move the partition's offset in the same atomic step as the increments.
//!
//! The scripts touch keys they compute from their arguments, which a single Redis (or a primary
//! with replicas, as ElastiCache without cluster mode) allows; Redis Cluster would need hash tags.

use super::postgres::BoardTop;
use super::{tracked, LogState, SinkError, Tracked};
use crate::actors::messages::Position;
use crate::db::RedisPool;
use actix::prelude::*;
use redis::Script;
use std::sync::Arc;

/// Writes to and reads from Redis for all role actors of this process.
pub struct RedisSink {
    stats: RedisPool,
    boards: RedisPool,
    prefix: Arc<str>,
    stats_script: Arc<Script>,
    scores_script: Arc<Script>,
    claim_script: Arc<Script>,
    open_script: Arc<Script>,
    /// DEDUP_WINDOW_SECS; 0 when client retries are not deduplicated.
    dedup_window_secs: u64,
    failures: u32,
}

impl RedisSink {
    /// A sink over the stats (DB 0) and leaderboard (DB 1) pools, with every key under `prefix`,
    /// remembering event ids for `dedup_window_secs` (0: not at all).
    pub fn new(stats: RedisPool, boards: RedisPool, prefix: &str, dedup_window_secs: u64) -> Self {
        RedisSink {
            stats,
            boards,
            prefix: prefix.into(),
            stats_script: Arc::new(Script::new(STATS_LUA)),
            scores_script: Arc::new(Script::new(SCORES_LUA)),
            claim_script: Arc::new(Script::new(CLAIM_LUA)),
            open_script: Arc::new(Script::new(OPEN_LUA)),
            dedup_window_secs,
            failures: 0,
        }
    }

    /// The key a script claims for an event id, `{prefix}gamemetrics:seen:{id}`; empty (no
    /// claim) when deduplication is off. Built here rather than in Lua, where every
    /// concatenation is one more string to hash and intern per event.
    fn claim_id(&self, id: uuid::Uuid) -> String {
        if self.dedup_window_secs > 0 {
            format!("{}gamemetrics:seen:{}", self.prefix, id.simple())
        } else {
            String::new()
        }
    }

    /// Where a partition's offsets were kept before they were kept per log; the key of the
    /// log's own offset is this, `:`, and the log.
    fn legacy_offset_key(&self, p: &Position) -> String {
        format!(
            "{}gamemetrics:offsets:{}:{}:{}",
            self.prefix, p.service, p.topic, p.partition
        )
    }

    fn offset_key(&self, p: &Position) -> String {
        format!("{}:{}", self.legacy_offset_key(p), p.log)
    }

    /// Names the log a partition was last opened on, so a start-over can say what it left.
    fn log_key(&self, p: &Position) -> String {
        format!(
            "{}gamemetrics:log:{}:{}:{}",
            self.prefix, p.service, p.topic, p.partition
        )
    }
}

impl Actor for RedisSink {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(256);
    }
}

impl Tracked for RedisSink {
    const STORE: &'static str = "Redis";
    fn failures(&mut self) -> &mut u32 {
        &mut self.failures
    }
}

impl Supervised for RedisSink {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!("Redis sink restarting");
        self.failures = 0;
    }
}

fn redis_err(e: impl std::fmt::Display) -> SinkError {
    SinkError::Redis(e.to_string())
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
}

impl redis::FromRedisValue for StatsApplied {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        let all: Vec<i64> = redis::FromRedisValue::from_redis_value(v)?;
        match all.as_slice() {
            [applied, checked_from, retries @ ..] => Ok(StatsApplied {
                applied: usize::try_from(*applied).unwrap_or(0),
                checked_from: *checked_from,
                retries: retries.to_vec(),
            }),
            _ => Err("the stats script answers at least two integers".into()),
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
}

/// Apply score deltas to Redis DB 1, skipping offsets already applied. Answers how many applied.
#[derive(Message)]
#[rtype(result = "Result<usize, SinkError>")]
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
    /// (offset, event_id)
    pub items: Vec<(i64, uuid::Uuid)>,
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
/// partition's current log (see [`super::postgres::OpenLog`]).
#[derive(Message)]
#[rtype(result = "Result<LogState, SinkError>")]
pub struct OpenLog {
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

/// The periods each game has a board for; `daily` and `weekly` are the newest day and week.
pub const PERIODS: [&str; 3] = ["daily", "weekly", "alltime"];

impl RedisSink {
    /// Runs one of the offset-guarded scripts: KEYS[1] is the partition's offset key, ARGV the
    /// key prefix, the dedup window, the partition's claim tag, then whatever `fill` adds.
    fn apply_guarded<T: redis::FromRedisValue + 'static>(
        &mut self,
        pool: RedisPool,
        script: Arc<Script>,
        position: &Position,
        fill: impl for<'a> FnOnce(&mut redis::ScriptInvocation<'a>) + 'static,
    ) -> ResponseActFuture<Self, Result<T, SinkError>> {
        let (key, prefix) = (self.offset_key(position), self.prefix.clone());
        let (window, tag) = (self.dedup_window_secs, claim_tag(position));
        tracked(self, async move {
            let mut invocation = script.key(key);
            invocation.arg(prefix.as_ref()).arg(window).arg(tag);
            fill(&mut invocation);
            let mut conn = pool.get().await.map_err(redis_err)?;
            invocation.invoke_async::<T>(&mut *conn).await.map_err(redis_err)
        })
    }
}

impl Handler<ApplyStats> for RedisSink {
    type Result = ResponseActFuture<Self, Result<StatsApplied, SinkError>>;

    fn handle(&mut self, msg: ApplyStats, _: &mut Context<Self>) -> Self::Result {
        let (pool, script) = (self.stats.clone(), self.stats_script.clone());
        let ids: Vec<String> = msg.deltas.iter().map(|d| self.claim_id(d.event_id)).collect();
        self.apply_guarded(pool, script, &msg.position, move |inv| {
            for (d, id) in msg.deltas.iter().zip(ids) {
                inv.arg(d.offset)
                    .arg(id)
                    .arg(&d.player_id)
                    .arg(&d.event_type)
                    .arg(&d.timestamp);
            }
        })
    }
}

impl Handler<ApplyScores> for RedisSink {
    type Result = ResponseActFuture<Self, Result<usize, SinkError>>;

    fn handle(&mut self, msg: ApplyScores, _: &mut Context<Self>) -> Self::Result {
        let (pool, script) = (self.boards.clone(), self.scores_script.clone());
        let (today, _, this_week, _) = crate::actors::leaderboard::periods_of(chrono::Utc::now(), 0);
        let ids: Vec<String> = msg.deltas.iter().map(|d| self.claim_id(d.event_id)).collect();
        self.apply_guarded(pool, script, &msg.position, move |inv| {
            inv.arg(today).arg(this_week);
            for (d, id) in msg.deltas.iter().zip(ids) {
                inv.arg(d.offset)
                    .arg(id)
                    .arg(&d.game_id)
                    .arg(&d.player_id)
                    .arg(d.score)
                    .arg(&d.day)
                    .arg(&d.week)
                    .arg(d.day_expires_at)
                    .arg(d.week_expires_at);
            }
        })
    }
}

impl Handler<OpenLog> for RedisSink {
    type Result = ResponseActFuture<Self, Result<LogState, SinkError>>;

    fn handle(&mut self, msg: OpenLog, _: &mut Context<Self>) -> Self::Result {
        let pool = match msg.db {
            LiveDb::Stats => self.stats.clone(),
            LiveDb::Boards => self.boards.clone(),
        };
        let p = msg.position;
        let keys = [self.offset_key(&p), self.legacy_offset_key(&p), self.log_key(&p)];
        let script = self.open_script.clone();
        tracked(self, async move {
            let mut conn = pool.get().await.map_err(redis_err)?;
            let (state, stored, old_log, old_next): (String, i64, String, i64) = script
                .key(&keys[..])
                .arg(p.log.as_ref())
                .arg(msg.log_end)
                .invoke_async(&mut *conn)
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

impl Handler<ClaimFirst> for RedisSink {
    type Result = ResponseActFuture<Self, Result<Vec<i64>, SinkError>>;

    fn handle(&mut self, msg: ClaimFirst, _: &mut Context<Self>) -> Self::Result {
        let (pool, script, prefix) = (self.stats.clone(), self.claim_script.clone(), self.prefix.clone());
        let (window, tag) = (self.dedup_window_secs, claim_tag(&msg.position));
        let keys: Vec<String> = msg.items.iter().map(|(_, id)| self.claim_id(*id)).collect();
        tracked(self, async move {
            if window == 0 || msg.items.is_empty() {
                return Ok(Vec::new());
            }
            let mut invocation = script.arg(prefix.as_ref());
            invocation.arg(window).arg(tag);
            for ((offset, _), key) in msg.items.iter().zip(keys) {
                invocation.arg(*offset).arg(key);
            }
            let mut conn = pool.get().await.map_err(redis_err)?;
            invocation
                .invoke_async::<Vec<i64>>(&mut *conn)
                .await
                .map_err(redis_err)
        })
    }
}

/// What a claim records as the first sighting of an event id: `log:partition:` + offset.
/// Duplicates share a partition (the key is the player), and every lane reads a partition in
/// order, so whichever lane claims first records the lowest offset and all lanes agree. The log
/// is part of it because offsets repeat across logs: with the topic's name alone, an id claimed
/// at offset 7 of a deleted topic and seen again at offset 7 of its successor would look like a
/// replay of its first sighting and count twice. An id claimed on an earlier log is a retry on
/// the new one, as `events` (keyed by the id alone) also says: see docs/decisions.md.
fn claim_tag(p: &Position) -> String {
    format!("{}:{}:", p.log, p.partition)
}

impl Handler<ReadTop> for RedisSink {
    type Result = ResponseActFuture<Self, Result<Vec<BoardTop>, SinkError>>;

    fn handle(&mut self, msg: ReadTop, _: &mut Context<Self>) -> Self::Result {
        let pool = self.boards.clone();
        let prefix = self.prefix.clone();
        tracked(self, async move {
            let mut conn = pool.get().await.map_err(redis_err)?;
            let stop = isize::try_from(msg.n).unwrap_or(isize::MAX) - 1;
            let mut pipe = redis::pipe();
            for game in &msg.game_ids {
                for period in PERIODS {
                    pipe.zrevrange_withscores(board_key(&prefix, game, period), 0, stop);
                }
            }
            let tops: Vec<Vec<(String, f64)>> = pipe.query_async(&mut *conn).await.map_err(redis_err)?;
            let mut tops = tops.into_iter();
            let mut out = Vec::new();
            for game in msg.game_ids {
                for period in PERIODS {
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

/// The Redis key of a game's current board for a period: `leaderboard:{game_id}:{period}`.
pub fn board_key(prefix: &str, game_id: &str, period: &str) -> String {
    format!("{prefix}leaderboard:{game_id}:{period}")
}

/// The retry check shared by every script: `first(key, offset)` is true unless the event id's
/// claim `key` (empty: no check) was already taken by a different sighting. The claim stores
/// where the id was first seen (`log:partition:offset`) for ARGV[2] seconds; claiming again from
/// the same place (a replay after a crash) still answers true, so a replayed first sighting is
/// counted exactly once by the offset guard. Every later sighting renews the window, so a lane
/// that asks later (the stats PostgreSQL lane after a restart) still finds the claim the others
/// relied on. ARGV[3] is the partition's claim tag, `log:partition:`.
macro_rules! claim_fn {
    () => {
        r#"
local function first(key, off)
  if key == '' then return true end
  local pos = ARGV[3] .. off
  local prev = redis.call('SET', key, pos, 'NX', 'GET', 'EX', ARGV[2])
  if not prev then return true end
  redis.call('EXPIRE', key, ARGV[2])
  return prev == pos
end
"#
    };
}

/// ARGV: prefix, window, claim tag, then per event: offset, claim key, player_id, event_type,
/// timestamp.
/// Answers {counted, first offset checked, retry offsets...}: the stats PostgreSQL lane reuses
/// these answers instead of asking again.
const STATS_LUA: &str = concat!(
    claim_fn!(),
    r#"
local applied = tonumber(redis.call('GET', KEYS[1]) or '0')
local prefix = ARGV[1]
local nxt, n = applied, 0
local out = { 0, applied }
for i = 4, #ARGV, 5 do
  local off = tonumber(ARGV[i])
  if off >= applied then
    if not first(ARGV[i + 1], ARGV[i]) then
      out[#out + 1] = off
    else
      local key = prefix .. 'player_stats:' .. ARGV[i + 2]
      redis.call('HINCRBY', key, 'total_events', 1)
      redis.call('HINCRBY', key, 'event_' .. ARGV[i + 3], 1)
      local last = redis.call('HGET', key, 'last_event')
      if (not last) or ARGV[i + 4] > last then redis.call('HSET', key, 'last_event', ARGV[i + 4]) end
      n = n + 1
    end
    if off + 1 > nxt then nxt = off + 1 end
  end
end
if nxt > applied then redis.call('SET', KEYS[1], nxt) end
out[1] = n
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

/// ARGV: prefix (unused), window, claim tag, then per event: offset, claim key. Returns the
/// retries' offsets.
const CLAIM_LUA: &str = concat!(
    claim_fn!(),
    r#"
local retries = {}
for i = 4, #ARGV, 2 do
  if not first(ARGV[i + 1], ARGV[i]) then retries[#retries + 1] = tonumber(ARGV[i]) end
end
return retries
"#
);

/// ARGV: prefix, window, claim tag, the server's current day and ISO week, then per event:
/// offset, claim key, game, player, score, day, week, day expiry, week expiry. The dated boards (`…:daily:2024-01-15`) keep past
/// periods until their retention ends; `…:daily` is the board of the newest day seen that is not
/// ahead of the server's clock (a client clock running fast must not end today early). When it
/// moves to a newer day it starts as that day's dated board, which already holds this event and
/// any that arrived early; a dated board already past retention is gone, so then it starts with
/// this event alone.
const SCORES_LUA: &str = concat!(
    claim_fn!(),
    r#"
local applied = tonumber(redis.call('GET', KEYS[1]) or '0')
local prefix = ARGV[1]
local server = { daily = ARGV[4], weekly = ARGV[5] }
local nxt, n = applied, 0
for i = 6, #ARGV, 9 do
  local off = tonumber(ARGV[i])
  if off >= applied and first(ARGV[i + 1], ARGV[i]) then
    local j = i + 1
    local base = prefix .. 'leaderboard:' .. ARGV[j + 1]
    local player, score = ARGV[j + 2], ARGV[j + 3]
    redis.call('ZINCRBY', base .. ':alltime', score, player)
    local periods = { { 'daily', ARGV[j + 4], ARGV[j + 6] }, { 'weekly', ARGV[j + 5], ARGV[j + 7] } }
    for _, p in ipairs(periods) do
      local current, stamp, expires = base .. ':' .. p[1], p[2], p[3]
      local dated = current .. ':' .. stamp
      redis.call('ZINCRBY', dated, score, player)
      redis.call('EXPIREAT', dated, expires)
      local marker = current .. ':current'
      local cur = redis.call('GET', marker)
      if stamp <= server[p[1]] and ((not cur) or stamp > cur) then
        redis.call('SET', marker, stamp)
        if redis.call('EXISTS', dated) == 1 then
          redis.call('ZUNIONSTORE', current, 1, dated)
        else
          redis.call('DEL', current)
          redis.call('ZINCRBY', current, score, player)
        end
      elseif stamp == cur then
        redis.call('ZINCRBY', current, score, player)
      end
    end
    n = n + 1
  end
  if off >= applied and off + 1 > nxt then nxt = off + 1 end
end
if nxt > applied then redis.call('SET', KEYS[1], nxt) end
return n
"#
);
