//! `spawn_app()` and friends: the real application on port 0 against a throwaway topic.

use clap::Parser;
use gamemetrics::app::Application;
use gamemetrics::config::Config;
use gamemetrics::kafka::{self, EventProducer, TopicSpec};
use gamemetrics::metrics::Metrics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct TestCli {
    #[command(flatten)]
    config: Config,
}

/// The configuration a test starts from: the environment's (as `scripts/test` sets it up),
/// with a free port and a topic of its own.
pub fn test_config() -> Config {
    let mut config = TestCli::parse_from(["gamemetrics-test"]).config;
    config.http.http_addr = "127.0.0.1:0".parse().expect("literal address");
    config.http.http_workers = 1;
    // Ingestion tests post without keys; tests/api/auth.rs turns authentication on.
    config.http.auth_required = Some(false);
    config.kafka.kafka_topic = format!("test-{}", uuid::Uuid::new_v4());
    config.telemetry.log_filter = "warn".into();
    config
}

/// A running app and what a test needs to talk to it.
pub struct TestApp {
    pub address: String,
    pub config: Config,
    pub client: reqwest::Client,
}

/// Starts the app with default test configuration on a fresh topic.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the app after letting the test adjust its configuration.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config();
    adjust(&mut config);
    gamemetrics::telemetry::init(&config.telemetry);
    create_topic(&config).await;
    start_app(config)
}

/// Starts the app on `config` as it is, its topic already there.
pub fn start_app(config: Config) -> TestApp {
    let metrics = Metrics::new().expect("metrics register");
    let producer = EventProducer::new(&config.kafka, metrics.clone()).expect("producer config");
    let app = Application::build(&config, producer, metrics).expect("bind port 0");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder()
        // Far above any produce timeout a test sets: a hang fails the test instead of blocking it.
        .timeout(Duration::from_secs(60))
        // Below actix's 5 s keep-alive, so the client never reuses a connection the server closed.
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    TestApp {
        address,
        config,
        client,
    }
}

/// Creates the config's topic on the real broker, unless it is unreachable on purpose.
pub async fn create_topic(config: &Config) {
    if config.kafka.brokers() == UNREACHABLE_BROKER {
        return;
    }
    kafka::ensure_topic(&config.kafka, &TopicSpec::from_config(&config.kafka))
        .await
        .expect("create test topic on the real broker");
}

/// An address where no broker listens.
pub const UNREACHABLE_BROKER: &str = "127.0.0.1:1";

impl TestApp {
    /// POSTs a JSON value to the ingest endpoint.
    pub async fn post_event(&self, body: &serde_json::Value) -> reqwest::Response {
        self.post_raw(body.to_string(), "application/json").await
    }

    /// POSTs a JSON array of events to the batch endpoint.
    pub async fn post_batch(&self, events: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(format!("{}/api/v1/events/batch", self.address))
            .header("Content-Type", "application/json")
            .body(events.to_string())
            .send()
            .await
            .expect("request reaches the app")
    }

    /// POSTs raw bytes with a given content type.
    pub async fn post_raw(&self, body: impl Into<reqwest::Body>, content_type: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/api/v1/events", self.address))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .expect("request reaches the app")
    }

    /// GETs a path.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request reaches the app")
    }

    /// Reads every message on the test topic until `expected` arrived or `deadline` passed.
    pub fn read_topic(&self, expected: usize, deadline: Duration) -> Vec<TopicMessage> {
        read_topic(&self.config, expected, deadline)
    }
}

/// One message read back from the topic.
#[derive(Debug)]
pub struct TopicMessage {
    pub partition: i32,
    pub key: Option<String>,
    pub headers: HashMap<String, String>,
    pub value: serde_json::Value,
}

/// Reads the config's topic from the beginning with a plain consumer.
pub fn read_topic(config: &Config, expected: usize, deadline: Duration) -> Vec<TopicMessage> {
    let consumer: BaseConsumer = kafka::client_config(&config.kafka)
        .expect("client config")
        .set("group.id", format!("test-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(&config.kafka.kafka_topic), Duration::from_secs(10))
        .expect("topic metadata");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(&config.kafka.kafka_topic, p.id(), Offset::Beginning)
            .expect("offset");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let start = Instant::now();
    while out.len() < expected && start.elapsed() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.expect("consume");
        let headers = msg
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(TopicMessage {
            partition: msg.partition(),
            key: msg.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            value: serde_json::from_slice(msg.payload().unwrap_or_default()).expect("value is JSON"),
        });
    }
    out
}

/// Total messages on the topic, from the partitions' high watermarks.
pub fn topic_message_count(config: &Config) -> i64 {
    let consumer: BaseConsumer = kafka::client_config(&config.kafka)
        .expect("client config")
        .set("group.id", "test-watermarks")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(&config.kafka.kafka_topic), Duration::from_secs(10))
        .expect("topic metadata");
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(&config.kafka.kafka_topic, p.id(), Duration::from_secs(10))
                .expect("watermarks");
            high - low
        })
        .sum()
}

