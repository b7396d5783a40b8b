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

/// `GET /healthz`: the process is alive and serving HTTP, and its Kafka producer can still
/// produce. A producer with a fatal error (librdkafka's: a missing ACL for its producer id, a
/// fenced producer) never recovers, so the process answers 503 here for a restart.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses(
        (status = 200, description = "Alive", body = Object, example = json!({"status": "ok"})),
        (status = 503, description = "The Kafka producer failed for good: restart the process", body = super::error::ErrorBody)
    ))]
pub async fn healthz(state: Option<web::Data<AppState>>) -> Result<HttpResponse, ApiError> {
    if let Some(fatal) = state.as_ref().and_then(|s| s.producer.fatal_error()) {
        return Err(ApiError::NotReady(format!(
            "the Kafka producer failed for good and needs a restart: {fatal}"
        )));
    }
    Ok(HttpResponse::Ok().json(json!({"status": "ok"})))
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

/// What readiness knows of PostgreSQL: the process's pool, and how to open a connection of
/// its own to learn why the pool has none (bb8 only says it timed out).
#[derive(Clone)]
pub struct PgProbe {
    pool: crate::db::PgPool,
    database: crate::config::DatabaseConfig,
}

impl PgProbe {
    /// A probe of `pool`, opened from `database`.
    pub fn new(pool: crate::db::PgPool, database: &crate::config::DatabaseConfig) -> Self {
        PgProbe {
            pool,
            database: database.clone(),
        }
    }

    /// Fails when PostgreSQL answers but refuses this process: a certificate that doesn't
    /// verify (wrong CA, another host's name), TLS it requires and we don't use, a wrong
    /// password. Those never heal by waiting. PostgreSQL being down or slow is no failure here:
    /// Kafka holds the events meanwhile, and the sinks retry.
    async fn not_refused(&self) -> Result<&'static str, ApiError> {
        if let Ok(Ok(_)) = tokio::time::timeout(READY_TIMEOUT / 2, self.pool.get()).await {
            return Ok("ok");
        }
        match crate::db::reach_postgres(&self.database, READY_TIMEOUT / 2).await {
            Ok(crate::db::PgReach::Connected) => Ok("ok"),
            Ok(crate::db::PgReach::Unreachable(_)) => Ok("unreachable"),
            Err(e) => Err(ApiError::NotReady(format!(
                "PostgreSQL refused this process: {e}"
            ))),
        }
    }
}

/// `GET /readyz` of a consumer process: 503 while any of its partitions is blocked, while it is
/// not a settled member of its consumer group or its lag keeps growing (reported from
/// librdkafka's statistics, see `actors::source::SourceContext`), or while a store it writes
/// doesn't answer or refuses it.
pub async fn consumer_readyz(
    metrics: web::Data<Metrics>,
    pg: web::Data<PgProbe>,
    redis: web::Data<RedisProbe>,
) -> Result<HttpResponse, ApiError> {
    components_ready(&metrics)?;
    // Unlike ingestion, a consumer has nothing to do without its stores.
    if pg.not_refused().await? != "ok" {
        return Err(ApiError::NotReady("PostgreSQL does not answer".into()));
    }
    let redis = redis.answers().await.map_err(ApiError::NotReady)?;
    Ok(HttpResponse::Ok()
        .json(json!({"status": "ready", "checks": {"consumers": "ok", "postgres": "ok", "redis": redis}})))
}

/// What a consumer's readiness knows of Redis: the pool of a role that writes it, or `None`.
pub struct RedisProbe(pub Option<crate::db::RedisPool>);

impl RedisProbe {
    /// `ok` when Redis answers a PING in time, `unused` for a role without Redis.
    async fn answers(&self) -> Result<&'static str, String> {
        let Some(pool) = &self.0 else {
            return Ok("unused");
        };
        let ping = async {
            let mut conn = pool.get().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(READY_TIMEOUT / 2, ping).await {
            Ok(Ok(_)) => Ok("ok"),
            Ok(Err(e)) => Err(format!("Redis: {e}")),
            Err(_) => Err("Redis does not answer".into()),
        }
    }
}

/// `GET /readyz`: the broker answers a metadata request for the topic, PostgreSQL doesn't refuse
/// this process (see [`PgProbe`]), and no component of the process (the consumers of `dev`)
/// reports a problem; 503 otherwise. A query-only process
/// doesn't need Kafka: its stores answer 503 per request when down.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready to take traffic", body = Object),
        (status = 503, description = "Kafka is not reachable or refuses this process (credentials, ACLs), PostgreSQL refuses it (TLS, login), or a consumer partition is blocked", body = super::error::ErrorBody)
    ))]
pub async fn readyz(
    state: web::Data<AppState>,
    metrics: web::Data<Metrics>,
    pg: web::Data<PgProbe>,
) -> Result<HttpResponse, ApiError> {
    components_ready(&metrics)?;
    let postgres = pg.not_refused().await?;
    if !state.api.ingest() {
        return Ok(HttpResponse::Ok().json(json!({"status": "ready", "checks": {"postgres": postgres}})));
    }
    state
        .producer
        .check_ready(READY_TIMEOUT)
        .await
        .map_err(ApiError::NotReady)?;
    Ok(HttpResponse::Ok().json(json!({"status": "ready", "checks": {"kafka": "ok", "postgres": postgres}})))
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String)))]
pub async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics.render())
}
