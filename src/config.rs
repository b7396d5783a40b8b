//! One typed configuration tree, read from the environment once at start-up.
//!
//! Every field is a `clap` argument backed by an environment variable, so the variables, their
//! defaults and their meaning are listed by `gamemetrics --help` and nowhere else can drift.
//! Nothing reads the environment after this struct is built: it is passed down explicitly.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// The whole configuration of a gamemetrics process.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub http: HttpConfig,
    #[command(flatten)]
    pub kafka: KafkaConfig,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub consumer: ConsumerConfig,
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
    #[command(flatten)]
    pub process: ProcessConfig,
}

/// The HTTP ingestion and query server.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "HTTP")]
pub struct HttpConfig {
    /// Address the HTTP server listens on (port 0 picks a free port).
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// HTTP worker threads; 0 means one per CPU core.
    #[arg(long, env = "HTTP_WORKERS", default_value_t = 0)]
    pub http_workers: usize,

    /// Largest accepted request body (after gzip decompression), in bytes; larger bodies get 413.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Largest accepted batch body (after gzip decompression), in bytes; larger bodies get 413.
    #[arg(long, env = "BATCH_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub batch_max_body_bytes: usize,

    /// Most events accepted in one `POST /api/v1/events/batch`.
    #[arg(long, env = "BATCH_MAX_EVENTS", default_value_t = 1000)]
    pub batch_max_events: usize,

    /// Largest accepted `data` object of one event, serialized, in bytes; larger gets 413.
    #[arg(long, env = "MAX_DATA_BYTES", default_value_t = 16 * 1024)]
    pub max_data_bytes: usize,

    /// How far in the future an event `timestamp` may be, in seconds, to allow for client clock skew.
    #[arg(long, env = "MAX_FUTURE_SKEW_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(0..=366 * 86_400))]
    pub max_future_skew_secs: u64,

    /// Require `Authorization: Bearer <api key>` on ingestion (keys: `gamemetrics keys create`).
    /// Default: true for `serve`, false for `dev`.
    #[arg(long, env = "AUTH_REQUIRED")]
    pub auth_required: Option<bool>,

    /// Require a valid API key on the read endpoints too; a key then reads only its own game's
    /// leaderboards and events (403 / 404 otherwise).
    #[arg(long, env = "QUERY_AUTH_REQUIRED", default_value_t = false)]
    pub query_auth_required: bool,

    /// Which endpoints this deployment serves: `all`, `ingest` (POST events) or `query` (reads).
    /// Health and metrics are always served.
    #[arg(long, env = "HTTP_API", value_enum, default_value_t = HttpApi::All)]
    pub http_api: HttpApi,

    /// Ingest requests per second this instance accepts (token bucket refill rate).
    #[arg(long, env = "RATE_LIMIT_RPS", default_value_t = 10_000)]
    pub rate_limit_rps: u32,

    /// Burst size of the token bucket; 0 means one second's worth (RATE_LIMIT_RPS).
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 0)]
    pub rate_limit_burst: u32,

    /// Requests per second this instance answers that fail authentication, and (in a bucket of
    /// its own) key lookups in PostgreSQL, so keyless traffic and made-up keys can't spend the
    /// keyed clients' RATE_LIMIT_RPS or flood the database; past it: 429. 0 disables both.
    #[arg(long, env = "UNAUTH_RATE_LIMIT_RPS", default_value_t = 200)]
    pub unauth_rate_limit_rps: u32,

    /// Longest time a client may take to send a request body, in milliseconds; past it: 408.
    #[arg(long, env = "BODY_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_read_timeout_ms: u64,

    /// Longest time one request may take from its headers to its answer, in milliseconds; past
    /// it: 408. Keep it above BODY_READ_TIMEOUT_MS plus PRODUCE_TIMEOUT_MS, so that it never
    /// cuts short a produce (whose own timeout answers 503 with the event_id to retry with).
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
}

/// The endpoint groups a `serve` process answers (`HTTP_API`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HttpApi {
    All,
    Ingest,
    Query,
}

