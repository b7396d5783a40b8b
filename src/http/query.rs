//! Read endpoints: player stats and leaderboards from Redis (PostgreSQL when Redis lacks them),
//! single events from PostgreSQL.

use super::error::ApiError;
use crate::actors::sinks::redis::board_key;
use crate::db::PgPool;
use crate::domain::{GameId, PlayerId};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use diesel::sql_types::{Integer, Jsonb, Text, Timestamptz, Uuid as SqlUuid};
use diesel::QueryableByName;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::AsyncPgConnection;
use diesel_async::RunQueryDsl;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// The stores the read endpoints use.
pub struct QueryState {
    pub pg: PgPool,
    pub stats: redis::aio::ConnectionManager,
    pub boards: redis::aio::ConnectionManager,
    pub prefix: String,
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

/// `GET /player/{player_id}/stats`: live counts from Redis DB 0, or the last flushed row of
/// `player_statistics` (`"source": "postgres"`) when Redis has nothing for the player.
pub async fn player_stats(
    path: web::Path<String>,
    q: web::Data<QueryState>,
) -> Result<HttpResponse, ApiError> {
    let player = PlayerId::parse(path.into_inner())?;
    let mut conn = q.stats.clone();
    let key = format!("{}player_stats:{}", q.prefix, player);
    let hash: HashMap<String, String> = redis::AsyncCommands::hgetall(&mut conn, &key)
        .await
        .map_err(redis_unavailable)?;
    if !hash.is_empty() {
        let mut breakdown = Map::new();
        for (field, value) in &hash {
            if let Some(ty) = field.strip_prefix("event_") {
                breakdown.insert(ty.to_owned(), json!(value.parse::<i64>().unwrap_or(0)));
            }
        }
        return Ok(HttpResponse::Ok().json(json!({
            "player_id": player,
            "total_events": hash.get("total_events").and_then(|v| v.parse::<i64>().ok()).unwrap_or(0),
            "last_event": hash.get("last_event"),
            "event_breakdown": breakdown,
            "source": "redis",
        })));
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
    Ok(HttpResponse::Ok().json(json!({
        "player_id": player,
        "total_events": row.total_events,
        // player_statistics keeps counts, not the newest event time; this is when they were flushed.
        "last_event": null,
        "updated_at": row.updated_at,
        "event_breakdown": row.event_breakdown,
        "source": "postgres",
    })))
}

/// `GET /games/{game_id}/leaderboard?period=daily|weekly|alltime&limit=&offset=&date=&week=`
pub async fn leaderboard(
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Data<QueryState>,
) -> Result<HttpResponse, ApiError> {
    let game = GameId::parse(path.into_inner())?;
    let params = query_params(&req)?;
    let (period, board) = board_of(&params)?;
    let limit = number(&params, "limit", 10, 1, 1000)?;
    let offset = number(&params, "offset", 0, 0, 1_000_000)?;
    let mut conn = q.boards.clone();
    let start = isize::try_from(offset).unwrap_or(isize::MAX);
    let stop = start.saturating_add(isize::try_from(limit).unwrap_or(1000) - 1);
    let entries: Vec<(String, f64)> = redis::AsyncCommands::zrevrange_withscores(
        &mut conn,
        board_key(&q.prefix, game.as_str(), &board),
        start,
        stop,
    )
    .await
    .map_err(redis_unavailable)?;
    let entries: Vec<Value> = entries
        .into_iter()
        .enumerate()
        .map(|(i, (player, score))| json!({"rank": offset + i + 1, "player_id": player, "score": score as i64}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "game_id": game,
        "period": period,
        "board": board,
        "offset": offset,
        "limit": limit,
        "entries": entries,
    })))
}

