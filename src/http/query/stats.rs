//! `GET /player/{player_id}/stats`.

use super::{pg_conn, pg_unavailable, redis_unavailable, QueryState, ReadErrors, ReadKey};
use crate::db;
use crate::domain::PlayerId;
use crate::http::error::{ApiError, ErrorBody};
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use utoipa::ToSchema;

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
    let mut conn = q.stats.conn().await.map_err(redis_unavailable)?;
    let hash: HashMap<String, String> =
        redis::AsyncCommands::hgetall(&mut conn, q.keys.player_stats(player.as_str()))
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
    let mut pg = pg_conn(&q).await?;
    let Some(row) = db::stats::of_player(&mut pg, player.as_str())
        .await
        .map_err(pg_unavailable)?
    else {
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
