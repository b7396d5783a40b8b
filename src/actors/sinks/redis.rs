//! `RedisSink`: live stats (DB 0) and leaderboards (DB 1), applied exactly once by Lua scripts
//! that check and move the partition's offset in the same atomic step as the increments.
//!
//! The scripts touch keys they compute from their arguments, which a single Redis (or a primary
//! with replicas, as ElastiCache without cluster mode) allows; Redis Cluster would need hash tags.
//! Every key, or the prefix and suffixes a script completes one with, comes from
//! [`crate::db::redis_keys`].

use super::{sink_actor, tracked, SinkError};
use crate::actors::messages::*;
use crate::db::redis_keys::{self, RedisKeys};
use crate::db::RedisPool;
use crate::domain::leaderboard::{periods_of, Board, BoardTop, Period};
use actix::prelude::*;
use redis::Script;
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
    /// DEDUP_WINDOW_SECS; 0 when client retries are not deduplicated.
    dedup_window_secs: u64,
    /// DEDUP_BUCKETS: hashes one generation of claims is spread over.
    claim_buckets: u32,
    failures: u32,
}

/// DEDUP_BUCKETS' default, for sinks built without a configuration (tests).
const DEFAULT_CLAIM_BUCKETS: u32 = 1 << 19;

impl RedisSink {
    /// A sink over the stats (DB 0) and leaderboard (DB 1) pools, with every key under `prefix`,
    /// remembering event ids for `dedup_window_secs` (0: not at all).
    pub fn new(stats: RedisPool, boards: RedisPool, prefix: &str, dedup_window_secs: u64) -> Self {
        RedisSink {
            stats,
            boards,
            keys: RedisKeys::new(prefix),
            stats_script: Arc::new(Script::new(STATS_LUA)),
            scores_script: Arc::new(Script::new(SCORES_LUA)),
            claim_script: Arc::new(Script::new(CLAIM_LUA)),
            open_script: Arc::new(Script::new(OPEN_LUA)),
            dedup_window_secs,
            claim_buckets: DEFAULT_CLAIM_BUCKETS,
            failures: 0,
        }
    }

    /// Spreads each generation of retry claims over `buckets` hashes (DEDUP_BUCKETS).
    pub fn with_claim_buckets(mut self, buckets: u32) -> Self {
        self.claim_buckets = buckets.clamp(1, 1 << 24);
        self
    }

    /// What a script claims an event id by: its 16 bytes, the field of a claims hash; empty (no
    /// claim) when deduplication is off.
    fn claim_field(&self, scoped_id: uuid::Uuid) -> Vec<u8> {
        if self.dedup_window_secs > 0 {
            scoped_id.as_bytes().to_vec()
        } else {
            Vec::new()
        }
    }

    /// The arguments every claiming script starts with (see `claim_fn!`): this and the previous
    /// generation's claims-hash prefixes, when this generation's hashes expire, the bucket
    /// count. A generation is DEDUP_WINDOW_SECS long and its hashes live until the end of the
    /// next one, so a claim is kept for one to two windows.
    fn claim_args(&self) -> (String, String, u64, u32) {
        let window = self.dedup_window_secs.max(1);
        let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
        let generation = now / window;
        (
            self.keys.claims_of(generation),
            self.keys.claims_of(generation.saturating_sub(1)),
            (generation + 2) * window,
            self.claim_buckets,
        )
    }
}

sink_actor!(RedisSink, "Redis");

fn redis_err(e: impl std::fmt::Display) -> SinkError {
    SinkError::Redis(e.to_string())
}

