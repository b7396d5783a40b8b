//! Read endpoints: player stats and leaderboards from Redis (PostgreSQL when Redis lacks them),
//! single events from PostgreSQL. Every answer is one of the typed bodies below, which are also
//! the OpenAPI schemas (`/openapi.json`), so the contract and the code can't drift apart.

use super::error::{ApiError, ErrorBody};
use crate::actors::sinks::redis::board_key;
use crate::auth::{Authenticated, KeyStore};
use crate::db::PgPool;
use crate::domain::{GameId, PlayerId};
use crate::metrics::Metrics;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use diesel::sql_types::{Integer, Jsonb, Text, Timestamptz, Uuid as SqlUuid};
use diesel::QueryableByName;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::AsyncPgConnection;
use diesel_async::RunQueryDsl;
use futures::future::{FutureExt, LocalBoxFuture, WeakShared};
use serde::Serialize;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// The stores the read endpoints use.
pub struct QueryState {
    pub pg: PgPool,
    pub stats: crate::db::RedisReader,
    pub boards: crate::db::RedisReader,
    pub prefix: String,
    /// Present when QUERY_AUTH_REQUIRED is on.
    pub keys: Option<Arc<KeyStore>>,
}

fn pg_unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::StoreUnavailable(format!("PostgreSQL: {e}"))
}

fn redis_unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::StoreUnavailable(format!("Redis: {e}"))
}

/// A pooled PostgreSQL connection, or 503 when none can be had.
async fn pg_conn(
    q: &QueryState,
) -> Result<bb8::PooledConnection<'_, AsyncDieselConnectionManager<AsyncPgConnection>>, ApiError> {
    q.pg.get().await.map_err(pg_unavailable)
}

/// The caller's API key on a read: `Some` when QUERY_AUTH_REQUIRED is on (401 without a valid
/// one), `None` when reads are open.
pub struct ReadKey(Option<Authenticated>);

impl ReadKey {
    /// 403 unless reads are open or the key belongs to `game`.
    fn may_read(&self, game: &GameId) -> Result<(), ApiError> {
        match &self.0 {
            Some(k) if k.game_id != game.as_str() => Err(ApiError::Forbidden(format!(
                "this API key may not read game {game}"
            ))),
            _ => Ok(()),
        }
    }

    /// The one game a keyed caller may see; `None` when reads are open.
    fn game(&self) -> Option<&str> {
        self.0.as_ref().map(|k| k.game_id.as_str())
    }
}

impl FromRequest for ReadKey {
    type Error = ApiError;
    type Future = futures::future::LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let keys = req
                .app_data::<web::Data<QueryState>>()
                .and_then(|q| q.keys.clone());
            let Some(keys) = keys else {
                return Ok(ReadKey(None));
            };
            let metrics = req
                .app_data::<web::Data<Metrics>>()
                .cloned()
                .ok_or_else(|| ApiError::StoreUnavailable("metrics registry missing".into()))?;
            super::authenticate(&req, &keys, &metrics)
                .await
                .map(|k| ReadKey(Some(k)))
        })
    }
}

/// The error answers every read can give besides its own (OpenAPI only).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum ReadErrors {
    /// A malformed path or query parameter.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// QUERY_AUTH_REQUIRED is on and no valid API key was given.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Redis or PostgreSQL is unavailable; retry.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Where a stats answer came from.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatsSource {
    /// Live counts (Redis DB 0).
    Redis,
    /// The last flushed `player_statistics` row, because Redis had nothing for the player.
    Postgres,
}

/// A player's event counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlayerStats {
    pub player_id: String,
    pub total_events: i64,
    /// Time of the player's newest event (RFC 3339, µs); null from PostgreSQL, which keeps counts only.
    pub last_event: Option<String>,
    /// Event type → count.
    pub event_breakdown: BTreeMap<String, i64>,
    /// When the PostgreSQL row was last written; only when `source` is `postgres`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    pub source: StatsSource,
}

/// One row of a board.
#[derive(Debug, Serialize, ToSchema)]
pub struct RankedPlayer {
    /// 1-based; ties are ordered by player_id, descending (Redis ZREVRANGE order).
    pub rank: u64,
    pub player_id: String,
    pub score: i64,
}

