//! `GET /events/{event_id}` and `GET /player/{player_id}/events`: rows of `events`.

use super::{bounded, pg_conn, pg_unavailable, QueryState, ReadErrors, ReadKey};
use crate::db;
use crate::domain::PlayerId;
use crate::http::error::{ApiError, ErrorBody};
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

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

/// Paging of `GET /player/{player_id}/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventPageParams {
    /// Events per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    before: Option<String>,
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
    let mut pg = pg_conn(&q).await?;
    let rows = db::events::by_id(&mut pg, id).await.map_err(pg_unavailable)?;
    // Another game's event is "not found" for a keyed caller: a 403 would confirm it exists.
    // Ids are unique per game; with two games sharing one, an open read answers the first stored.
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

/// The cursor `<event_timestamp in µs since the epoch>_<event_id>` of the last event seen.
fn cursor(c: &str) -> Result<(DateTime<Utc>, uuid::Uuid), ApiError> {
    let bad = || ApiError::BadQuery(format!("before must be a cursor from a previous page, got {c}"));
    let (micros, id) = c.split_once('_').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    // Event timestamps are RFC 3339, years 0 to 9999; beyond that PostgreSQL can't even hold the
    // value, and the query would fail as if the store were down.
    let ts = DateTime::<Utc>::from_timestamp_micros(micros)
        .filter(|t| (0..=9999).contains(&chrono::Datelike::year(t)))
        .ok_or_else(bad)?;
    Ok((ts, uuid::Uuid::parse_str(id).map_err(|_| bad())?))
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
    path: web::Path<String>,
    page: web::Query<EventPageParams>,
    q: web::Data<QueryState>,
) -> Result<HttpResponse, ApiError> {
    let player = PlayerId::parse(path.into_inner())?;
    let limit = bounded("limit", page.limit, 20, 1, 100)? as usize;
    let before = match &page.before {
        None => (DateTime::<Utc>::MAX_UTC, uuid::Uuid::max()),
        Some(c) => cursor(c)?,
    };
    let mut pg = pg_conn(&q).await?;
    // One more than asked tells whether there is a next page.
    let fetch = i64::try_from(limit + 1).unwrap_or(101);
    let mut rows = db::events::of_player(&mut pg, player.as_str(), before, key.game(), fetch)
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
