//! Prometheus metrics: one registry per process, served at `GET /metrics`, and the readiness
//! problems components report for `GET /readyz` ([`Health`]).
//!
//! Collectors are cheap `Arc` handles, so `Metrics` is cloned into whatever records them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The process's metrics and the registry that serves them.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route pattern, method and status code.
    pub http_requests: IntCounterVec,
    /// Time from request start to response, by route pattern.
    pub http_latency: HistogramVec,
    /// Time from handing an event to the producer to the broker's acknowledgement (or failure).
    pub produce_latency: Histogram,
    /// Produces that failed, by reason (`timeout`, `queue_full`, `kafka`).
    pub produce_errors: IntCounterVec,
    /// Requests refused with 429 by the instance rate limiter.
    pub rate_limited: IntCounter,
    /// Ingest requests refused by authentication, by reason (`missing`, `invalid`, `wrong_game`).
    pub auth_failures: IntCounterVec,
    /// Records read from Kafka, by consumer service.
    pub consumer_records: IntCounterVec,
    /// Records applied by a sink write, by consumer service and sink.
    pub consumer_applied: IntCounterVec,
    /// Records a sink skipped because their offset was already applied (redeliveries).
    pub consumer_duplicates: IntCounterVec,
    /// Records sent to the DLQ, by consumer service.
    pub consumer_dlq: IntCounterVec,
    pub consumer_forgotten: IntCounterVec,
    pub consumer_rejected: IntCounterVec,
    /// Sink write latency, by consumer service and sink.
    pub consumer_flush_latency: HistogramVec,
    /// Records per sink write, by consumer service and sink.
    pub consumer_flush_size: HistogramVec,
    /// Time from `ingested_at` to the event being durable in a store, by consumer service and
    /// sink: the `events` row (logger, postgres), the player's Redis stats (stats, redis), the
    /// player's Redis board score (leaderboard, redis).
    pub consumer_e2e_latency: HistogramVec,
    /// 1 while a partition is paused for backpressure, by consumer service and partition.
    pub consumer_paused: IntGaugeVec,
    /// Records read and held in memory, contents not yet written (what PARTITION_MAX_IN_FLIGHT
    /// bounds), by service and partition.
    pub consumer_in_flight: IntGaugeVec,
    /// Records read but not yet durable, so not yet committed (what PARTITION_MAX_UNCOMMITTED
    /// bounds), by service and partition.
    pub consumer_uncommitted: IntGaugeVec,
    /// Records on the broker not yet read, from librdkafka statistics, by service and partition.
    pub consumer_lag: IntGaugeVec,
    /// 1 while a partition is not consumed because it can't be told which log its offsets
    /// belong to, by service and partition (the reason is in `/readyz` and the logs).
    pub consumer_blocked: IntGaugeVec,
    /// Store writes that failed (and will be retried), by consumer service and sink.
    pub consumer_write_failures: IntCounterVec,
    /// Problems keeping this process from being ready (what `/readyz` lists), at scrape time.
    pub health_problems: IntGauge,
    /// What keeps this process from being ready, by component.
    pub health: Health,
}

/// Problems components report while they can't do their work; `/readyz` answers 503 while any
/// is reported. Shared by clones.
#[derive(Clone, Default)]
pub struct Health(Arc<Mutex<BTreeMap<String, String>>>);

