//! `Application`: the HTTP server built from a `Config`, bound before it runs so callers (and
//! tests, which bind port 0) can learn the port.

use crate::config::Config;
use crate::domain::EventLimits;
use crate::http::{self, query::QueryState, AppState};
use crate::kafka::EventProducer;
use crate::metrics::Metrics;
use crate::rate_limit::RateLimiter;
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use std::net::TcpListener;
use std::sync::Arc;

/// A bound, not yet running, HTTP server.
pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    /// Binds `HTTP_ADDR` and builds the server around the given producer.
    pub fn build(config: &Config, producer: EventProducer, metrics: Metrics) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.http.http_addr)?;
        let port = listener.local_addr()?.port();
        let http = &config.http;
        // One key cache for ingestion and reads; the pool connects on the first lookup.
        let keys = Arc::new(crate::auth::KeyStore::new(
            crate::db::pg_pool(&config.database),
            config.http.unauth_rate_limit_rps,
        ));
        let state = web::Data::new(AppState {
            producer,
            limiter: RateLimiter::new(http.rate_limit_rps, http.burst()),
            limits: EventLimits {
                max_data_bytes: http.max_data_bytes,
                max_future_skew: chrono::Duration::seconds(
                    i64::try_from(http.max_future_skew_secs).unwrap_or(i64::MAX),
                ),
            },
            max_body_bytes: http.max_body_bytes,
            batch_max_body_bytes: http.batch_max_body_bytes,
            body_read_timeout: http.body_read_timeout(),
            batch_max_events: http.batch_max_events,
            keys: http.auth_required.unwrap_or(true).then(|| keys.clone()),
            api: http.http_api,
            metrics: metrics.clone(),
        });
        let metrics = web::Data::new(metrics);
        // Pools connect lazily: an ingestion-only deployment never opens a connection.
        let redis_reader = |db| crate::db::redis_reader(&config.redis, db).map_err(std::io::Error::other);
        let queries = web::Data::new(QueryState {
            pg: crate::db::pg_pool(&config.database),
            stats: redis_reader(0)?,
            boards: redis_reader(1)?,
            keys: crate::db::redis_keys::RedisKeys::for_config(&config.redis),
            auth: http.query_auth_required.then(|| keys.clone()),
        });
        let admin = web::Data::new(http::players::AdminState {
            keys: keys.clone(),
            pg: queries.pg.clone(),
        });
        let pipeline = web::Data::new(http::dashboard::pipeline::PipelineProbe::new(
            config,
            queries.pg.clone(),
        ));
        let probe = web::Data::new(http::health::PgProbe::new(queries.pg.clone(), &config.database));
        let api = http.http_api;
        let request_timeout = http.request_timeout();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(metrics.clone())
                .app_data(queries.clone())
                .app_data(probe.clone())
                .app_data(admin.clone())
                .app_data(pipeline.clone())
                .app_data(web::QueryConfig::default().error_handler(http::query::query_error))
                // Inside `observe`, so a request cut short is counted and logged as a 408.
                .wrap(from_fn(move |req, next| {
                    http::deadline(req, next, request_timeout)
                }))
                .wrap(from_fn(http::observe))
                .configure(|cfg| http::routes(cfg, api))
                .default_service(web::to(http::not_found))
        })
        // In-flight produces get their full timeout to finish before the server stops.
        .shutdown_timeout(config.kafka.produce_timeout().as_secs() + 2)
        .listen(listener)?;
        if http.http_workers > 0 {
            server = server.workers(http.http_workers);
        }
        Ok(Application {
            port,
            server: server.run(),
        })
    }

    /// A probe-only server for consumer processes: `/healthz`, `/readyz` and `/metrics` on
    /// `HTTP_ADDR`, so Kubernetes and Prometheus treat every process alike.
    /// `uses_redis`: the roles it runs write Redis, which readiness then pings.
    pub fn build_probes(config: &Config, metrics: Metrics, uses_redis: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.http.http_addr)?;
        let port = listener.local_addr()?.port();
        let metrics = web::Data::new(metrics);
        let redis = match uses_redis {
            true => Some(crate::db::redis_pool(&config.redis, 0).map_err(std::io::Error::other)?),
            false => None,
        };
        let redis = web::Data::new(http::health::RedisProbe(redis));
        let probe = web::Data::new(http::health::PgProbe::new(
            crate::db::pg_pool(&config.database),
            &config.database,
        ));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(metrics.clone())
                .app_data(probe.clone())
                .app_data(redis.clone())
                .wrap(from_fn(http::observe))
                .configure(http::probe_routes)
                .default_service(web::to(http::not_found))
        })
        .workers(1)
        // Signals are the consumer's to handle: it must drain before the process exits.
        .disable_signals()
        .listen(listener)?
        .run();
        Ok(Application { port, server })
    }

    /// The port actually bound (useful when `HTTP_ADDR` asked for port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle to stop the server gracefully.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until the server is stopped by a signal or its handle.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
