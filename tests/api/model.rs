//! The expected state of PostgreSQL and Redis after a set of events, computed without
//! gamemetrics, and the assertion that waits until the real stores equal it.

use crate::helpers::*;
use diesel::sql_types::{BigInt, Integer, Jsonb, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use gamemetrics::config::Config;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const SCORING: [&str; 4] = [
    "player_score",
    "quest_completed",
    "achievement_unlocked",
    "boss_defeated",
];
const OTHER: [&str; 2] = ["player_level_up", "session_start"];

/// What PostgreSQL and Redis must hold after a set of events, computed without gamemetrics.
#[derive(Default)]
pub struct Model {
    /// Distinct event ids, in the order first accepted.
    pub event_ids: Vec<String>,
    seen: std::collections::HashSet<String>,
    /// player -> (total, type -> count, newest timestamp)
    pub stats: BTreeMap<String, (i64, BTreeMap<String, i64>, String)>,
    /// (game, board) -> player -> score; board is "alltime", "daily:<day>", "weekly:<week>"
    pub boards: BTreeMap<(String, String), BTreeMap<String, i64>>,
    pub newest_day: HashMap<String, String>,
    pub newest_week: HashMap<String, String>,
}

impl Model {
    /// Adds an accepted event to the expectations; a retry of an id already added changes nothing.
    pub fn add(&mut self, ev: &Value, event_id: &str) {
        if !self.seen.insert(event_id.to_owned()) {
            return;
        }
        self.event_ids.push(event_id.to_owned());
        let (ty, player, game) = (
            ev["event_type"].as_str().unwrap(),
            ev["player_id"].as_str().unwrap(),
            ev["game_id"].as_str().unwrap(),
        );
        let ts = ev["timestamp"].as_str().unwrap();
        let stamp = format!("{}.000000Z", ts.trim_end_matches('Z'));
        let s = self.stats.entry(player.into()).or_default();
        s.0 += 1;
        *s.1.entry(ty.into()).or_default() += 1;
        if stamp > s.2 {
            s.2 = stamp;
        }
        if !SCORING.contains(&ty) {
            return;
        }
        let Some(score) = ev["data"]["score"].as_i64() else {
            return;
        };
        let day = ts[..10].to_owned();
        let week = if day.as_str() >= "2024-01-15" {
            "2024-W03"
        } else {
            "2024-W02"
        }
        .to_owned();
        for board in [
            "alltime".to_owned(),
            format!("daily:{day}"),
            format!("weekly:{week}"),
        ] {
            *self
                .boards
                .entry((game.into(), board))
                .or_default()
                .entry(player.into())
                .or_default() += score;
        }
        let nd = self.newest_day.entry(game.into()).or_default();
        if day > *nd {
            *nd = day;
        }
        let nw = self.newest_week.entry(game.into()).or_default();
        if week > *nw {
            *nw = week;
        }
    }

    /// A board in Redis's ZREVRANGE order: score descending, ties by player id descending.
    pub fn ranked(&self, game: &str, board: &str) -> Vec<(String, i64)> {
        let mut v: Vec<(String, i64)> = self
            .boards
            .get(&(game.to_owned(), board.to_owned()))
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
        v
    }

    /// The current board behind `leaderboard:{game}:{period}`.
    pub fn current(&self, game: &str, period: &str) -> Vec<(String, i64)> {
        match period {
            "daily" => self.ranked(game, &format!("daily:{}", self.newest_day[game])),
            "weekly" => self.ranked(game, &format!("weekly:{}", self.newest_week[game])),
            _ => self.ranked(game, "alltime"),
        }
    }
}

/// `n` events over 8 players and 3 games, straddling midnight between 2024-01-14 and -15 (also
/// an ISO week boundary), plus one scoring event without a score.
pub fn events(n: usize, seed: u64) -> Vec<Value> {
    let mut out = events_over(n, seed, 8, 3);
    out.push(
        json!({"event_type":"quest_completed","player_id":"player-0","game_id":"game-0",
                    "timestamp":"2024-01-15T12:00:00Z","data":{}}),
    );
    out
}

/// `n` events as [`events`] makes them, over `players` players and `games` games.
pub fn events_over(n: usize, seed: u64, players: u32, games: u32) -> Vec<Value> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for i in 0..n {
        let ty = if rng.random_bool(0.7) {
            SCORING[rng.random_range(0..4)]
        } else {
            OTHER[rng.random_range(0..2)]
        };
        let ts = match i % 3 {
            0 => "2024-01-14T23:59:59Z".to_owned(),
            1 => "2024-01-15T00:00:00Z".to_owned(),
            _ => format!(
                "2024-01-15T{:02}:{:02}:00Z",
                rng.random_range(0..24),
                rng.random_range(0..60)
            ),
        };
        out.push(json!({
            "event_type": ty,
            "player_id": format!("player-{}", rng.random_range(0..players)),
            "game_id": format!("game-{}", rng.random_range(0..games)),
            "timestamp": ts,
            "data": {"score": rng.random_range(0..5000)},
        }));
    }
    out
}

/// Gives every `every`-th event a client-chosen `event_id`, and returns `retries` re-sends of
/// randomly chosen such events (same body, same id), as a client retrying after a lost answer.
pub fn with_retries(evs: &mut [Value], every: usize, retries: usize, seed: u64) -> Vec<Value> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for ev in evs.iter_mut().step_by(every) {
        ev["event_id"] = json!(uuid::Uuid::from_u128(rng.random()).to_string());
    }
    let keyed: Vec<&Value> = evs.iter().filter(|e| e.get("event_id").is_some()).collect();
    (0..retries)
        .map(|_| keyed[rng.random_range(0..keyed.len())].clone())
        .collect()
}