/// Kafka's Java `Utils.murmur2`, written out independently of librdkafka, to check that our
/// producer places keys where every other Kafka client would.
pub fn java_murmur2(data: &[u8]) -> i32 {
    const M: i32 = 0x5bd1_e995;
    let mut h: i32 = (0x9747_b28c_u32 as i32) ^ (data.len() as i32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= ((k as u32) >> 24) as i32;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= i32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= i32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= i32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= ((h as u32) >> 13) as i32;
    h = h.wrapping_mul(M);
    h ^= ((h as u32) >> 15) as i32;
    h
}

/// The partition the Java default partitioner picks for a key.
pub fn java_partition(key: &str, partitions: i32) -> i32 {
    (java_murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions
}

/// Creates an empty schema of the test's own; answers its name and a `DATABASE_URL` selecting it.
pub async fn new_schema(config: &Config) -> (String, String) {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let base = config.database.database_url.expose().to_owned();
    let schema = format!("test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = AsyncPgConnection::establish(&base)
        .await
        .expect("PostgreSQL reachable");
    diesel::sql_query(format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .expect("create schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
    (schema, url)
}

/// A schema of the test's own, migrated, and the `DATABASE_URL` that selects it.
pub async fn isolated_database(config: &mut Config) -> String {
    let (_, url) = new_schema(config).await;
    config.database.database_url = url.parse().expect("url");
    gamemetrics::db::run_migrations(&config.database)
        .await
        .expect("migrations");
    url
}

/// Configuration for a full pipeline test: own topic, schema, Redis prefix and consumer groups,
/// and flush timers short enough that a test never waits 30 s.
pub async fn pipeline_config(adjust: impl FnOnce(&mut Config)) -> Config {
    let mut config = test_config();
    let id = uuid::Uuid::new_v4().simple().to_string();
    config.redis.redis_key_prefix = format!("test:{id}:");
    config.consumer.consumer_group_prefix = format!("test-{id}-");
    config.consumer.stats_flush_interval_ms = 300;
    config.consumer.leaderboard_flush_interval_ms = 300;
    config.database.database_pool_size = 4;
    isolated_database(&mut config).await;
    adjust(&mut config);
    gamemetrics::telemetry::init(&config.telemetry);
    create_topic(&config).await;
    config
}

/// The app and every consumer role, started on the test's actix system.
pub struct Pipeline {
    pub app: TestApp,
    pub consumers: Vec<gamemetrics::actors::RoleConsumerHandle>,
}

/// Starts ingestion and the given consumer roles on a fresh topic, schema and prefix.
pub async fn spawn_pipeline(
    roles: &[gamemetrics::actors::Role],
    adjust: impl FnOnce(&mut Config),
) -> Pipeline {
    let config = pipeline_config(adjust).await;
    let consumers = start_consumers(&config, roles);
    let app = spawn_app_with(|c| *c = config.clone()).await;
    Pipeline { app, consumers }
}

/// Starts consumers of the given roles with this configuration.
pub fn start_consumers(
    config: &Config,
    roles: &[gamemetrics::actors::Role],
) -> Vec<gamemetrics::actors::RoleConsumerHandle> {
    start_consumers_with(config, roles, &Metrics::new().expect("metrics"))
}

/// Starts consumers that record into `metrics`, for tests that read them.
pub fn start_consumers_with(
    config: &Config,
    roles: &[gamemetrics::actors::Role],
    metrics: &Metrics,
) -> Vec<gamemetrics::actors::RoleConsumerHandle> {
    roles
        .iter()
        .map(|&r| {
            gamemetrics::actors::RoleConsumerHandle::start(config, r, metrics.clone()).expect("consumer")
        })
        .collect()
}

/// Produces raw bytes straight onto the topic (for poison messages), keyed like the API does.
pub async fn produce_raw(config: &Config, key: &str, value: &[u8]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = kafka::client_config(&config.kafka)
        .expect("config")
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(&config.kafka.kafka_topic)
                .key(key)
                .payload(value),
            Duration::from_secs(10),
        )
        .await
        .expect("raw produce");
}

/// Polls `check` until it returns `Some`, or panics after `deadline` with `what`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Redis connection to one logical database of the test server (TLS and its CA as configured).
/// Replies wait as long as the product's do, not redis-rs's 500 ms: on a busy machine a
/// consumer's script call holds Redis longer than that, and a check must not fail for it.
pub async fn redis_conn(config: &Config, db: u8) -> redis::aio::MultiplexedConnection {
    gamemetrics::db::redis_conn::connect_db(&config.redis, db)
        .await
        .expect("Redis reachable")
}

/// A handle on one logical database of the configured Redis, single or cluster, on its
/// primary: `.conn().await` for a connection.
pub fn redis_view(config: &Config, db: u8) -> gamemetrics::db::RedisReader {
    gamemetrics::db::redis_primary(&config.redis, db).expect("redis url")
}

/// The keys of the configured Redis (its prefix, its layout).
pub fn redis_keys(config: &Config) -> gamemetrics::db::redis_keys::RedisKeys {
    gamemetrics::db::redis_keys::RedisKeys::for_config(&config.redis)
}

/// Where scripts/services keeps the TLS Redis servers' CA and certificates.
pub fn redis_tls_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var("REDIS_TLS_DIR").unwrap_or_else(|_| "/tmp/gamemetrics-services/redis-tls".into()),
    )
}

/// The AUTH token of scripts/services' TLS Redis servers (the TLS Redis and the cluster).
pub fn redis_tls_token() -> String {
    std::env::var("REDIS_TLS_PASSWORD").unwrap_or_else(|_| "gamemetrics-tls-token".into())
}

/// The TLS Redis Cluster scripts/services starts (scripts/redis-cluster), or another on `port`.
pub fn cluster_redis(port: u16) -> gamemetrics::config::RedisConfig {
    gamemetrics::config::RedisConfig {
        redis_url: format!("rediss://:{}@localhost:{port}", redis_tls_token())
            .parse()
            .expect("url"),
        redis_ca_file: Some(redis_tls_dir().join("ca.crt")),
        redis_cluster: true,
        redis_key_prefix: format!("test:{}:", uuid::Uuid::new_v4().simple()),
        ..test_config().redis
    }
}

/// The port of the shared test cluster.
pub fn cluster_port() -> u16 {
    std::env::var("REDIS_CLUSTER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(7001)
}

/// A PostgreSQL connection to the test's schema.
pub async fn pg_conn(config: &Config) -> diesel_async::AsyncPgConnection {
    use diesel_async::AsyncConnection;
    diesel_async::AsyncPgConnection::establish(config.database.database_url.expose())
        .await
        .expect("PostgreSQL")
}

/// The offsets a consumer group has committed on the config's topic, summed over partitions.
pub fn committed_total(config: &Config, group: &str) -> i64 {
    let consumer: BaseConsumer = kafka::client_config(&config.kafka)
        .expect("client config")
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..config.kafka.kafka_topic_partitions {
        tpl.add_partition(&config.kafka.kafka_topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

/// The three-broker cluster of `tests/cluster.rs` and `tests/soak.rs`: `scripts/kafka`'s
/// environment for it (its own ports and state dir, beside the single broker) and its address.
#[allow(dead_code)] // the api binary doesn't use it
pub const KAFKA3_ENV: [(&str, &str); 2] = [
    ("KAFKA_PORT_BASE", "9192"),
    ("KAFKA_STATE_DIR", "/tmp/gamemetrics-kafka3"),
];
/// See [`KAFKA3_ENV`].
#[allow(dead_code)]
pub const KAFKA3_BOOTSTRAP: &str = "127.0.0.1:9192,127.0.0.1:9194,127.0.0.1:9196";

/// Runs one of the project's scripts (`kafka`, `services`) with `args` and extra environment,
/// and fails the test if it fails.
pub fn run_script(name: &str, args: &[&str], env: &[(&str, &str)]) {
    let path = format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(&path)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("run {path}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A child process, killed (and reaped) when dropped: a failed assertion must not leave it
/// running against the shared broker and stores. std's `Child` is not killed on drop.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a script when dropped, whatever happened meanwhile: brings a shared service a test
/// stopped back even when an assertion fails while it is down, so later tests find it up.
pub struct OnDrop {
    pub script: &'static str,
    pub args: &'static [&'static str],
    pub env: Vec<(&'static str, String)>,
}

impl OnDrop {
    /// `scripts/<script> <args>` at drop, with no extra environment.
    #[allow(dead_code)] // the outage test binaries use it; the api binary only builds with env
    pub fn run(script: &'static str, args: &'static [&'static str]) -> Self {
        OnDrop {
            script,
            args,
            env: Vec::new(),
        }
    }
}

impl Drop for OnDrop {
    fn drop(&mut self) {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_script(self.script, self.args, &env);
    }
}

/// Posts events `concurrency` at a time, each answered 200, and answers them with the event_id
/// the API gave each (the client's own, or the one it chose).
pub async fn post_all(
    app: &TestApp,
    events: Vec<serde_json::Value>,
    concurrency: usize,
) -> Vec<(serde_json::Value, String)> {
    use futures::StreamExt;
    futures::stream::iter(events)
        .map(|ev| async move {
            let res = app.post_event(&ev).await;
            assert_eq!(res.status(), 200);
            let body: serde_json::Value = res.json().await.expect("json");
            (ev, body["event_id"].as_str().expect("event_id").to_owned())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// A Redis sink over the test server's stats and boards databases, every key under `prefix`,
/// remembering retries for `window` seconds.
pub fn redis_sink(
    config: &Config,
    prefix: &str,
    window: u64,
) -> gamemetrics::actors::sinks::redis::RedisSink {
    gamemetrics::actors::sinks::redis::RedisSink::new(
        gamemetrics::db::redis_pool(&config.redis, 0).expect("Redis pool"),
        gamemetrics::db::redis_pool(&config.redis, 1).expect("Redis pool"),
        prefix,
        window,
    )
}