/// A page of a game's board.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaderboardPage {
    pub game_id: String,
    pub period: Period,
    /// The board read: `alltime`, `daily`, `weekly`, or a past one such as `daily:2024-01-15`.
    pub board: String,
    pub offset: u64,
    pub limit: u64,
    pub entries: Vec<RankedPlayer>,
}

/// A player's place on a board, with their neighbours.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlayerRank {
    pub game_id: String,
    pub period: Period,
    pub board: String,
    pub player_id: String,
    pub rank: u64,
    /// Null only if the player left the board between the two reads.
    pub score: Option<i64>,
    /// The player and up to `around` players above and below, best first.
    pub entries: Vec<RankedPlayer>,
}

/// A stored event (`events` row).
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredEvent {
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub player_id: String,
    pub game_id: String,
    pub timestamp: DateTime<Utc>,
    pub ingested_at: DateTime<Utc>,
    /// When the logger wrote the row.
    pub created_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub data: Value,
}

/// One of a player's events.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlayerEvent {
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub game_id: String,
    pub timestamp: DateTime<Utc>,
    pub ingested_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub data: Value,
}

/// A page of a player's events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlayerEvents {
    pub player_id: String,
    pub events: Vec<PlayerEvent>,
    /// Pass as `before` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A leaderboard period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Daily,
    Weekly,
    Alltime,
}

/// Which board to read (the query string of both leaderboard endpoints).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents the parameters; they are parsed by hand for precise errors
pub struct BoardParams {
    /// Default `alltime`.
    period: Option<Period>,
    /// A past day's board (with `period=daily`), while retained.
    #[param(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", example = "2024-01-15")]
    date: Option<String>,
    /// A past ISO week's board (with `period=weekly`), while retained.
    #[param(pattern = r"^[0-9]{4}-W[0-9]{2}$", example = "2024-W03")]
    week: Option<String>,
}

/// Paging of `GET /games/{game_id}/leaderboard`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageParams {
    /// Entries per page, 1 to 1000 (default 10).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Entries to skip (default 0).
    #[param(minimum = 0, maximum = 1_000_000)]
    offset: Option<u32>,
}

/// `GET /games/{game_id}/leaderboard/players/{player_id}`'s neighbourhood size.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AroundParams {
    /// Players shown above and below, 0 to 100 (default 5).
    #[param(minimum = 0, maximum = 100)]
    around: Option<u32>,
}

/// Paging of `GET /player/{player_id}/events`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct EventPageParams {
    /// Events per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    before: Option<String>,
}

/// `GET /player/{player_id}/stats`: live counts from Redis DB 0, or the last flushed row of
/// `player_statistics` (`"source": "postgres"`) when Redis has nothing for the player.
#[utoipa::path(
    get, path = "/player/{player_id}/stats", tag = "queries",
    params(("player_id" = String, Path, description = "Player", example = "player-1")),
    responses(
        (status = 200, description = "The player's counts", body = PlayerStats),
        (status = 404, description = "No stats for this player", body = ErrorBody),
        ReadErrors
    ),
    security((), ("api_key" = []))
)]
pub async fn player_stats(
    _key: ReadKey,
    path: web::Path<String>,
    q: web::Data<QueryState>,
) -> Result<HttpResponse, ApiError> {
    let player = PlayerId::parse(path.into_inner())?;
    let mut conn = q.stats.conn().map_err(redis_unavailable)?;
    let key = format!("{}player_stats:{}", q.prefix, player);
    let hash: HashMap<String, String> = redis::AsyncCommands::hgetall(&mut conn, &key)
        .await
        .map_err(redis_unavailable)?;
    if !hash.is_empty() {
        let count = |v: &String| v.parse::<i64>().unwrap_or(0);
        let event_breakdown = hash
            .iter()
            .filter_map(|(field, v)| field.strip_prefix("event_").map(|ty| (ty.to_owned(), count(v))))
            .collect();
        return Ok(HttpResponse::Ok().json(PlayerStats {
            player_id: player.as_str().to_owned(),
            total_events: hash.get("total_events").map(count).unwrap_or(0),
            last_event: hash.get("last_event").cloned(),
            event_breakdown,
            updated_at: None,
            source: StatsSource::Redis,
        }));
    }
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Integer)]
        total_events: i32,
        #[diesel(sql_type = Jsonb)]
        event_breakdown: Value,
        #[diesel(sql_type = Timestamptz)]
        updated_at: DateTime<Utc>,
    }
    let mut pg = pg_conn(&q).await?;
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT total_events, event_breakdown, updated_at FROM player_statistics WHERE player_id = $1",
    )
    .bind::<Text, _>(player.as_str())
    .load(&mut pg)
    .await
    .map_err(pg_unavailable)?;
    let Some(row) = rows.into_iter().next() else {
        return Err(ApiError::NotFound(format!("no stats for player {player}")));
    };
    let event_breakdown = match row.event_breakdown {
        Value::Object(m) => m
            .into_iter()
            .map(|(ty, n)| (ty, n.as_i64().unwrap_or(0)))
            .collect(),
        _ => BTreeMap::new(),
    };
    Ok(HttpResponse::Ok().json(PlayerStats {
        player_id: player.as_str().to_owned(),
        total_events: i64::from(row.total_events),
        // player_statistics keeps counts, not the newest event time.
        last_event: None,
        event_breakdown,
        updated_at: Some(row.updated_at),
        source: StatsSource::Postgres,
    }))
}

