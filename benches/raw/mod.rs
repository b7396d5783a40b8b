//! What a role's Redis work costs raw: the commands its script runs for the same events, sent
//! as plain pipelined commands (no Lua, no conditions), batch for batch as the sink sends them.
//! It is the Redis half of issue 15's "each role against its stores doing the same work raw":
//! the profiles put Redis, not PostgreSQL, on the stats and leaderboard roles' critical path.

use gamemetrics::config::Config;
use gamemetrics::db::redis_keys::RedisKeys;
use gamemetrics::domain::leaderboard::{score_of, Board, Period};
use gamemetrics::domain::GameEvent;
use std::collections::BTreeSet;
use std::time::Instant;

/// Which role's commands to send.
#[derive(Clone, Copy)]
pub enum Work {
    /// The stats script's: per event a retry claim (HSETNX, HGET of the previous generation,
    /// EXPIREAT NX) and the stats hash (HINCRBY ×2, HGET and HSET of `last_event`).
    Stats,
    /// The scores script's for events of the current day and week (the bench's): per scoring
    /// event a retry claim and ZINCRBY on the all-time board and on both current boards; per
    /// batch and current board an EXPIREAT and a GET of its period marker.
    Scores,
}

/// Events/s of `work` for `n` events made by `event`, under `c`'s key prefix (a scratch one:
/// the keys are the caller's to drop), in pipelines of SINK_MAX_BATCH events each with the
/// offset GET and SET the script guards a batch with.
pub fn redis_rate(c: &Config, work: Work, n: u64, event: impl Fn(u64) -> GameEvent) -> f64 {
    let keys = RedisKeys::new(&format!("{}raw:", c.redis.redis_key_prefix));
    let db = match work {
        Work::Stats => 0,
        Work::Scores => 1,
    };
    let Ok(mut conn) = redis::Client::open(c.redis.db_url(db)).and_then(|r| r.get_connection()) else {
        return f64::NAN;
    };
    let scoring: BTreeSet<&str> = c
        .consumer
        .scoring_event_types
        .iter()
        .map(String::as_str)
        .collect();
    let batch = c.consumer.sink_max_batch.max(1) as u64;
    let events: Vec<GameEvent> = (0..n).map(event).collect();
    let offsets = format!("{}raw:offsets", c.redis.redis_key_prefix);
    let claims = keys.claims_of(gamemetrics::db::redis_keys::Store::Stats, "", 0);
    // What the claims hashes and dated boards expire at: the script's values are of this order.
    let expires = chrono::Utc::now().timestamp() + 2 * 86_400;
    let started = Instant::now();
    for (b, chunk) in events.chunks(batch as usize).enumerate() {
        let mut pipe = redis::pipe();
        pipe.get(&offsets).ignore();
        let mut boards = BTreeSet::new();
        for (i, e) in chunk.iter().enumerate() {
            let off = b as u64 * batch + i as u64;
            let score = match work {
                Work::Scores if scoring.contains(e.event_type.as_str()) => match score_of(e) {
                    Ok(s) => s,
                    Err(_) => continue,
                },
                Work::Scores => continue,
                Work::Stats => 0,
            };
            let id = e.scoped_id();
            let field = id.as_bytes();
            let bucket = format!("{claims}{}", u32::from(field[0]) << 8 | u32::from(field[1]));
            pipe.hset_nx(&bucket, &field[..], format!("log:0:{off}")).ignore();
            pipe.hget(format!("{}prev", bucket), &field[..]).ignore();
            pipe.cmd("EXPIREAT").arg(&bucket).arg(expires).arg("NX").ignore();
            match work {
                Work::Stats => {
                    let key = keys.player_stats(e.player_id.as_str());
                    pipe.hincr(&key, "total_events", 1).ignore();
                    pipe.hincr(&key, format!("event_{}", e.event_type.as_str()), 1)
                        .ignore();
                    pipe.hget(&key, "last_event").ignore();
                    pipe.hset(&key, "last_event", e.timestamp.to_rfc3339()).ignore();
                }
                Work::Scores => {
                    let player = e.player_id.as_str();
                    pipe.zincr(
                        keys.board(e.game_id.as_str(), &Board::Current(Period::Alltime)),
                        player,
                        score,
                    )
                    .ignore();
                    for period in [Period::Daily, Period::Weekly] {
                        let current = keys.board(e.game_id.as_str(), &Board::Current(period));
                        pipe.zincr(&current, player, score).ignore();
                        boards.insert((e.game_id.as_str(), period, current));
                    }
                }
            }
        }
        for (game, period, current) in &boards {
            pipe.cmd("EXPIREAT").arg(current).arg(expires).ignore();
            pipe.get(keys.board_marker(game, *period)).ignore();
        }
        pipe.set(&offsets, b as u64 * batch + chunk.len() as u64).ignore();
        if pipe.query::<()>(&mut conn).is_err() {
            return f64::NAN;
        }
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Microseconds per call of one Redis command (an HGET of a field no hash holds), timed from
/// the client over 100,000 calls sent three ways. The roles' scripts pay `scripted` for every
/// command they run, where the raw baselines above pay `pipelined`.
pub struct CallCost {
    /// In pipelines of 1,000.
    pub pipelined: f64,
    /// From a script's loop, 10,000 calls per script call.
    pub scripted: f64,
    /// The same script's loop with no call in it.
    pub loop_only: f64,
}

/// Measures [`CallCost`] on DB 0, under `c`'s key prefix (the key is never written).
pub fn call_cost(c: &Config) -> Option<CallCost> {
    const CALLS: usize = 100_000;
    const PER_SCRIPT: usize = 10_000;
    let mut conn = redis::Client::open(c.redis.db_url(0))
        .and_then(|r| r.get_connection())
        .ok()?;
    let key = format!("{}raw:missing", c.redis.redis_key_prefix);
    let per_call = |started: Instant| started.elapsed().as_secs_f64() * 1e6 / CALLS as f64;
    let started = Instant::now();
    for _ in 0..CALLS / 1_000 {
        let mut pipe = redis::pipe();
        for _ in 0..1_000 {
            pipe.hget(&key, "f").ignore();
        }
        pipe.query::<()>(&mut conn).ok()?;
    }
    let pipelined = per_call(started);
    let mut script = |body: &str| -> Option<f64> {
        let script = redis::Script::new(&format!(
            "local n = 0 for i = 1, tonumber(ARGV[1]) do {body} n = n + 1 end return n"
        ));
        let started = Instant::now();
        for _ in 0..CALLS / PER_SCRIPT {
            script.key(&key).arg(PER_SCRIPT).invoke::<i64>(&mut conn).ok()?;
        }
        Some(per_call(started))
    };
    let scripted = script("redis.call('HGET', KEYS[1], 'f')")?;
    let loop_only = script("")?;
    Some(CallCost {
        pipelined,
        scripted,
        loop_only,
    })
}