impl Health {
    /// Reports (or updates) `component`'s problem; answers true if it was not reported before.
    pub fn set(&self, component: &str, problem: String) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(component.to_owned(), problem).is_none()
    }

    /// `component` works again; answers true if it had a problem.
    pub fn clear(&self, component: &str) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(component).is_some()
    }

    /// Every reported problem, by component.
    pub fn problems(&self) -> BTreeMap<String, String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Metrics {
    /// Creates and registers every collector.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("gamemetrics".into()), None)?;
        // 100 µs .. ~3.3 s: ingest answers in milliseconds, a produce timeout in seconds.
        let buckets = exponential_buckets(0.0001, 2.0, 16)?;
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests answered"),
            &["route", "method", "status"],
        )?;
        let http_latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency")
                .buckets(buckets.clone()),
            &["route"],
        )?;
        let produce_latency = Histogram::with_opts(
            HistogramOpts::new(
                "kafka_produce_duration_seconds",
                "Kafka produce latency until acks=all",
            )
            .buckets(buckets),
        )?;
        let produce_errors = IntCounterVec::new(
            Opts::new("kafka_produce_errors_total", "Failed Kafka produces"),
            &["reason"],
        )?;
        let rate_limited =
            IntCounter::new("http_rate_limited_total", "Requests refused by the rate limiter")?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_latency.clone()))?;
        registry.register(Box::new(produce_latency.clone()))?;
        registry.register(Box::new(produce_errors.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        let auth_failures = IntCounterVec::new(
            Opts::new("auth_failures_total", "Ingest requests refused by authentication"),
            &["reason"],
        )?;
        registry.register(Box::new(auth_failures.clone()))?;
        let by_service =
            |name: &str, help: &str, labels: &[&str]| IntCounterVec::new(Opts::new(name, help), labels);
        let consumer_records = by_service("consumer_records_total", "Records read from Kafka", &["service"])?;
        let consumer_applied = by_service(
            "consumer_applied_total",
            "Records applied by sinks",
            &["service", "sink"],
        )?;
        let consumer_duplicates = by_service(
            "consumer_duplicates_skipped_total",
            "Redelivered records skipped",
            &["service", "sink"],
        )?;
        let consumer_dlq = by_service("consumer_dlq_total", "Records sent to the DLQ", &["service"])?;
        let consumer_rejected = by_service(
            "consumer_rejected_records_total",
            "Records a store refused for their content, dead-lettered alone",
            &["service", "sink"],
        )?;
        let consumer_forgotten = by_service(
            "consumer_forgotten_records_total",
            "Records of forgotten players dropped unapplied",
            &["service"],
        )?;
        let consumer_write_failures = by_service(
            "consumer_write_failures_total",
            "Store writes that failed and will be retried",
            &["service", "sink"],
        )?;
        registry.register(Box::new(consumer_write_failures.clone()))?;
        let health_problems = IntGauge::new(
            "health_problems",
            "Problems keeping this process from being ready (see /readyz)",
        )?;
        registry.register(Box::new(health_problems.clone()))?;
        let consumer_flush_latency = HistogramVec::new(
            HistogramOpts::new("consumer_flush_duration_seconds", "Sink write latency")
                .buckets(exponential_buckets(0.0001, 2.0, 16)?),
            &["service", "sink"],
        )?;
        let consumer_flush_size = HistogramVec::new(
            HistogramOpts::new("consumer_flush_records", "Records per sink write")
                .buckets(exponential_buckets(1.0, 2.0, 14)?),
            &["service", "sink"],
        )?;
        let consumer_e2e_latency = HistogramVec::new(
            HistogramOpts::new(
                "consumer_end_to_end_seconds",
                "From ingested_at to durable in the sink",
            )
            .buckets(exponential_buckets(0.001, 2.0, 16)?),
            &["service", "sink"],
        )?;
        let consumer_paused = IntGaugeVec::new(
            Opts::new("consumer_partition_paused", "1 while paused for backpressure"),
            &["service", "partition"],
        )?;
        registry.register(Box::new(consumer_records.clone()))?;
        registry.register(Box::new(consumer_applied.clone()))?;
        registry.register(Box::new(consumer_duplicates.clone()))?;
        registry.register(Box::new(consumer_dlq.clone()))?;
        registry.register(Box::new(consumer_forgotten.clone()))?;
        registry.register(Box::new(consumer_rejected.clone()))?;
        registry.register(Box::new(consumer_flush_latency.clone()))?;
        registry.register(Box::new(consumer_flush_size.clone()))?;
        registry.register(Box::new(consumer_e2e_latency.clone()))?;
        registry.register(Box::new(consumer_paused.clone()))?;
        let gauge =
            |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["service", "partition"]);
        let consumer_in_flight = gauge(
            "consumer_in_flight_records",
            "Records read and held in memory, their contents not yet written",
        )?;
        let consumer_uncommitted = gauge(
            "consumer_uncommitted_records",
            "Records read but not yet durable, so not yet committed",
        )?;
        let consumer_lag = gauge("consumer_lag_records", "Records on the broker not yet read")?;
        registry.register(Box::new(consumer_in_flight.clone()))?;
        registry.register(Box::new(consumer_uncommitted.clone()))?;
        registry.register(Box::new(consumer_lag.clone()))?;
        let consumer_blocked = gauge(
            "consumer_partition_blocked",
            "1 while a partition is not consumed: its offsets can't be tied to its log",
        )?;
        registry.register(Box::new(consumer_blocked.clone()))?;
        Ok(Metrics {
            registry,
            http_requests,
            http_latency,
            produce_latency,
            produce_errors,
            rate_limited,
            auth_failures,
            consumer_records,
            consumer_applied,
            consumer_duplicates,
            consumer_dlq,
            consumer_forgotten,
            consumer_rejected,
            consumer_flush_latency,
            consumer_flush_size,
            consumer_e2e_latency,
            consumer_paused,
            consumer_in_flight,
            consumer_uncommitted,
            consumer_lag,
            consumer_blocked,
            consumer_write_failures,
            health_problems,
            health: Health::default(),
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.health_problems
            .set(i64::try_from(self.health.problems().len()).unwrap_or(i64::MAX));
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