/// `GET /games/{game_id}/leaderboard?period=daily|weekly|alltime&limit=&offset=&date=&week=`
#[utoipa::path(
    get, path = "/games/{game_id}/leaderboard", tag = "queries",
    params(("game_id" = String, Path, description = "Game", example = "game-1"), BoardParams, PageParams),
    responses(
        (status = 200, description = "A page of the board, best first (empty past its end)", body = LeaderboardPage),
        (status = 403, description = "The API key belongs to another game", body = ErrorBody),
        ReadErrors
    ),
    security((), ("api_key" = []))
)]
pub async fn leaderboard(
    key: ReadKey,
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Data<QueryState>,
) -> Result<HttpResponse, ApiError> {
    let game = GameId::parse(path.into_inner())?;
    key.may_read(&game)?;
    let params = query_params(&req)?;
    let (period, board) = board_of(&params)?;
    let limit = number(&params, "limit", 10, 1, 1000)?;
    let offset = number(&params, "offset", 0, 0, 1_000_000)?;
    let start = isize::try_from(offset).unwrap_or(isize::MAX);
    let stop = start.saturating_add(isize::try_from(limit).unwrap_or(1000) - 1);
    let entries = board_page(&q, board_key(&q.prefix, game.as_str(), &board), start, stop).await?;
    Ok(HttpResponse::Ok().json(LeaderboardPage {
        game_id: game.as_str().to_owned(),
        period,
        board,
        offset: offset as u64,
        limit: limit as u64,
        entries: ranked(offset, entries.iter().cloned()),
    }))
}

type Page = Rc<Vec<(String, f64)>>;
type PageRead = LocalBoxFuture<'static, Result<Page, String>>;

thread_local! {
    /// Board pages being read from Redis by this HTTP worker (each worker is one thread). Weak:
    /// a read whose every waiter went away (clients disconnected) is dropped, not kept to be
    /// resumed later with an old answer.
    static PAGES_IN_FLIGHT: RefCell<HashMap<(String, isize, isize), WeakShared<PageRead>>> = RefCell::default();
}

/// Removes a page read from the in-flight table when the read ends: answered, failed, or dropped
/// because every waiter went away.
struct ForgetOnDrop((String, isize, isize));

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        let _ = PAGES_IN_FLIGHT.try_with(|m| {
            if let Ok(mut m) = m.try_borrow_mut() {
                m.remove(&self.0);
            }
        });
    }
}