impl HttpApi {
    /// Serves `POST /api/v1/events` and the batch endpoint.
    pub fn ingest(self) -> bool {
        self != HttpApi::Query
    }
    /// Serves the read endpoints.
    pub fn query(self) -> bool {
        self != HttpApi::Ingest
    }
}

impl HttpConfig {
    /// BODY_READ_TIMEOUT_MS.
    pub fn body_read_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.body_read_timeout_ms)
    }

    /// REQUEST_TIMEOUT_MS.
    pub fn request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.request_timeout_ms)
    }

    /// Token bucket capacity after applying the "0 means one second's worth" default.
    pub fn burst(&self) -> u32 {
        if self.rate_limit_burst == 0 {
            self.rate_limit_rps
        } else {
            self.rate_limit_burst
        }
    }
}

/// The Kafka cluster, topic and producer.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaConfig {
    /// Bootstrap servers. Default 127.0.0.1:9092; in `dev` mode, unset means an embedded in-process broker.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,

    /// Topic the raw player events are written to and consumed from.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "player.events.raw")]
    pub kafka_topic: String,

    /// Partitions `migrate` creates the topic with (an existing topic is left as it is).
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", default_value_t = 3)]
    pub kafka_topic_partitions: i32,

    /// Retention `migrate` sets on a new topic, in milliseconds (default 7 days).
    #[arg(long, env = "KAFKA_TOPIC_RETENTION_MS", default_value_t = 7 * 24 * 3600 * 1000)]
    pub kafka_topic_retention_ms: u64,

    /// How long a produce may wait for the broker's acknowledgement before the API answers 503.
    #[arg(long, env = "PRODUCE_TIMEOUT_MS", default_value_t = 5_000)]
    pub produce_timeout_ms: u64,

    /// How long the producer waits to batch messages. Every single-event request waits this long
    /// for its ack, so it bounds how many requests a connection serves: at 5 ms, 64 keep-alive
    /// connections saturated below 10,000 requests/s; 1 ms still batches (requests arrive while
    /// a batch is in flight) and kept p99 under 3 ms there (BENCHMARKS.md).
    #[arg(long, env = "KAFKA_LINGER_MS", default_value_t = 1)]
    pub kafka_linger_ms: u64,

    /// Extra librdkafka properties as `key=value` pairs separated by commas, e.g. for TLS or SASL.
    #[arg(long, env = "KAFKA_EXTRA_CONFIG", default_value = "")]
    pub kafka_extra_config: Secret,
}

/// The broker address used when `KAFKA_BROKERS` is unset outside `dev`.
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";

impl KafkaConfig {
    /// The configured brokers, or the documented default.
    pub fn brokers(&self) -> &str {
        self.kafka_brokers.as_deref().unwrap_or(DEFAULT_KAFKA_BROKERS)
    }

    /// The produce timeout as a `Duration`.
    pub fn produce_timeout(&self) -> Duration {
        Duration::from_millis(self.produce_timeout_ms)
    }

    /// `KAFKA_EXTRA_CONFIG` split into pairs; a malformed entry is an error, not ignored.
    pub fn extra_properties(&self) -> Result<Vec<(String, String)>, ConfigError> {
        self.kafka_extra_config
            .expose()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
                // Only the key is safe to show: the value may be a password.
                _ => Err(ConfigError::Invalid {
                    var: "KAFKA_EXTRA_CONFIG",
                    reason: format!(
                        "entry `{}` is not key=value",
                        pair.split('=').next().unwrap_or_default()
                    ),
                }),
            })
            .collect()
    }
}

/// PostgreSQL.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "PostgreSQL")]
pub struct DatabaseConfig {
    /// PostgreSQL connection URL (the password is never logged). Takes libpq's `sslmode`
    /// (disable, prefer (as libpq, when the URL names none), require, verify-ca, verify-full)
    /// and `sslrootcert`. The default is loopback, so it disables TLS.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://gamemetrics:gamemetrics@127.0.0.1:5432/gamemetrics?sslmode=disable"
    )]
    pub database_url: SecretUrl,

    /// PEM bundle of the CAs PostgreSQL's certificate must chain to (e.g. RDS's
    /// global-bundle.pem); wins over the URL's `sslrootcert`. Unset: the system's trust store.
    #[arg(long, env = "DATABASE_CA_FILE")]
    pub database_ca_file: Option<std::path::PathBuf>,

    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 10)]
    pub database_pool_size: u32,
}