impl RedisSink {
    /// Runs one of the offset-guarded scripts: KEYS[1] is the partition's offset key, ARGV the
    /// claim arguments (`claim_fn!`), then whatever `fill` adds.
    fn apply_guarded<T: redis::FromRedisValue + 'static>(
        &mut self,
        pool: RedisPool,
        script: Arc<Script>,
        position: &Position,
        fill: impl for<'a> FnOnce(&mut redis::ScriptInvocation<'a>) + 'static,
    ) -> ResponseActFuture<Self, Result<T, SinkError>> {
        let key = self.keys.offsets(position.partition_log());
        let (claims, tag) = (self.claim_args(), claim_tag(position));
        tracked(self, async move {
            let mut invocation = script.key(key);
            invocation
                .arg(claims.0)
                .arg(tag)
                .arg(claims.1)
                .arg(claims.2)
                .arg(claims.3);
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
        let ids: Vec<Vec<u8>> = msg.deltas.iter().map(|d| self.claim_field(d.event_id)).collect();
        let stats_prefix = self.keys.player_stats_prefix();
        self.apply_guarded(pool, script, &msg.position, move |inv| {
            inv.arg(stats_prefix);
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
        let now = periods_of(chrono::Utc::now(), 0);
        let ids: Vec<Vec<u8>> = msg.deltas.iter().map(|d| self.claim_field(d.event_id)).collect();
        let bases: Vec<String> = msg
            .deltas
            .iter()
            .map(|d| self.keys.board_base(&d.game_id))
            .collect();
        self.apply_guarded(pool, script, &msg.position, move |inv| {
            inv.arg(now.day).arg(now.week);
            for period in Period::ALL {
                inv.arg(RedisKeys::period_suffix(period));
            }
            inv.arg(redis_keys::DATED_SEPARATOR)
                .arg(redis_keys::CURRENT_MARKER_SUFFIX);
            for ((d, id), base) in msg.deltas.iter().zip(ids).zip(bases) {
                inv.arg(d.offset)
                    .arg(id)
                    .arg(base)
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
        let (pool, script) = (self.stats.clone(), self.claim_script.clone());
        let (window, tag, claims) = (
            self.dedup_window_secs,
            claim_tag(&msg.position),
            self.claim_args(),
        );
        let keys: Vec<Vec<u8>> = msg.items.iter().map(|(_, id)| self.claim_field(*id)).collect();
        tracked(self, async move {
            if window == 0 || msg.items.is_empty() {
                return Ok(Vec::new());
            }
            let mut invocation = script.arg(claims.0);
            invocation.arg(tag).arg(claims.1).arg(claims.2).arg(claims.3);
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
        let mut pipe = redis::pipe();
        let stop = isize::try_from(msg.n).unwrap_or(isize::MAX) - 1;
        for game in &msg.game_ids {
            for period in Period::ALL {
                pipe.zrevrange_withscores(self.keys.board(game, &Board::Current(period)), 0, stop);
            }
        }
        tracked(self, async move {
            let mut conn = pool.get().await.map_err(redis_err)?;
            let tops: Vec<Vec<(String, f64)>> = pipe.query_async(&mut *conn).await.map_err(redis_err)?;
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

/// The retry check shared by every script: `first(field, offset)` is true unless the event id
/// `field` (16 bytes; empty: no check) was already claimed by a different sighting. A claim
/// records where the id was first seen (ARGV[2], the partition's tag `log:partition:`, then the
/// offset); claiming again from the same place (a replay after a crash) still answers true, so a
/// replayed first sighting is counted exactly once by the offset guard.
///
/// Claims live in hashes, a generation (DEDUP_WINDOW_SECS) at a time, each generation spread over
/// ARGV[5] buckets by the id's first bytes: ARGV[1] and ARGV[3] are this and the previous
/// generation's prefixes, ARGV[4] when this generation's hashes expire. A hash of under 128
/// short fields is a compact listpack, ~42 bytes a claim where a key of its own took ~210. A
/// claim found only in the previous generation is copied into this one: a sighting renews it,
/// so a lane that asks later (the stats PostgreSQL lane after a restart) still finds the claim
/// the others relied on.
macro_rules! claim_fn {
    () => {
        r#"
local BUCKETS = tonumber(ARGV[5])
local function first(field, off)
  if field == '' then return true end
  local b1, b2, b3 = string.byte(field, 1, 3)
  local bucket = (b1 * 65536 + b2 * 256 + b3) % BUCKETS
  local cur = ARGV[1] .. bucket
  local pos = ARGV[2] .. off
  local seen = redis.call('HGET', cur, field)
  if not seen then
    seen = redis.call('HGET', ARGV[3] .. bucket, field)
    redis.call('HSET', cur, field, seen or pos)
    redis.call('EXPIREAT', cur, ARGV[4], 'NX')
  end
  if not seen then return true end
  return seen == pos
end
"#
    };
}

/// The offset guard around a guarded script's loop: `applied` is where the partition stands,
/// a record at or above it is new, `nxt` is where it will stand; KEYS[1] is its offset key.
macro_rules! guard_open {
    () => {
        r#"
local applied = tonumber(redis.call('GET', KEYS[1]) or '0')
local nxt, n = applied, 0
"#
    };
}

/// Moves the partition's offset past the records the loop saw (see `guard_open!`).
macro_rules! guard_close {
    () => {
        r#"
if nxt > applied then redis.call('SET', KEYS[1], nxt) end
"#
    };
}

/// ARGV: the five claim arguments, the stats key prefix, then per event: offset, claim field,
/// player_id, event_type, timestamp. Answers {counted, first offset checked, retry offsets...}: the stats
/// PostgreSQL lane reuses these answers instead of asking again.
const STATS_LUA: &str = concat!(
    claim_fn!(),
    guard_open!(),
    r#"
local out = { 0, applied }
for i = 7, #ARGV, 5 do
  local off = tonumber(ARGV[i])
  if off >= applied then
    if not first(ARGV[i + 1], ARGV[i]) then
      out[#out + 1] = off
    else
      local key = ARGV[6] .. ARGV[i + 2]
      redis.call('HINCRBY', key, 'total_events', 1)
      redis.call('HINCRBY', key, 'event_' .. ARGV[i + 3], 1)
      local last = redis.call('HGET', key, 'last_event')
      if (not last) or ARGV[i + 4] > last then redis.call('HSET', key, 'last_event', ARGV[i + 4]) end
      n = n + 1
    end
    if off + 1 > nxt then nxt = off + 1 end
  end
end
"#,
    guard_close!(),
    r#"
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

/// ARGV: the five claim arguments, then per event: offset, claim field. Returns the retries'
/// offsets.
const CLAIM_LUA: &str = concat!(
    claim_fn!(),
    r#"
local retries = {}
for i = 6, #ARGV, 2 do
  if not first(ARGV[i + 1], ARGV[i]) then retries[#retries + 1] = tonumber(ARGV[i]) end
end
return retries
"#
);

/// ARGV: the five claim arguments, the server's current day and ISO week, the board key suffixes of
/// daily, weekly and alltime, the dated-board separator and the current-marker suffix, then per
/// event: offset, claim field, the game's board base key, player, score, day, week, day expiry,
/// week expiry. The dated boards (`…:daily:2024-01-15`) keep past periods until their retention
/// ends; `…:daily` is the board of the newest day seen that is not ahead of the server's clock
/// (a client clock running fast must not end today early). When it moves to a newer day it
/// starts as that day's dated board, which already holds this event and any that arrived early;
/// a dated board already past retention is gone, so then it starts with this event alone.
const SCORES_LUA: &str = concat!(
    claim_fn!(),
    guard_open!(),
    r#"
local server = { ARGV[6], ARGV[7] }
local suffix = { ARGV[8], ARGV[9] }
local alltime, sep, marker_suffix = ARGV[10], ARGV[11], ARGV[12]
-- Within one call, a dated board's expiry is set once (its expiry is a function of its name)
-- and a marker is read once: at thousands of events per call that is a third of the commands.
-- A board past retention is deleted by its EXPIREAT, so it is set again on its next event.
local expiry_set, markers = {}, {}
for i = 13, #ARGV, 9 do
  local off = tonumber(ARGV[i])
  if off >= applied and first(ARGV[i + 1], ARGV[i]) then
    local base, player, score = ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    redis.call('ZINCRBY', base .. alltime, score, player)
    local periods = { { ARGV[i + 5], ARGV[i + 7] }, { ARGV[i + 6], ARGV[i + 8] } }
    for k, p in ipairs(periods) do
      local current, stamp, expires = base .. suffix[k], p[1], p[2]
      local dated = current .. sep .. stamp
      redis.call('ZINCRBY', dated, score, player)
      if not expiry_set[dated] then
        redis.call('EXPIREAT', dated, expires)
        expiry_set[dated] = redis.call('EXISTS', dated) == 1
      end
      local marker = current .. marker_suffix
      local cur = markers[marker]
      if cur == nil then
        cur = redis.call('GET', marker)
        markers[marker] = cur
      end
      if stamp <= server[k] and ((not cur) or stamp > cur) then
        redis.call('SET', marker, stamp)
        markers[marker] = stamp
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
"#,
    guard_close!(),
    r#"
return n
"#
);