/// ZREVRANGE … WITHSCORES of one page, shared by identical requests that arrive while it is in
/// flight on this worker: a top-10 that many clients poll at once costs one Redis round trip, and
/// no answer is older than that round trip (no cache: nothing is kept once it lands).
async fn board_page(q: &QueryState, key: String, start: isize, stop: isize) -> Result<Page, ApiError> {
    let id = (key, start, stop);
    let pending = PAGES_IN_FLIGHT.with(|m| m.borrow().get(&id).and_then(WeakShared::upgrade));
    let pending = match pending {
        Some(p) => p,
        None => {
            let mut conn = q.boards.conn().map_err(redis_unavailable)?;
            let forget = ForgetOnDrop(id.clone());
            let read = async move {
                let (key, start, stop) = &forget.0;
                let r: Result<Vec<(String, f64)>, _> =
                    redis::AsyncCommands::zrevrange_withscores(&mut conn, key, *start, *stop).await;
                drop(forget);
                r.map(Rc::new).map_err(|e| e.to_string())
            }
            .boxed_local()
            .shared();
            if let Some(weak) = read.downgrade() {
                PAGES_IN_FLIGHT.with(|m| m.borrow_mut().insert(id, weak));
            }
            read
        }
    };
    pending.await.map_err(redis_unavailable)
}

/// Board entries from ZREVRANGE, the first at 0-based position `first`.
fn ranked(first: usize, entries: impl IntoIterator<Item = (String, f64)>) -> Vec<RankedPlayer> {
    (first as u64 + 1..)
        .zip(entries)
        .map(|(rank, (player_id, score))| RankedPlayer {
            rank,
            player_id,
            // Sorted-set scores are doubles; ours are integer sums well inside 2^53.
            score: score as i64,
        })
        .collect()
}

/// `GET /events/{event_id}`: the stored row.
#[utoipa::path(
    get, path = "/events/{event_id}", tag = "queries",
    params(("event_id" = uuid::Uuid, Path, description = "The event's id")),
    responses(
        (status = 200, description = "The stored event", body = StoredEvent),
        (status = 404, description = "No such event (or, with an API key, not of the key's game)", body = ErrorBody),
        ReadErrors
    ),
    security((), ("api_key" = []))
)]
pub async fn event(
    key: ReadKey,
    path: web::Path<String>,
    q: web::Data<QueryState>,
) -> Result<HttpResponse, ApiError> {
    let raw = path.into_inner();
    let id = uuid::Uuid::parse_str(&raw)
        .map_err(|e| ApiError::BadQuery(format!("event_id must be a UUID: {e}")))?;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        event_type: String,
        #[diesel(sql_type = Text)]
        player_id: String,
        #[diesel(sql_type = Text)]
        game_id: String,
        #[diesel(sql_type = Timestamptz)]
        event_timestamp: DateTime<Utc>,
        #[diesel(sql_type = Timestamptz)]
        ingested_at: DateTime<Utc>,
        #[diesel(sql_type = Timestamptz)]
        created_at: DateTime<Utc>,
        #[diesel(sql_type = Jsonb)]
        data: Value,
    }
    let mut pg = pg_conn(&q).await?;
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT event_type::text, player_id::text, game_id::text, event_timestamp, ingested_at, created_at, data \
         FROM events WHERE event_id = $1 ORDER BY ingested_at, game_id",
    )
    .bind::<SqlUuid, _>(id)
    .load(&mut pg)
    .await
    .map_err(pg_unavailable)?;
    // Another game's event is "not found" for a keyed caller: a 403 would confirm it exists.
    let Some(r) = rows
        .into_iter()
        .find(|r| key.game().is_none_or(|g| g == r.game_id))
    else {
        return Err(ApiError::NotFound(format!("no event {id}")));
    };
    Ok(HttpResponse::Ok().json(StoredEvent {
        event_id: id,
        event_type: r.event_type,
        player_id: r.player_id,
        game_id: r.game_id,
        timestamp: r.event_timestamp,
        ingested_at: r.ingested_at,
        created_at: r.created_at,
        data: r.data,
    }))
}

