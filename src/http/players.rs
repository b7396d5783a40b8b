//! `DELETE /players/{player_id}`: forget a player (GDPR article 17), admin keys only. See
//! [`crate::forget`].

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::auth::KeyScope;
use crate::db::PgPool;
use crate::domain::PlayerId;
use crate::forget::{self, ForgetError, Via};
use actix_web::{web, HttpRequest, HttpResponse};
use std::sync::Arc;

/// What the admin endpoints need besides the producer: the key store (admin keys are required
/// whatever INGEST_AUTH_REQUIRED and QUERY_AUTH_REQUIRED say) and PostgreSQL.
pub struct AdminState {
    pub keys: Arc<crate::auth::KeyStore>,
    pub pg: PgPool,
}

/// A forget request's answer: `forgetting` until the three consumer roles have removed the
/// player, then `forgotten`, with what each removed (null: not yet).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ForgetAnswer {
    /// `forgetting` or `forgotten`.
    status: String,
    /// True for the request that made the tombstone.
    first_request: bool,
    player_id: String,
    forgotten_at: chrono::DateTime<chrono::Utc>,
    /// The admin key's id, or `cli:<user>`.
    requested_by: String,
    events_removed: Option<i64>,
    dlq_removed: Option<i64>,
    logger_done_at: Option<chrono::DateTime<chrono::Utc>>,
    statistics_removed: Option<i64>,
    stats_done_at: Option<chrono::DateTime<chrono::Utc>>,
    leaderboard_rows_removed: Option<i64>,
    leaderboard_done_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `DELETE /players/{player_id}`: removes the player's events, stats, leaderboard entries and
/// dead letters everywhere, and drops their events from now on (a forgotten id is never counted
/// again). Idempotent: 202 while the consumers are removing, 200 once all have.
#[utoipa::path(
    delete, path = "/players/{player_id}", tag = "admin",
    params(("player_id" = String, Path, description = "Player", example = "player-1")),
    responses(
        (status = 200, description = "Forgotten: every store has removed the player", body = ForgetAnswer),
        (status = 202, description = "Accepted: the consumers are removing the player; ask again to follow", body = ForgetAnswer),
        (status = 400, description = "Not a valid player id", body = ErrorBody),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 503, description = "PostgreSQL or Kafka unavailable; ask again", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn forget_player(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    admin: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    let key = super::authenticate(&req, &admin.keys, &state.metrics).await?;
    if key.scope != KeyScope::Admin {
        return Err(ApiError::Forbidden(
            "forgetting a player needs an admin key (gamemetrics keys create --admin)".into(),
        ));
    }
    let player = PlayerId::parse(path.into_inner())?;
    let mut conn = admin
        .pg
        .get()
        .await
        .map_err(|e| ApiError::StoreUnavailable(format!("PostgreSQL: {e}")))?;
    let answer = forget::forget(
        &mut conn,
        &state.producer,
        player.as_str(),
        &key.key_id,
        Via::Http,
    )
    .await
    .map_err(|e| match e {
        ForgetError::Postgres(_) => ApiError::StoreUnavailable(e.to_string()),
        ForgetError::Kafka(_) => ApiError::NotReady(e.to_string()),
    })?;
    let mut res = if answer.complete() {
        HttpResponse::Ok()
    } else {
        HttpResponse::Accepted()
    };
    Ok(res.json(answer))
}
