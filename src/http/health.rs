//! Liveness, readiness and metrics endpoints, for Kubernetes probes and Prometheus.

use super::error::ApiError;
use super::AppState;
use crate::metrics::Metrics;
use actix_web::{web, HttpResponse};
use serde_json::json;
use std::time::Duration;

/// How long readiness waits for the broker. A metadata round trip under load can pass a second,
/// so probes of `/readyz` should allow 3 s (Kubernetes' default timeout is 1 s).
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: the process is alive and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Object, example = json!({"status": "ok"}))))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Fails with the problems components of this process report (a consumer partition that can't
/// be consumed safely), if any.
fn components_ready(metrics: &Metrics) -> Result<(), ApiError> {
    let problems = metrics.health.problems();
    if problems.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = problems.into_iter().map(|(c, p)| format!("{c}: {p}")).collect();
    Err(ApiError::NotReady(list.join("; ")))
}

/// `GET /readyz` of a consumer process: 503 while any of its partitions is blocked.
pub async fn consumer_readyz(metrics: web::Data<Metrics>) -> Result<HttpResponse, ApiError> {
    components_ready(&metrics)?;
    Ok(HttpResponse::Ok().json(json!({"status": "ready", "checks": {"consumers": "ok"}})))
}

/// `GET /readyz`: the broker answers a metadata request for the topic, and no component of the
/// process (the consumers of `dev`) reports a problem; 503 otherwise. A query-only process
/// doesn't need Kafka: its stores answer 503 per request when down.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready to take traffic", body = Object),
        (status = 503, description = "Kafka is not reachable, or a consumer partition is blocked", body = super::error::ErrorBody)
    ))]
pub async fn readyz(
    state: web::Data<AppState>,
    metrics: web::Data<Metrics>,
) -> Result<HttpResponse, ApiError> {
    components_ready(&metrics)?;
    if !state.api.ingest() {
        return Ok(HttpResponse::Ok().json(json!({"status": "ready", "checks": {}})));
    }
    state
        .producer
        .check_ready(READY_TIMEOUT)
        .await
        .map_err(|e| ApiError::NotReady(e.to_string()))?;
    Ok(HttpResponse::Ok().json(json!({"status": "ready", "checks": {"kafka": "ok"}})))
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String)))]
pub async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics.render())
}