/// Redis: stats live in DB 0 and leaderboards in DB 1 of this server.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Redis")]
pub struct RedisConfig {
    /// Redis server URL, without a database number (stats use DB 0, leaderboards DB 1).
    /// `rediss://` is TLS; a password or ACL user goes in it (`rediss://user:token@host:6379`).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: SecretUrl,

    /// PEM bundle of the CAs a `rediss://` server's certificate must chain to; unset: the
    /// system's trust store (enough for ElastiCache, whose certificates chain to Amazon's).
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,

    /// Prefix for every Redis key gamemetrics writes; lets tests (or tenants) share one server.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "")]
    pub redis_key_prefix: String,

    /// A replica the read API reads stats and boards from (ElastiCache's reader endpoint), so
    /// reads don't queue behind the consumers' scripts on the primary; unset: REDIS_URL.
    /// Replication is asynchronous: a read may miss the last milliseconds of writes. Single
    /// Redis only: on a cluster the read API reads the primaries.
    #[arg(long, env = "REDIS_READ_URL")]
    pub redis_read_url: Option<SecretUrl>,

    /// REDIS_URL is a node of a Redis Cluster (ElastiCache with cluster mode on): keys carry
    /// hash tags, stats and boards share DB 0, and each script call stays in one slot (see
    /// docs/redis-keys.md). REDIS_URL may list several nodes, comma-separated.
    #[arg(long, env = "REDIS_CLUSTER", default_value_t = false, action = clap::ArgAction::Set)]
    pub redis_cluster: bool,

    /// Replicas that must hold a batch's writes (Redis `WAIT`) before it counts as applied and
    /// its offset may be committed to Kafka: 1 with a replica per primary, so a failover loses
    /// no counted event; 0 trusts the primary alone. See docs/decisions.md.
    #[arg(long, env = "REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// How long a batch waits for REDIS_WAIT_REPLICAS before it is retried, in ms.
    #[arg(long, env = "REDIS_WAIT_TIMEOUT_MS", default_value_t = 2_000)]
    pub redis_wait_timeout_ms: u64,
}

impl RedisConfig {
    /// The URL of one logical database on the configured server.
    pub fn db_url(&self, db: u8) -> String {
        Self::with_db(&self.redis_url, db)
    }

    /// The URL the read API reads one logical database from: REDIS_READ_URL's, else REDIS_URL's.
    pub fn read_db_url(&self, db: u8) -> String {
        Self::with_db(self.redis_read_url.as_ref().unwrap_or(&self.redis_url), db)
    }

    fn with_db(server: &SecretUrl, db: u8) -> String {
        format!("{}/{db}", server.expose().trim_end_matches('/'))
    }

    /// The nodes a cluster client starts from: REDIS_URL's comma-separated URLs.
    pub fn cluster_nodes(&self) -> Vec<String> {
        self.redis_url
            .expose()
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect()
    }
}

/// The consumer tier: batching, flushing and backpressure.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Consumers")]
pub struct ConsumerConfig {
    /// Events the logger batches into one INSERT (it also flushes every LIVE_FLUSH_MS).
    #[arg(long, env = "LOGGER_FLUSH_EVENTS", default_value_t = 500)]
    pub logger_flush_events: usize,

    /// Events the stats aggregator buffers before one batched upsert into player_statistics.
    #[arg(long, env = "STATS_FLUSH_EVENTS", default_value_t = 100)]
    pub stats_flush_events: usize,

    /// Longest a stats event waits in the buffer before the player_statistics upsert, in ms.
    #[arg(long, env = "STATS_FLUSH_INTERVAL_MS", default_value_t = 30_000)]
    pub stats_flush_interval_ms: u64,