/// The board a leaderboard request names: `period` (default alltime) with `date` or `week` for a
/// past daily or weekly board.
fn board_of(params: &HashMap<String, String>) -> Result<(Period, String), ApiError> {
    let period = params.get("period").map(String::as_str).unwrap_or("alltime");
    let board = match (period, params.get("date"), params.get("week")) {
        ("alltime" | "daily" | "weekly", None, None) => period.to_owned(),
        ("daily", Some(d), None) => {
            // Exactly the board key's form: chrono alone also takes `2026-1-5`, which names no board.
            let digits =
                |r: std::ops::Range<usize>| d.get(r).is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()));
            let ok = d.len() == 10
                && digits(0..4)
                && digits(5..7)
                && digits(8..10)
                && chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok();
            if !ok {
                return Err(ApiError::BadQuery(format!(
                    "date must be a date as YYYY-MM-DD, got {d}"
                )));
            }
            format!("daily:{d}")
        }
        ("weekly", None, Some(w)) => {
            let b = w.as_bytes();
            let digits =
                |r: std::ops::Range<usize>| w.get(r).is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()));
            let ok = b.len() == 8
                && b[4] == b'-'
                && b[5] == b'W'
                && digits(0..4)
                && digits(6..8)
                && match (w[..4].parse::<i32>(), w[6..].parse::<u32>()) {
                    (Ok(year), Ok(week)) => {
                        chrono::NaiveDate::from_isoywd_opt(year, week, chrono::Weekday::Mon).is_some()
                    }
                    _ => false,
                };
            if !ok {
                return Err(ApiError::BadQuery(format!(
                    "week must be an ISO week as YYYY-Www (W01 to W52 or W53), got {w}"
                )));
            }
            format!("weekly:{w}")
        }
        ("daily" | "weekly" | "alltime", _, _) => {
            return Err(ApiError::BadQuery(
                "date goes with period=daily, week with period=weekly".into(),
            ))
        }
        (other, _, _) => {
            return Err(ApiError::BadQuery(format!(
                "period must be daily, weekly or alltime, got {other}"
            )))
        }
    };
    let period = match period {
        "daily" => Period::Daily,
        "weekly" => Period::Weekly,
        _ => Period::Alltime,
    };
    Ok((period, board))
}

fn query_params(req: &HttpRequest) -> Result<HashMap<String, String>, ApiError> {
    Ok(
        web::Query::<HashMap<String, String>>::from_query(req.query_string())
            .map_err(|e| ApiError::BadQuery(format!("query string: {e}")))?
            .into_inner(),
    )
}

fn number(
    params: &HashMap<String, String>,
    name: &str,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match params.get(name) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::BadQuery(format!(
                "{name} must be an integer from {min} to {max}, got {v}"
            ))),
        },
    }
}

/// `GET /games/{game_id}/leaderboard/players/{player_id}?period=…&around=N`: the player's rank
/// and score, and the N players above and below.
#[utoipa::path(
    get, path = "/games/{game_id}/leaderboard/players/{player_id}", tag = "queries",
    params(
        ("game_id" = String, Path, description = "Game", example = "game-1"),
        ("player_id" = String, Path, description = "Player", example = "player-1"),
        BoardParams, AroundParams
    ),
    responses(
        (status = 200, description = "The player's rank and neighbours", body = PlayerRank),
        (status = 403, description = "The API key belongs to another game", body = ErrorBody),
        (status = 404, description = "The player is not on this board", body = ErrorBody),
        ReadErrors
    ),
    security((), ("api_key" = []))
)]
pub async fn player_rank(
    key: ReadKey,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    q: web::Data<QueryState>,
) -> Result<HttpResponse, ApiError> {
    let (game, player) = path.into_inner();
    let (game, player) = (GameId::parse(game)?, PlayerId::parse(player)?);
    key.may_read(&game)?;
    let params = query_params(&req)?;
    let (period, board) = board_of(&params)?;
    let around = number(&params, "around", 5, 0, 100)?;
    let board_key = board_key(&q.prefix, game.as_str(), &board);
    let mut conn = q.boards.conn().map_err(redis_unavailable)?;
    let rank: Option<usize> = redis::AsyncCommands::zrevrank(&mut conn, &board_key, player.as_str())
        .await
        .map_err(redis_unavailable)?;
    let Some(rank) = rank else {
        return Err(ApiError::NotFound(format!(
            "player {player} is not on the {board} board of {game}"
        )));
    };
    let start = rank.saturating_sub(around);
    let entries: Vec<(String, f64)> = redis::AsyncCommands::zrevrange_withscores(
        &mut conn,
        &board_key,
        isize::try_from(start).unwrap_or(isize::MAX),
        isize::try_from(rank + around).unwrap_or(isize::MAX),
    )
    .await
    .map_err(redis_unavailable)?;
    let entries = ranked(start, entries);
    let score = entries
        .iter()
        .find(|e| e.player_id == player.as_str())
        .map(|e| e.score);
    Ok(HttpResponse::Ok().json(PlayerRank {
        game_id: game.as_str().to_owned(),
        period,
        board,
        player_id: player.as_str().to_owned(),
        rank: rank as u64 + 1,
        score,
        entries,
    }))
}

