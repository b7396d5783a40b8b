//! Freshness seen from outside the consumers: probe events go through the real ingest API, and
//! from the moment its 200 arrives each store is polled until the probe is visible there: the
//! `events` row, the player's Redis stats hash, the player's score on the game's all-time board.

use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use gamemetrics::config::Config;
use gamemetrics::db::redis_keys::RedisKeys;
use gamemetrics::db::PgPool;
use gamemetrics::domain::leaderboard::{Board, Period};
use std::time::{Duration, Instant};

/// How often each store is first asked whether a probe has landed: the figures' resolution.
const POLL: Duration = Duration::from_millis(1);
/// Past POLL × this, a probe is polled every elapsed ÷ this instead (resolution within 5% of the
/// figure). Polling every millisecond whatever the lag made the probes a load of their own that
/// grew with the lag: with the roles 20 s behind, 10 probes/s polled 3 stores 600,000 times a
/// second, and the soak measured its own probes.
const POLL_FRACTION: u32 = 20;
/// A probe not visible after this long counts as missing.
const GIVE_UP: Duration = Duration::from_secs(60);
/// The game every probe scores in.
const PROBE_GAME: &str = "probe-game";

/// Milliseconds from a probe's 200 to visible, per store; `None` where it never showed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sighting {
    pub row: Option<f64>,
    pub stats: Option<f64>,
    pub board: Option<f64>,
}

/// Where probes are sent and looked for.
#[derive(Clone)]
pub struct Prober {
    client: reqwest::Client,
    url: String,
    pg: PgPool,
    stats: redis::aio::MultiplexedConnection,
    boards: redis::aio::MultiplexedConnection,
    keys: RedisKeys,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

impl Prober {
    /// A prober posting to the ingest API at `base` (e.g. `http://127.0.0.1:8080`) and reading
    /// the stores `c` names.
    pub async fn new(c: &Config, base: &str) -> Prober {
        let redis = |db| async move {
            redis::Client::open(c.redis.db_url(db))
                .expect("Redis URL")
                .get_multiplexed_async_connection()
                .await
                .expect("Redis reachable")
        };
        Prober {
            client: reqwest::Client::new(),
            url: format!("{base}/api/v1/events"),
            pg: gamemetrics::db::pg_pool(&c.database),
            stats: redis(0).await,
            boards: redis(1).await,
            keys: RedisKeys::new(&c.redis.redis_key_prefix),
        }
    }

    /// Sends probe `k` and follows it into every store.
    pub async fn probe(self, k: u64) -> Sighting {
        let player = format!("probe-{k}");
        let body = serde_json::json!({
            "event_type": "player_score",
            "player_id": player,
            "game_id": PROBE_GAME,
            "timestamp": chrono::Utc::now(),
            "data": {"score": 1},
        });
        let accepted = self
            .client
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !accepted {
            return Sighting::default();
        }
        let since = Instant::now();
        let stats_key = self.keys.player_stats(&player);
        let board_key = self.keys.board(PROBE_GAME, &Board::Current(Period::Alltime));
        let row = {
            let (pg, player) = (self.pg.clone(), player.clone());
            until(since, move || {
                let (pg, player) = (pg.clone(), player.clone());
                async move {
                    let mut conn = pg.get().await.ok()?;
                    // Prepared once per connection: planning each poll was 3% of a core.
                    let c: Count = gamemetrics::db::Prepared(
                        diesel::sql_query("SELECT count(*) AS n FROM events WHERE player_id = $1")
                            .bind::<Text, _>(player),
                    )
                    .get_result(&mut *conn)
                    .await
                    .ok()?;
                    Some(c.n > 0)
                }
            })
        };
        let stats = {
            let conn = self.stats.clone();
            until(since, move || {
                let (mut conn, key) = (conn.clone(), stats_key.clone());
                async move {
                    let found: bool = redis::cmd("EXISTS").arg(key).query_async(&mut conn).await.ok()?;
                    Some(found)
                }
            })
        };
        let board = {
            let conn = self.boards.clone();
            until(since, move || {
                let (mut conn, key, player) = (conn.clone(), board_key.clone(), player.clone());
                async move {
                    let score: Option<f64> = redis::cmd("ZSCORE")
                        .arg(key)
                        .arg(player)
                        .query_async(&mut conn)
                        .await
                        .ok()?;
                    Some(score.is_some())
                }
            })
        };
        let (row, stats, board) = futures::join!(row, stats, board);
        Sighting { row, stats, board }
    }
}

/// Asks `seen` every POLL (then every elapsed ÷ POLL_FRACTION) until it answers true; the
/// milliseconds from `since`.
async fn until<F, Fut>(since: Instant, seen: F) -> Option<f64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<bool>>,
{
    while since.elapsed() < GIVE_UP {
        if seen().await == Some(true) {
            return Some(since.elapsed().as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(POLL.max(since.elapsed() / POLL_FRACTION)).await;
    }
    None
}

/// p50, p99 and max of the figures, with how many probes never showed. A probe that never
/// showed counts as infinitely late (leaving it out would flatter the quantiles exactly when the
/// pipeline is behind); see [`ms`].
pub fn quantiles(ms: Vec<Option<f64>>) -> (f64, f64, f64, usize) {
    let missing = ms.iter().filter(|m| m.is_none()).count();
    let mut v: Vec<f64> = ms.into_iter().map(|m| m.unwrap_or(f64::INFINITY)).collect();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if v.is_empty() {
            f64::NAN
        } else {
            v[((v.len() - 1) as f64 * q).round() as usize]
        }
    };
    (at(0.5), at(0.99), at(1.0), missing)
}

/// A figure in milliseconds for the tables: "never" for a probe that never showed.
pub fn ms(v: f64) -> String {
    if v.is_infinite() {
        format!("never (> {} s)", GIVE_UP.as_secs())
    } else {
        format!("{v:.1} ms")
    }
}
