//! Prometheus metrics: one registry per process, served at `GET /metrics`.
//!
//! Collectors are cheap `Arc` handles, so `Metrics` is cloned into whatever records them.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
    Registry, TextEncoder,
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
        Ok(Metrics {
            registry,
            http_requests,
            http_latency,
            produce_latency,
            produce_errors,
            rate_limited,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
