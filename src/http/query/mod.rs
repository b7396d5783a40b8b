//! Read endpoints: player stats ([`stats`]) and leaderboards ([`boards`]) from Redis
//! (PostgreSQL when Redis lacks them), events ([`events`]) from PostgreSQL. Every answer is one
//! of the typed bodies in those modules, and every query string is read by the parameter struct
//! the OpenAPI document shows (`/openapi.json`), so the contract and the code can't drift apart.

pub mod boards;
pub mod events;
pub mod games;
pub mod stats;

pub use boards::{leaderboard, player_rank};
pub use events::{event, player_events};
pub use games::games;
pub use stats::player_stats;

use super::error::{ApiError, ErrorBody};
use crate::auth::{Authenticated, KeyStore};
use crate::db::redis_keys::RedisKeys;
use crate::db::PgPool;
use crate::domain::GameId;
use crate::metrics::Metrics;
use actix_web::{web, FromRequest, HttpRequest};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::AsyncPgConnection;
use std::sync::Arc;

/// The stores the read endpoints use.
pub struct QueryState {
    pub pg: PgPool,
    pub stats: crate::db::RedisReader,
    pub boards: crate::db::RedisReader,
    pub keys: RedisKeys,
    /// Present when QUERY_AUTH_REQUIRED is on.
    pub auth: Option<Arc<KeyStore>>,
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

/// Turns a query string that doesn't fit its parameter struct into the API's 400.
pub fn query_error(e: actix_web::error::QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    ApiError::BadQuery(format!("query string: {e}")).into()
}

/// `value`, or `default` when absent, checked to lie in `min..=max`.
fn bounded(name: &str, value: Option<u32>, default: u32, min: u32, max: u32) -> Result<u32, ApiError> {
    match value {
        None => Ok(default),
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::BadQuery(format!(
            "{name} must be an integer from {min} to {max}, got {n}"
        ))),
    }
}

/// The caller's API key on a read: `Some` when QUERY_AUTH_REQUIRED is on (401 without a valid
/// one), `None` when reads are open.
pub struct ReadKey(Option<Authenticated>);

impl ReadKey {
    /// 403 unless reads are open, the key belongs to `game`, or it is an admin key.
    pub(crate) fn may_read(&self, game: &GameId) -> Result<(), ApiError> {
        match &self.0 {
            Some(k) if !k.scope.may_read(game.as_str()) => Err(ApiError::Forbidden(format!(
                "this API key may not read game {game}"
            ))),
            _ => Ok(()),
        }
    }

    /// The one game a keyed caller may see; `None` when reads are open or the key is an admin's.
    pub(crate) fn game(&self) -> Option<&str> {
        self.0.as_ref().and_then(|k| k.scope.game())
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
                .and_then(|q| q.auth.clone());
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
    /// QUERY_AUTH_REQUIRED is on and too many requests failed authentication; see Retry-After.
    #[response(status = 429)]
    TooManyRequests(ErrorBody),
    /// Redis or PostgreSQL is unavailable; retry.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}