    /// Scoring events between two writes of the top N to the leaderboards table.
    #[arg(long, env = "LEADERBOARD_FLUSH_EVENTS", default_value_t = 50)]
    pub leaderboard_flush_events: usize,

    /// Longest a touched board waits before its top N is written, in ms, so quiet games flush too.
    #[arg(long, env = "LEADERBOARD_FLUSH_INTERVAL_MS", default_value_t = 5_000)]
    pub leaderboard_flush_interval_ms: u64,

    /// Shortest time between two top-N writes of one partition's boards, in ms, however fast
    /// scoring events arrive: the `leaderboards` table is a periodic copy of the live Redis
    /// boards, and each write rewrites every moved rank of every touched board.
    #[arg(long, env = "LEADERBOARD_MIN_FLUSH_GAP_MS", default_value_t = 1_000)]
    pub leaderboard_min_flush_gap_ms: u64,

    /// How many ranks of each board the leaderboards table holds.
    #[arg(long, env = "LEADERBOARD_TOP_N", default_value_t = 100,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub leaderboard_top_n: usize,

    /// How long past daily and weekly boards stay readable in Redis, in days.
    #[arg(long, env = "LEADERBOARD_RETENTION_DAYS", default_value_t = 35)]
    pub leaderboard_retention_days: u32,

    /// Event types that score on the leaderboards, comma-separated.
    #[arg(
        long,
        env = "SCORING_EVENT_TYPES",
        value_delimiter = ',',
        default_value = "player_score,quest_completed,achievement_unlocked,boss_defeated"
    )]
    pub scoring_event_types: Vec<String>,

    /// Longest an event waits before its live effects (events row, Redis stats and scores) are
    /// written, in ms: the micro-batch window that keeps ingest-to-queryable latency low.
    #[arg(long, env = "LIVE_FLUSH_MS", default_value_t = 10)]
    pub live_flush_ms: u64,

    /// Records of a partition a role may hold in memory (read, contents not yet written) before
    /// the partition is paused.
    #[arg(long, env = "PARTITION_MAX_IN_FLIGHT", default_value_t = 10_000)]
    pub partition_max_in_flight: usize,

    /// Records of a partition read but not yet durable (so not committed) before the partition
    /// is paused; past PARTITION_MAX_IN_FLIGHT only where a role holds just a key of them while
    /// a follow-up write runs (the leaderboard's top-N write). Raised to PARTITION_MAX_IN_FLIGHT
    /// if lower.
    #[arg(long, env = "PARTITION_MAX_UNCOMMITTED", default_value_t = 50_000)]
    pub partition_max_uncommitted: usize,

    /// Prefix for the consumer group ids (the seed's names follow it); lets tests or tenants
    /// run separate groups against one cluster.
    #[arg(long, env = "CONSUMER_GROUP_PREFIX", default_value = "")]
    pub consumer_group_prefix: String,

    /// The most records one store write carries (a Redis script call or a PostgreSQL
    /// statement), however many wait: a backlog drains in bounded writes, and a write that times
    /// out is halved and retried rather than repeated whole.
    #[arg(long, env = "SINK_MAX_BATCH", default_value_t = 2000)]
    pub sink_max_batch: usize,

    /// Upper bound of the retry backoff when PostgreSQL or Redis fails, in ms.
    #[arg(long, env = "SINK_RETRY_MAX_MS", default_value_t = 5_000)]
    pub sink_retry_max_ms: u64,

    /// How long an event_id is remembered at least, in seconds: a retry within it counts once
    /// in stats and leaderboards (claims are kept for one to two windows). Costs ~42 bytes of
    /// Redis per event per store (DB 0 and DB 1) for up to twice this long; 0 turns the check
    /// off (`events` still deduplicates). See the README's sizing rule.
    #[arg(long, env = "DEDUP_WINDOW_SECS", default_value_t = 1_800)]
    pub dedup_window_secs: u64,

    /// A consumer's `/readyz` fails once the consumer has not been a settled member of its
    /// group (no coordinator, joining, rebalancing) for this many seconds.
    #[arg(long, env = "READY_GROUP_GRACE_SECS", default_value_t = 30)]
    pub ready_group_grace_secs: u64,

    /// A consumer's `/readyz` fails while its lag has grown, never falling back, for this many
    /// seconds and is above 10,000 records: it is not keeping up.
    #[arg(long, env = "READY_LAG_GROWTH_SECS", default_value_t = 300)]
    pub ready_lag_growth_secs: u64,

    /// Hashes the retry claims of one window are spread over. Keep claims per hash under 128
    /// (Redis's compact listpack encoding): DEDUP_BUCKETS ≥ events/s × DEDUP_WINDOW_SECS / 64.
    /// The default suits 10,000 events/s with the default window; at most 2^24.
    #[arg(long, env = "DEDUP_BUCKETS", default_value_t = 1 << 19)]
    pub dedup_buckets: u32,
}