/// `GET /player/{player_id}/events?limit=&before=`: the player's events, newest first. Each page
/// answers a `next_cursor` to pass as `before` for the next one (null on the last page). With
/// an API key, only the key's game's events.
#[utoipa::path(
    get, path = "/player/{player_id}/events", tag = "queries",
    params(("player_id" = String, Path, description = "Player", example = "player-1"), EventPageParams),
    responses(
        (status = 200, description = "A page of the player's events (empty for an unknown player)", body = PlayerEvents),
        ReadErrors
    ),
    security((), ("api_key" = []))
)]
pub async fn player_events(
    key: ReadKey,
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Data<QueryState>,
) -> Result<HttpResponse, ApiError> {
    let player = PlayerId::parse(path.into_inner())?;
    let params = query_params(&req)?;
    let limit = number(&params, "limit", 20, 1, 100)?;
    // The cursor is `<event_timestamp in µs since the epoch>_<event_id>` of the last event seen.
    let before = match params.get("before") {
        None => None,
        Some(c) => {
            let bad = || ApiError::BadQuery(format!("before must be a cursor from a previous page, got {c}"));
            let (micros, id) = c.split_once('_').ok_or_else(bad)?;
            let micros: i64 = micros.parse().map_err(|_| bad())?;
            // Event timestamps are RFC 3339, years 0 to 9999; beyond that PostgreSQL can't even
            // hold the value, and the query would fail as if the store were down.
            let ts = DateTime::<Utc>::from_timestamp_micros(micros)
                .filter(|t| (0..=9999).contains(&chrono::Datelike::year(t)))
                .ok_or_else(bad)?;
            Some((ts, uuid::Uuid::parse_str(id).map_err(|_| bad())?))
        }
    };
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = SqlUuid)]
        event_id: uuid::Uuid,
        #[diesel(sql_type = Text)]
        event_type: String,
        #[diesel(sql_type = Text)]
        game_id: String,
        #[diesel(sql_type = Timestamptz)]
        event_timestamp: DateTime<Utc>,
        #[diesel(sql_type = Timestamptz)]
        ingested_at: DateTime<Utc>,
        #[diesel(sql_type = Jsonb)]
        data: Value,
    }
    // One more than asked tells whether there is a next page.
    let fetch = i64::try_from(limit + 1).unwrap_or(101);
    let (ts, id) = before.unwrap_or((DateTime::<Utc>::MAX_UTC, uuid::Uuid::max()));
    let mut pg = pg_conn(&q).await?;
    let mut rows: Vec<Row> = diesel::sql_query(
        "SELECT event_id, event_type::text, game_id::text, event_timestamp, ingested_at, data FROM events \
         WHERE player_id = $1 AND (event_timestamp, event_id) < ($2, $3) AND ($5::text IS NULL OR game_id = $5) \
         ORDER BY event_timestamp DESC, event_id DESC LIMIT $4",
    )
    .bind::<Text, _>(player.as_str())
    .bind::<Timestamptz, _>(ts)
    .bind::<SqlUuid, _>(id)
    .bind::<diesel::sql_types::BigInt, _>(fetch)
    .bind::<diesel::sql_types::Nullable<Text>, _>(key.game())
    .load(&mut pg)
    .await
    .map_err(pg_unavailable)?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = if more {
        rows.last()
            .map(|r| format!("{}_{}", r.event_timestamp.timestamp_micros(), r.event_id))
    } else {
        None
    };
    let events = rows
        .into_iter()
        .map(|r| PlayerEvent {
            event_id: r.event_id,
            event_type: r.event_type,
            game_id: r.game_id,
            timestamp: r.event_timestamp,
            ingested_at: r.ingested_at,
            data: r.data,
        })
        .collect();
    Ok(HttpResponse::Ok().json(PlayerEvents {
        player_id: player.as_str().to_owned(),
        events,
        next_cursor,
    }))
}