/// `GET /events/{event_id}`: the stored row.
pub async fn event(path: web::Path<String>, q: web::Data<QueryState>) -> Result<HttpResponse, ApiError> {
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
         FROM events WHERE event_id = $1",
    )
    .bind::<SqlUuid, _>(id)
    .load(&mut pg)
    .await
    .map_err(pg_unavailable)?;
    let Some(r) = rows.into_iter().next() else {
        return Err(ApiError::NotFound(format!("no event {id}")));
    };
    Ok(HttpResponse::Ok().json(json!({
        "event_id": id,
        "event_type": r.event_type,
        "player_id": r.player_id,
        "game_id": r.game_id,
        "timestamp": r.event_timestamp,
        "ingested_at": r.ingested_at,
        "created_at": r.created_at,
        "data": r.data,
    })))
}

/// The board a leaderboard request names: `period` (default alltime) with `date` or `week` for a
/// past daily or weekly board.
fn board_of(params: &HashMap<String, String>) -> Result<(String, String), ApiError> {
    let period = params.get("period").map(String::as_str).unwrap_or("alltime");
    let board = match (period, params.get("date"), params.get("week")) {
        ("alltime" | "daily" | "weekly", None, None) => period.to_owned(),
        ("daily", Some(d), None) => {
            chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .map_err(|_| ApiError::BadQuery(format!("date must be YYYY-MM-DD, got {d}")))?;
            format!("daily:{d}")
        }
        ("weekly", None, Some(w)) => {
            let b = w.as_bytes();
            let ok = b.len() == 8
                && b[4] == b'-'
                && b[5] == b'W'
                && w[..4].parse::<u16>().is_ok()
                && w[6..].parse::<u8>().is_ok();
            if !ok {
                return Err(ApiError::BadQuery(format!("week must be YYYY-Www, got {w}")));
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
    Ok((period.to_owned(), board))
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
pub async fn player_rank(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    q: web::Data<QueryState>,
) -> Result<HttpResponse, ApiError> {
    let (game, player) = path.into_inner();
    let (game, player) = (GameId::parse(game)?, PlayerId::parse(player)?);
    let params = query_params(&req)?;
    let (period, board) = board_of(&params)?;
    let around = number(&params, "around", 5, 0, 100)?;
    let key = board_key(&q.prefix, game.as_str(), &board);
    let mut conn = q.boards.clone();
    let rank: Option<usize> = redis::AsyncCommands::zrevrank(&mut conn, &key, player.as_str())
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
        &key,
        isize::try_from(start).unwrap_or(isize::MAX),
        isize::try_from(rank + around).unwrap_or(isize::MAX),
    )
    .await
    .map_err(redis_unavailable)?;
    let score = entries
        .iter()
        .find(|(p, _)| p == player.as_str())
        .map(|(_, s)| *s as i64);
    let entries: Vec<Value> = entries
        .into_iter()
        .enumerate()
        .map(|(i, (p, s))| json!({"rank": start + i + 1, "player_id": p, "score": s as i64}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "game_id": game,
        "period": period,
        "board": board,
        "player_id": player,
        "rank": rank + 1,
        "score": score,
        "entries": entries,
    })))
}

/// `GET /player/{player_id}/events?limit=&before=`: the player's events, newest first. Each page
/// answers a `next_cursor` to pass as `before` for the next one (absent on the last page).
pub async fn player_events(
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
            let ts = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(bad)?;
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
         WHERE player_id = $1 AND (event_timestamp, event_id) < ($2, $3) \
         ORDER BY event_timestamp DESC, event_id DESC LIMIT $4",
    )
    .bind::<Text, _>(player.as_str())
    .bind::<Timestamptz, _>(ts)
    .bind::<SqlUuid, _>(id)
    .bind::<diesel::sql_types::BigInt, _>(fetch)
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
    let events: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({"event_id": r.event_id, "event_type": r.event_type, "game_id": r.game_id,
                   "timestamp": r.event_timestamp, "ingested_at": r.ingested_at, "data": r.data})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"player_id": player, "events": events, "next_cursor": next_cursor})))
}
