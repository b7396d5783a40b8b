//! The HTTP tier: routes, shared state, and the middleware that gives every request a span and
//! a line in the metrics.
//!
//! | route                    | handler               |
//! |--------------------------|-----------------------|
//! | `POST /api/v1/events`    | [`ingest::ingest_event`] |
//! | `GET /healthz`           | [`health::healthz`]   |
//! | `GET /readyz`            | [`health::readyz`]    |
//! | `GET /metrics`           | [`health::metrics`]   |
//! | `GET /player/{id}/stats` | [`query::player_stats`] |
//! | `GET /games/{id}/leaderboard` | [`query::leaderboard`] |
//! | `GET /events/{id}`       | [`query::event`]      |
//! | `GET /player/{id}/events`, `GET /games/{id}/leaderboard/players/{pid}`, `POST /api/v1/events/batch` | see [`openapi`] |
//! | `GET /games`, `GET /dashboard` (and its assets and live streams) | [`query::games()`], [`dashboard`] |
//! | `DELETE /players/{id}`   | [`players::forget_player`] (admin keys) |
//! | `GET /openapi.json`, `GET /docs` | [`openapi`] |

pub mod dashboard;
pub mod error;
pub mod health;
pub mod ingest;
pub mod openapi;
pub mod players;
pub mod query;

use crate::auth::{AuthError, Authenticated, KeyStore};
use crate::config::HttpApi;
use crate::domain::EventLimits;
use crate::kafka::EventProducer;
use crate::metrics::Metrics;
use crate::rate_limit::RateLimiter;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use error::ApiError;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// What every handler shares.
pub struct AppState {
    pub producer: EventProducer,
    pub limiter: RateLimiter,
    pub limits: EventLimits,
    pub max_body_bytes: usize,
    pub batch_max_body_bytes: usize,
    /// BODY_READ_TIMEOUT_MS.
    pub body_read_timeout: std::time::Duration,
    pub batch_max_events: usize,
    /// Present when ingestion requires an API key.
    pub keys: Option<Arc<KeyStore>>,
    /// Which endpoint groups this process serves (readiness checks Kafka only for ingestion).
    pub api: HttpApi,
    pub metrics: Metrics,
}

/// Registers the routes of the endpoint groups `api` selects, plus health and metrics.
pub fn routes(cfg: &mut web::ServiceConfig, api: HttpApi) {
    if api.ingest() {
        cfg.service(
            web::resource("/api/v1/events/batch")
                .route(web::post().to(ingest::ingest_batch))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/events")
                .route(web::post().to(ingest::ingest_event))
                .default_service(web::to(method_not_allowed)),
        )
        // With ingestion: forgetting writes a record to the topic.
        .service(
            web::resource("/players/{player_id}")
                .route(web::delete().to(players::forget_player))
                .default_service(web::to(method_not_allowed)),
        );
    }
    if api.query() {
        cfg.route("/player/{player_id}/stats", web::get().to(query::player_stats))
            .route("/player/{player_id}/events", web::get().to(query::player_events))
            .route("/games/{game_id}/leaderboard", web::get().to(query::leaderboard))
            .route(
                "/games/{game_id}/leaderboard/players/{player_id}",
                web::get().to(query::player_rank),
            )
            .route("/events/{event_id}", web::get().to(query::event))
            .route("/games", web::get().to(query::games))
            .route("/dashboard", web::get().to(dashboard::page))
            .route("/dashboard/app.js", web::get().to(dashboard::script))
            .route("/dashboard/app.css", web::get().to(dashboard::style))
            .route("/dashboard/live/board", web::get().to(dashboard::live_board))
            .route(
                "/dashboard/live/pipeline",
                web::get().to(dashboard::live_pipeline),
            );
    }
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .route("/openapi.json", web::get().to(openapi::openapi_json))
        .route("/docs", web::get().to(openapi::docs));
}

/// Checks an `Authorization` header against the key store, counting failures by reason
/// (never logging the key).
pub async fn authenticate(
    req: &HttpRequest,
    keys: &KeyStore,
    metrics: &Metrics,
) -> Result<Authenticated, ApiError> {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    keys.authenticate(header).await.map_err(|e| {
        let reason = match e {
            AuthError::Store(_) => return ApiError::StoreUnavailable(e.to_string()),
            AuthError::Throttled(retry_after) => {
                metrics.rate_limited.inc();
                return ApiError::RateLimited { retry_after };
            }
            AuthError::Missing => "missing",
            AuthError::Invalid => "invalid",
        };
        metrics.auth_failures.with_label_values(&[reason]).inc();
        ApiError::Unauthorized(e.to_string())
    })
}

/// The routes of a consumer process: liveness (also used as readiness) and metrics.
pub fn probe_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::consumer_readyz))
        .route("/metrics", web::get().to(health::metrics));
}

/// Anything no route matched: a JSON 404 rather than actix's empty body.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    // Any token is a method: echo a bounded part of it.
    Err(ApiError::MethodNotAllowed(
        req.method().as_str().chars().take(32).collect(),
    ))
}

/// The `method` label: the methods of RFC 9110 and PATCH, every other one `other`. A client may
/// send any token as a method, and each distinct label value is a series kept for the life of
/// the process: taken from the request, it was an unauthenticated memory leak.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Answers 408 to a request that takes longer than `limit` in all (REQUEST_TIMEOUT_MS), so no
/// request, whatever it waits on, holds its connection and worker slot forever.
pub async fn deadline(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
    limit: std::time::Duration,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    match tokio::time::timeout(limit, next.call(req)).await {
        Ok(res) => res,
        Err(_) => Err(ApiError::RequestTimeout(format!(
            "the request took longer than {} ms (REQUEST_TIMEOUT_MS)",
            limit.as_millis()
        ))
        .into()),
    }
}

/// Opens the request span (handlers add `event_id` to it) and records count and latency.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let method = method_label(req.method());
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    // DEBUG, as tower-http's request spans: at INFO, JSON-formatted span fields and their
    // updates cost ~5 us a request, a third of an ingest's CPU (docs/decisions.md). The lines a
    // request logs at INFO and above name its route and status themselves.
    let span = tracing::debug_span!(
        "http_request",
        %method,
        route = tracing::field::Empty,
        event_id = tracing::field::Empty,
        status = tracing::field::Empty
    );
    let started = Instant::now();
    let res = next.call(req).instrument(span.clone()).await;
    let (status, route) = match &res {
        // The route pattern, not the path, keeps metric label cardinality bounded. Asked after
        // routing, it is a lookup of the matched resource; asked before, actix would run every
        // route's pattern over the path a second time (a sixth of the read path's CPU in perf).
        Ok(r) => (r.status(), r.request().match_pattern()),
        Err(e) => (e.as_response_error().status_code(), None),
    };
    let route = route.unwrap_or_else(|| "unmatched".to_owned());
    span.record("route", route.as_str());
    span.record("status", status.as_u16());
    if let Some(m) = metrics {
        m.http_requests
            .with_label_values(&[route.as_str(), method, status.as_str()])
            .inc();
        m.http_latency
            .with_label_values(&[route.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }
    if status.is_server_error() {
        tracing::warn!(parent: &span, %method, route = route.as_str(), status = status.as_u16(), "request failed");
    }
    res
}
