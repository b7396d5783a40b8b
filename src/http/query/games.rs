//! `GET /games`: the games there are boards for.

use super::{pg_conn, pg_unavailable, QueryState, ReadErrors, ReadKey};
use crate::http::error::ApiError;
use actix_web::{web, HttpResponse};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;
use utoipa::ToSchema;

/// The games a caller may read.
#[derive(Debug, Serialize, ToSchema)]
pub struct Games {
    /// Games with a stored top N (a game appears with its first scored event's board write), in
    /// name order; with a game's API key, only that game.
    pub games: Vec<String>,
}

/// `GET /games`: the games with leaderboards, as the dashboard's game picker lists them.
#[utoipa::path(
    get, path = "/games", tag = "queries",
    responses((status = 200, description = "The games", body = Games), ReadErrors),
    security((), ("api_key" = []))
)]
pub async fn games(key: ReadKey, q: web::Data<QueryState>) -> Result<HttpResponse, ApiError> {
    use crate::schema::leaderboards::dsl::*;
    if let Some(own) = key.game() {
        return Ok(HttpResponse::Ok().json(Games {
            games: vec![own.to_owned()],
        }));
    }
    let mut conn = pg_conn(&q).await?;
    // The primary key (game_id, player_id, period) serves this as a scan of its leading column.
    let all: Vec<String> = leaderboards
        .select(game_id)
        .distinct()
        .order(game_id)
        .load(&mut conn)
        .await
        .map_err(pg_unavailable)?;
    Ok(HttpResponse::Ok().json(Games { games: all }))
}