#[derive(QueryableByName, Debug)]
pub struct Count {
    #[diesel(sql_type = BigInt)]
    pub n: i64,
}

#[derive(QueryableByName, Debug)]
struct StatsRow {
    #[diesel(sql_type = Text)]
    player_id: String,
    #[diesel(sql_type = Integer)]
    total_events: i32,
    #[diesel(sql_type = Jsonb)]
    event_breakdown: Value,
}

#[derive(QueryableByName, Debug, PartialEq)]
struct BoardRow {
    #[diesel(sql_type = Text)]
    player_id: String,
    #[diesel(sql_type = Integer)]
    rank: i32,
    #[diesel(sql_type = BigInt)]
    score: i64,
}

pub async fn count(config: &Config, sql: &str) -> i64 {
    let rows: Vec<Count> = diesel::sql_query(sql)
        .load(&mut pg_conn(config).await)
        .await
        .expect("count");
    rows[0].n
}

/// Waits until PostgreSQL and Redis hold exactly what the model says.
pub async fn assert_state(config: &Config, model: &Model) {
    let expected_events = model.event_ids.len() as i64;
    // Generous: the SASL test's processes start, join and catch up while a 2-core CI machine
    // builds and runs other work (a rehearsal timed out at 60 s; alone it takes ~10 s).
    eventually(
        Duration::from_secs(120),
        "every event in the events table",
        || async {
            (count(config, "SELECT count(*) AS n FROM events").await == expected_events).then_some(())
        },
    )
    .await;
    let distinct = count(config, "SELECT count(DISTINCT event_id) AS n FROM events").await;
    assert_eq!(distinct, expected_events);

    // Redis DB 0: every player's hash, field by field.
    let r0 = redis_view(config, 0);
    let keys = redis_keys(config);
    for (player, (total, breakdown, last)) in &model.stats {
        let mut want: BTreeMap<String, String> = breakdown
            .iter()
            .map(|(t, n)| (format!("event_{t}"), n.to_string()))
            .collect();
        want.insert("total_events".into(), total.to_string());
        want.insert("last_event".into(), last.clone());
        let key = keys.player_stats(player);
        eventually(Duration::from_secs(30), &format!("Redis {key}"), || {
            let r0 = r0.clone();
            let (key, want) = (key.clone(), want.clone());
            async move {
                let got: BTreeMap<String, String> = r0.conn().await.ok()?.hgetall(&key).await.ok()?;
                (got == want).then_some(())
            }
        })
        .await;
    }

    // player_statistics, row by row.
    eventually(Duration::from_secs(30), "player_statistics", || async {
        let rows: Vec<StatsRow> =
            diesel::sql_query("SELECT player_id::text, total_events, event_breakdown FROM player_statistics")
                .load(&mut pg_conn(config).await)
                .await
                .ok()?;
        let got: BTreeMap<String, (i64, Value)> = rows
            .into_iter()
            .map(|r| (r.player_id, (i64::from(r.total_events), r.event_breakdown)))
            .collect();
        let want: BTreeMap<String, (i64, Value)> = model
            .stats
            .iter()
            .map(|(p, (t, b, _))| (p.clone(), (*t, json!(b))))
            .collect();
        (got == want).then_some(())
    })
    .await;

    // Redis DB 1 and the leaderboards table, board by board.
    let r1 = redis_view(config, 1);
    for game in model.newest_day.keys() {
        for period in ["daily", "weekly", "alltime"] {
            let want = model.current(game, period);
            let key = format!("{}:{period}", keys.board_base(game));
            eventually(Duration::from_secs(30), &format!("Redis {key}"), || {
                let (r1, key, want) = (r1.clone(), key.clone(), want.clone());
                async move {
                    let got: Vec<(String, i64)> = r1
                        .conn()
                        .await
                        .ok()?
                        .zrevrange_withscores(&key, 0, -1)
                        .await
                        .ok()?;
                    (got == want).then_some(())
                }
            })
            .await;
            let want_rows: Vec<BoardRow> = want
                .iter()
                .take(config.consumer.leaderboard_top_n)
                .enumerate()
                .map(|(i, (p, s))| BoardRow {
                    player_id: p.clone(),
                    rank: i as i32 + 1,
                    score: *s,
                })
                .collect();
            eventually(
                Duration::from_secs(30),
                &format!("leaderboards {game}/{period}"),
                || async {
                    let rows: Vec<BoardRow> = diesel::sql_query(format!(
                        "SELECT player_id::text, rank, score FROM leaderboards \
                     WHERE game_id = '{game}' AND period = '{period}' ORDER BY rank"
                    ))
                    .load(&mut pg_conn(config).await)
                    .await
                    .ok()?;
                    (rows == want_rows).then_some(())
                },
            )
            .await;
        }
        for (day, week) in [("2024-01-14", "2024-W02"), ("2024-01-15", "2024-W03")] {
            for (board, stamp, newest) in [
                ("daily", day, &model.newest_day[game]),
                ("weekly", week, &model.newest_week[game]),
            ] {
                // The current period's dated board is the current board until the period ends.
                let key = match stamp == newest {
                    true => format!("{}:{board}", keys.board_base(game)),
                    false => format!("{}:{board}:{stamp}", keys.board_base(game)),
                };
                let mut c = r1.conn().await.expect("Redis");
                let got: Vec<(String, i64)> = c.zrevrange_withscores(&key, 0, -1).await.expect("zrevrange");
                assert_eq!(got, model.ranked(game, &format!("{board}:{stamp}")), "{key}");
                if !got.is_empty() {
                    let ttl: i64 = c.ttl(&key).await.expect("ttl");
                    assert!(ttl > 0, "past boards expire: {key}");
                }
            }
        }
    }
}