/// Logging.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Telemetry")]
pub struct TelemetryConfig {
    /// Log output: `json` (one object per line, for log shippers) or `pretty` (for people).
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,

    /// Log filter in `tracing` EnvFilter syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,
}

/// The process itself.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Process")]
pub struct ProcessConfig {
    /// Seconds between handing glibc's freed heap (librdkafka's) back to the OS; 0: never.
    #[arg(long, env = "MALLOC_TRIM_SECS", default_value_t = 10)]
    pub malloc_trim_secs: u64,
}

impl ProcessConfig {
    /// How often the C heap is trimmed (zero: never).
    pub fn malloc_trim_every(&self) -> Duration {
        Duration::from_secs(self.malloc_trim_secs)
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// A configuration value that is wrong in a way clap cannot see.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: {reason}")]
    Invalid { var: &'static str, reason: String },
}

/// A string that never prints: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// The real value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A connection URL whose password is masked whenever it is printed.
#[derive(Clone)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The real URL, password included, for the connection itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for SecretUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretUrl(s.to_owned()))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // scheme://user:password@host/... -> scheme://user:***@host/...
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
            return f.write_str(url);
        };
        match url[scheme_end..].find('@') {
            Some(at) => {
                let userinfo = &url[scheme_end..scheme_end + at];
                let user = userinfo.split(':').next().unwrap_or_default();
                let masked = if userinfo.contains(':') { ":***" } else { "" };
                write!(
                    f,
                    "{}{user}{masked}{}",
                    &url[..scheme_end],
                    &url[scheme_end + at..]
                )
            }
            None => f.write_str(url),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_url_masks_the_password_only() {
        let url: SecretUrl = "postgres://gm:hunter2@db:5432/gm".parse().unwrap();
        assert_eq!(url.to_string(), "postgres://gm:***@db:5432/gm");
        assert!(!format!("{url:?}").contains("hunter2"));
        let no_pw: SecretUrl = "redis://127.0.0.1:6379".parse().unwrap();
        assert_eq!(no_pw.to_string(), "redis://127.0.0.1:6379");
    }

    #[test]
    fn secret_never_prints() {
        let s: Secret = "sasl.password=x".parse().unwrap();
        assert_eq!(format!("{s:?}"), "[redacted]");
    }

    #[test]
    fn extra_properties_parse_and_reject_garbage() {
        let mut cfg = KafkaConfig {
            kafka_brokers: None,
            kafka_topic: "t".into(),
            kafka_topic_partitions: 3,
            kafka_topic_retention_ms: 1,
            produce_timeout_ms: 1,
            kafka_linger_ms: 1,
            kafka_extra_config: "security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512"
                .parse()
                .unwrap(),
        };
        let props = cfg.extra_properties().unwrap();
        assert_eq!(props[0], ("security.protocol".into(), "SASL_SSL".into()));
        assert_eq!(props[1], ("sasl.mechanism".into(), "SCRAM-SHA-512".into()));
        cfg.kafka_extra_config = "nonsense".parse().unwrap();
        assert!(cfg.extra_properties().is_err());
    }
}
