//! Consumer-tier throughput and latency on the real broker, PostgreSQL and Redis, with the raw
//! limits of the same stores measured in the same run. Run through `scripts/bench`, which starts
//! the services and writes BENCHMARKS.md from what this prints.
//!
//! Env: BENCH_EVENTS (default 100000), BENCH_RATES (events/s of the latency runs, default
//! "1000,10000"), BENCH_SECONDS (length of each latency run, default 10), BENCH_TRACE_DRAIN (set:
//! every drain prints, every 20 ms, `TRACE <s> read/released/durable` per partition to stderr:
//! where a drain waits), plus the usual gamemetrics variables.

use clap::Parser;
use diesel::sql_types::Double;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use gamemetrics::actors::messages::Progress;
use gamemetrics::actors::{Role, RoleConsumerHandle};
use gamemetrics::config::Config;
use gamemetrics::domain::{EventType, GameEvent, GameId, PlayerId};
use gamemetrics::kafka::{self, TopicSpec};
use gamemetrics::metrics::Metrics;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod freshness;
mod profile;
mod raw;
mod stores;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

/// Whether BENCH_ONLY (a comma-separated list of drain, stores, latency, peers, soak, profile; all when
/// unset) asks
/// for this phase.
fn wants(phase: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only.split(',').any(|p| p.trim() == phase))
}

/// Whether BENCH_ROLES (a comma-separated list of services, e.g. `leaderboard-manager`; all when
/// unset) asks for a drain or profile row of these roles: one role's rows, for A/B runs of it.
fn wants_roles(roles: &[Role]) -> bool {
    std::env::var("BENCH_ROLES").map_or(true, |only| {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        roles.iter().all(|r| only.contains(&r.service()))
    })
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const TYPES: [&str; 6] = [
    "player_score",
    "quest_completed",
    "achievement_unlocked",
    "boss_defeated",
    "player_level_up",
    "session_start",
];

/// Players and games the bench's events spread over (BENCH_PLAYERS, BENCH_GAMES): realistic
/// cardinality, since few keys would let per-key folding flatter the consumers.
fn cardinality() -> (u64, u64) {
    static CARDINALITY: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
    *CARDINALITY.get_or_init(|| {
        (
            env_num("BENCH_PLAYERS", 20_000).max(1),
            env_num("BENCH_GAMES", 50).max(1),
        )
    })
}

fn event(i: u64) -> GameEvent {
    let now = chrono::Utc::now();
    let (players, games) = cardinality();
    GameEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: EventType::parse(TYPES[(i % 6) as usize]).expect("type"),
        player_id: PlayerId::parse(format!("player-{}", i % players)).expect("player"),
        game_id: GameId::parse(format!("game-{}", (i / 7) % games)).expect("game"),
        timestamp: now,
        ingested_at: now,
        data: json!({"score": i % 500}).as_object().cloned().unwrap_or_default(),
    }
}

/// A fresh topic, schema, Redis prefix and group prefix.
async fn fresh(base: &Config, tag: &str) -> Config {
    let mut c = base.clone();
    let id = uuid::Uuid::new_v4().simple().to_string();
    c.kafka.kafka_topic = format!("bench-{tag}-{id}");
    c.redis.redis_key_prefix = format!("bench:{id}:");
    c.consumer.consumer_group_prefix = format!("bench-{id}-");
    let url = base.database.database_url.expose().to_owned();
    let schema = format!("bench_{id}");
    let mut admin = AsyncPgConnection::establish(&url).await.expect("PostgreSQL");
    diesel::sql_query(format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .expect("schema");
    let sep = if url.contains('?') { '&' } else { '?' };
    c.database.database_url = format!("{url}{sep}options=-csearch_path%3D{schema}")
        .parse()
        .expect("url");
    gamemetrics::db::run_migrations(&c.database)
        .await
        .expect("migrate");
    kafka::ensure_topic(&c.kafka, &TopicSpec::from_config(&c.kafka))
        .await
        .expect("topic");
    c
}

/// Drops what a phase left (its schema and Redis keys) so that later phases don't pay for it:
/// a Redis grown by every earlier phase rewrites its append-only file in a fork that took up to
/// 40% of this machine's CPU in the middle of a measurement.
async fn discard(c: &Config) {
    let Some(id) = c
        .redis
        .redis_key_prefix
        .strip_prefix("bench:")
        .and_then(|p| p.strip_suffix(':'))
    else {
        return;
    };
    if let Ok(mut admin) = AsyncPgConnection::establish(c.database.database_url.expose()).await {
        let _ = diesel::sql_query(format!("DROP SCHEMA IF EXISTS bench_{id} CASCADE"))
            .execute(&mut admin)
            .await;
    }
    // Both databases: stats and their claims in 0, boards and theirs in 1 (the first version of
    // this cleaned 0 alone, and the boards' leftovers made every later phase slower).
    for db in [0, 1] {
        let Ok(mut conn) = redis::Client::open(c.redis.db_url(db)).and_then(|r| r.get_connection()) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("bench:{id}:*"))
            .query(&mut conn)
            .unwrap_or_default();
        for chunk in keys.chunks(10_000) {
            let _: Result<i64, _> = redis::cmd("UNLINK").arg(chunk).query(&mut conn);
        }
    }
    let Ok(mut conn) = redis::Client::open(c.redis.db_url(0)).and_then(|r| r.get_connection()) else {
        return;
    };
    // Let Redis finish freeing them and compact its append-only file now, not during the next
    // phase: a profile of the logger, which writes nothing to Redis, found Redis at 46% of the
    // machine doing exactly that.
    let quiet = |conn: &mut redis::Connection| {
        let info: String = redis::cmd("INFO").query(conn).unwrap_or_default();
        let zero = |field: &str| info_field::<u64>(&info, field) == Some(0);
        zero("aof_rewrite_in_progress") && zero("aof_rewrite_scheduled") && zero("lazyfree_pending_objects")
    };
    for step in 0..2 {
        for _ in 0..600 {
            if quiet(&mut conn) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if step == 0 {
            let _: Result<String, _> = redis::cmd("BGREWRITEAOF").query(&mut conn);
        }
    }
}

fn producer(c: &Config) -> FutureProducer {
    kafka::client_config(&c.kafka)
        .expect("config")
        .set("linger.ms", "5")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer")
}

async fn produce(c: &Config, p: &FutureProducer, from: u64, n: u64) {
    let chunk = 5_000;
    let mut i = from;
    while i < from + n {
        let end = (i + chunk).min(from + n);
        let payloads: Vec<(String, Vec<u8>)> = (i..end)
            .map(event)
            .map(|e| (e.player_id.to_string(), e.to_wire()))
            .collect();
        let sends = payloads.iter().map(|(k, v)| {
            p.send(
                FutureRecord::to(&c.kafka.kafka_topic).key(k).payload(v),
                Duration::from_secs(30),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e).expect("produce");
        }
        i = end;
    }
}

/// Drains `n` events of `topic` with `roles` BENCH_REPEAT times (default 3), each time into a
/// schema and key prefix of its own; answers the runs' rates, median first, the Redis bytes
/// per event the first run added, and Redis's CPU in microseconds per event over the drains
/// (not their cleanup). One drain on this 2-core machine moves by ±30% from run to
/// run, with the broker, both stores and the bench on the same cores.
async fn measured(
    base: &Config,
    topic: &str,
    roles: &[Role],
    n: u64,
    adjust: impl Fn(&mut Config),
) -> (Rates, f64, RedisCpu) {
    let mut rates = Vec::new();
    let mut bytes = f64::NAN;
    let mut redis_cpu = RedisCpu::default();
    for run in 0..env_num("BENCH_REPEAT", 3).max(1) {
        let mut rc = fresh(base, "drain").await;
        rc.kafka.kafka_topic = topic.to_owned();
        // Claims hashes as full as the sizing rule assumes (~64 claims each); with the default
        // 2^19 buckets a 100,000-event run would put each claim in a hash of its own.
        rc.consumer.dedup_buckets = u32::try_from((n / 64).next_power_of_two()).unwrap_or(1 << 19);
        adjust(&mut rc);
        let before = redis_used_memory(&rc);
        let cpu = RedisCpu::now(&rc);
        rates.push(drain(&rc, roles, n).await);
        redis_cpu += RedisCpu::now(&rc) - cpu;
        if run == 0 {
            bytes = redis_used_memory(&rc).saturating_sub(before) as f64 / n as f64;
        }
        discard(&rc).await;
    }
    let redis_us = redis_cpu.per_event(n as f64 * rates.len() as f64);
    (Rates(rates), bytes, redis_us)
}

/// The rates of repeated runs of one measurement.
struct Rates(Vec<f64>);

impl Rates {
    fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

impl std::fmt::Display for Rates {
    /// `median (min–max)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let min = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if self.0.len() > 1 {
            write!(f, "{:.0} ({min:.0}–{max:.0})", self.median())
        } else {
            write!(f, "{:.0}", self.median())
        }
    }
}

/// Runs the roles over an already filled topic; answers events/s from the first record read
/// to the last one durable (group join time excluded).
///
/// A role told to flush once it has read the last record, as a shutdown would: otherwise the
/// stats role's `player_statistics` lane may hold its last few records (fewer than
/// STATS_FLUSH_EVENTS) for STATS_FLUSH_INTERVAL_MS, the seed's 30 s, and with retry claims off
/// nothing else makes it write sooner: single drains came out at a tenth of their median.
async fn drain(c: &Config, roles: &[Role], n: u64) -> f64 {
    let metrics = Metrics::new().expect("metrics");
    let handles: Vec<RoleConsumerHandle> = roles
        .iter()
        .map(|&r| RoleConsumerHandle::start(c, r, metrics.clone()).expect("consumer"))
        .collect();
    let mut first = None;
    let mut flushed = vec![false; handles.len()];
    let trace = std::env::var_os("BENCH_TRACE_DRAIN").is_some();
    loop {
        let mut done = true;
        for (h, flushed) in handles.iter().zip(flushed.iter_mut()) {
            let progress = h.progress().await;
            if first.is_none() && progress.iter().any(|(_, p)| p.seen_next > 0) {
                first = Some(Instant::now());
            }
            let applied: i64 = progress.iter().map(|(_, p)| p.applied_next).sum();
            let seen: i64 = progress.iter().map(|(_, p)| p.seen_next).sum();
            if seen >= n as i64 && !*flushed {
                h.flush();
                *flushed = true;
            }
            done &= applied >= n as i64;
            if let (true, Some(f)) = (trace, first) {
                let parts: Vec<String> = progress
                    .iter()
                    .map(|(_, p)| format!("{}/{}/{}", p.seen_next, p.released_next, p.applied_next))
                    .collect();
                eprintln!("TRACE {:.3} {}", f.elapsed().as_secs_f64(), parts.join(" "));
            }
        }
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(f64::NAN);
    for h in handles {
        h.shutdown(Duration::from_secs(20)).await;
    }
    n as f64 / secs
}

#[derive(QueryableByName)]
struct Quantiles {
    #[diesel(sql_type = Double)]
    p50: f64,
    #[diesel(sql_type = Double)]
    p99: f64,
}

/// This process's resident memory in MiB, from /proc.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Where this process's memory is, in MiB: what mimalloc (every Rust allocation) has committed,
/// and what glibc's malloc (librdkafka's buffers and queues) has in use and holds from the OS.
#[derive(Clone, Copy, Default)]
struct Heaps {
    rust_committed: f64,
    c_in_use: f64,
    c_held: f64,
}

fn heaps() -> Heaps {
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let mut v = [0usize; 8];
    let [a, b, c, d, e, f, g, h] = &mut v;
    // SAFETY: mi_process_info only writes through the eight pointers, all valid.
    unsafe { libmimalloc_sys::mi_process_info(a, b, c, d, e, f, g, h) };
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct.
    let m = unsafe { libc::mallinfo2() };
    Heaps {
        rust_committed: mib(v[5]),
        c_in_use: mib(m.uordblks + m.hblkhd),
        c_held: mib(m.arena + m.hblkhd),
    }
}

/// Counters of the stores' background work, to line a minute's p99 up with what ran in it.
#[derive(Clone, Copy, Default)]
struct Background {
    /// Redis forks (append-only-file rewrites here: the test Redis saves no RDB).
    redis_forks: u64,
    /// PostgreSQL checkpoints, timed and requested.
    pg_checkpoints: u64,
}

fn background(c: &Config) -> Background {
    let redis_forks = redis_info_field(c, "stats", "total_forks").unwrap_or(0);
    let pg_checkpoints = Command::new("psql")
        .args([
            c.database.database_url.expose(),
            "-qAt",
            "-c",
            "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter",
        ])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0);
    Background {
        redis_forks,
        pg_checkpoints,
    }
}

/// One window of a fixed-rate run.
struct Window {
    /// The probes sent during the window.
    probes: Vec<freshness::Sighting>,
    /// Events/s the slowest role applied during the window.
    applied: f64,
    /// This process's resident memory at the window's end, in MiB.
    rss: f64,
    /// The most records the three roles held read but not yet durable (sampled each second):
    /// what RSS follows, since each is parsed and queued in memory until applied. With it, the
    /// most one role held of one partition.
    in_flight: (i64, i64),
    /// The heaps at the window's end.
    heaps: Heaps,
    /// The stores' background work that ran during the window.
    background: Background,
}

/// What one fixed-rate run measured.
struct LoadRun {
    windows: Vec<Window>,
    /// Every event: `created_at - ingested_at` in `events` (inside the pipeline).
    q: Quantiles,
    achieved: f64,
    /// Resident memory after the first second, in MiB.
    rss_start: f64,
    /// Resident memory a trim of glibc's heap returned at the end, in MiB: what glibc held of
    /// freed memory (little while the heap trimmer runs, `MALLOC_TRIM_SECS`).
    trim_returned: f64,
    /// The heap trimmer's interval in that run (0: off).
    trim_secs: u64,
}

impl LoadRun {
    /// Every probe of the run.
    fn probes(&self) -> Vec<freshness::Sighting> {
        self.windows
            .iter()
            .flat_map(|w| w.probes.iter().copied())
            .collect()
    }
}

/// Records the roles have read and hold in memory (contents not yet written): all partitions
/// together, and the most any one role held of one partition (what PARTITION_MAX_IN_FLIGHT
/// bounds; records the leaderboard keeps only a game id of until its top-N write are not held).
async fn in_flight(handles: &[RoleConsumerHandle]) -> (i64, i64) {
    let (mut total, mut largest) = (0, 0);
    for h in handles {
        for (_, p) in h.progress().await {
            let held = (p.seen_next - p.released_next.max(0)).max(0);
            total += held;
            largest = largest.max(held);
        }
    }
    (total, largest)
}

/// Probes sent per second during a latency run, on top of the background load.
const PROBES_PER_SEC: u64 = 50;

/// Events applied so far by the role that has applied fewest.
async fn slowest_applied(handles: &[RoleConsumerHandle]) -> i64 {
    slowest(handles, |p| p.applied_next).await
}

/// The least, over the roles, of `of` (an offset of a partition's progress) summed over the
/// role's partitions: on a fresh topic, how many records the furthest-behind role is past.
async fn slowest(handles: &[RoleConsumerHandle], of: impl Fn(&Progress) -> i64) -> i64 {
    let mut slowest = i64::MAX;
    for h in handles {
        let n: i64 = h.progress().await.iter().map(|(_, p)| of(p).max(0)).sum();
        slowest = slowest.min(n);
    }
    slowest
}

/// Enqueues events `sent..sent + n` to `topic` without waiting for their acks (they go to
/// `acks`), so a load's rate is its schedule and not the producer's round trips; answers the
/// next event's index.
async fn send_tick(
    p: &FutureProducer,
    topic: &str,
    sent: u64,
    n: u64,
    acks: &tokio::sync::mpsc::UnboundedSender<DeliveryFuture>,
) -> u64 {
    for j in sent..sent + n {
        let e = event(j);
        let (key, value) = (e.player_id.to_string(), e.to_wire());
        loop {
            match p.send_result(FutureRecord::to(topic).key(&key).payload(&value)) {
                Ok(f) => {
                    let _ = acks.send(f);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }
    sent + n
}

/// Produces at `rate` events/s for `secs` with all three roles running, while `probes_per_sec`
/// probe events go through the ingest API (served in this process, as `serve` would) and are
/// looked for in every store; reports per `window`, and p50/p99 of `created_at - ingested_at`
/// over all events.
async fn load(c: &Config, rate: u64, secs: u64, window: Duration, probes_per_sec: u64) -> LoadRun {
    let metrics = Metrics::new().expect("metrics");
    let handles: Vec<RoleConsumerHandle> = Role::ALL
        .iter()
        .map(|&r| RoleConsumerHandle::start(c, r, metrics.clone()).expect("consumer"))
        .collect();
    let mut api_cfg = c.clone();
    api_cfg.http.http_addr = "127.0.0.1:0".parse().expect("addr");
    api_cfg.http.auth_required = Some(false);
    let api_metrics = Metrics::new().expect("metrics");
    let ingest =
        gamemetrics::kafka::EventProducer::new(&api_cfg.kafka, api_metrics.clone()).expect("producer");
    let app = gamemetrics::app::Application::build(&api_cfg, ingest, api_metrics).expect("bind");
    let api = app.handle();
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let prober = freshness::Prober::new(c, &base).await;
    // Wait for the groups to settle before measuring.
    loop {
        if handles.iter().all(|h| h.assignment().len() == 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = producer(c);
    let tick = Duration::from_millis(10);
    let per_tick = rate / 100;
    let probe_every = (100 / probes_per_sec.clamp(1, 100)).max(1);
    let mut sent = 0;
    // Acks are awaited in order by a task of their own, so that what the bench holds stays
    // bounded by what is in flight (a 10-minute soak kept 3 million futures otherwise, and this
    // process's RSS is a figure of the run).
    let (acks, mut unacked) = tokio::sync::mpsc::unbounded_channel::<DeliveryFuture>();
    let acker = tokio::spawn(async move {
        while let Some(ack) = unacked.recv().await {
            ack.await.expect("delivery").map_err(|(e, _)| e).expect("produce");
        }
    });
    // BENCH_WARMUP_SECS (2) at the same rate, probes too, before anything is measured: the
    // roles' first records wait for every partition's log to open and the first fetches, and
    // the first probes for the prober's connections (probes sent in the first half second took
    // 300 ms to 1.1 s, and were most of the p99), which is start-up, not the steady state the
    // figures are about. It goes on until every role has received what was sent up to 100 ms
    // before (at most 5 s more): a 3 s run began with the roles still reading the warm-up's
    // events, and its events queued behind them (p50 up to 1.9 s against probes' 14-93 ms).
    // A rate the roles can't keep up with is measured from the end of those 5 s, its backlog
    // then at most 5 s of the load.
    let mut next = Instant::now();
    let warm_min = next + Duration::from_secs(env_num("BENCH_WARMUP_SECS", 2));
    let warm_max = warm_min + Duration::from_secs(5);
    let (mut warm_ticks, mut warm_probes) = (0u64, 0u64);
    let mut caught_up = false;
    while Instant::now() < warm_min || (!caught_up && Instant::now() < warm_max) {
        if warm_ticks.is_multiple_of(probe_every) {
            tokio::spawn(prober.clone().probe(u64::MAX - warm_ticks));
            warm_probes += 1;
        }
        warm_ticks += 1;
        if warm_ticks.is_multiple_of(10) {
            // Received, not durable: the stats role makes its `player_statistics` rows durable
            // every STATS_FLUSH_INTERVAL_MS, long after its Redis writes. The probes are records
            // of the topic too.
            let seen = u64::try_from(slowest(&handles, |p| p.seen_next).await).unwrap_or(0);
            caught_up = seen + per_tick * 10 >= sent + warm_probes;
        }
        sent = send_tick(&p, &c.kafka.kafka_topic, sent, per_tick, &acks).await;
        next += tick;
        tokio::time::sleep_until(next.into()).await;
    }
    eprintln!(
        "  warm-up: {:.1} s, {}",
        warm_ticks as f64 * tick.as_secs_f64(),
        if caught_up {
            "the roles caught up"
        } else {
            "the roles did not catch up within 5 s more"
        }
    );
    let warm_sent = sent;
    let started = Instant::now();
    let epoch_start = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
    let mut ticks = 0u64;
    let mut next = Instant::now();
    // (window, probe) for every probe sent.
    let mut probes = Vec::new();
    let mut rss_start = None;
    // The windows closed so far, their probes added at the end.
    let mut closed: Vec<Window> = Vec::new();
    let mut bg_start = background(c);
    // A window ending now: memory and the stores' background work are read at its end.
    let mut window_end = |applied: f64, in_flight: (i64, i64)| {
        let now = background(c);
        let background = Background {
            redis_forks: now.redis_forks.saturating_sub(bg_start.redis_forks),
            pg_checkpoints: now.pg_checkpoints.saturating_sub(bg_start.pg_checkpoints),
        };
        bg_start = now;
        Window {
            probes: Vec::new(),
            applied,
            rss: rss_mib(),
            in_flight,
            heaps: heaps(),
            background,
        }
    };
    let mut most_in_flight = (0, 0);
    let mut window_start = (Instant::now(), slowest_applied(&handles).await);
    // Enqueue each tick's events without waiting for their acks, so the rate is the producer's
    // schedule and not its round trips.
    while started.elapsed() < Duration::from_secs(secs) {
        if ticks.is_multiple_of(probe_every) {
            probes.push((closed.len(), ticks, tokio::spawn(prober.clone().probe(ticks))));
        }
        ticks += 1;
        if ticks.is_multiple_of(100) {
            let (total, largest) = in_flight(&handles).await;
            most_in_flight = (most_in_flight.0.max(total), most_in_flight.1.max(largest));
        }
        sent = send_tick(&p, &c.kafka.kafka_topic, sent, per_tick, &acks).await;
        if rss_start.is_none() && started.elapsed() >= Duration::from_secs(1) {
            rss_start = Some(rss_mib());
        }
        if window_start.0.elapsed() >= window {
            let applied = slowest_applied(&handles).await;
            let rate = (applied - window_start.1) as f64 / window_start.0.elapsed().as_secs_f64();
            closed.push(window_end(rate, std::mem::take(&mut most_in_flight)));
            window_start = (Instant::now(), applied);
        }
        next += tick;
        tokio::time::sleep_until(next.into()).await;
    }
    let achieved = (sent - warm_sent) as f64 / started.elapsed().as_secs_f64();
    let last_window_open = window_start.0.elapsed().as_secs_f64() > 0.5;
    if last_window_open {
        let applied = slowest_applied(&handles).await;
        let rate = (applied - window_start.1) as f64 / window_start.0.elapsed().as_secs_f64();
        closed.push(window_end(rate, most_in_flight));
    }
    let before_trim = rss_mib();
    gamemetrics::heap::trim();
    let trim_returned = before_trim - rss_mib();
    drop(acks);
    acker.await.expect("every event acknowledged");
    let mut windows = closed;
    // BENCH_PROBES_CSV=path: every probe, when it was sent and how long each store took, to
    // line stalls up in time with the stores' background work.
    let csv_path = std::env::var("BENCH_PROBES_CSV").ok();
    let mut csv = csv_path
        .as_ref()
        .map(|_| String::from("sent_unix_s,row_ms,stats_ms,board_ms\n"));
    for (w, tick_no, probe) in probes {
        let sighting = probe.await.unwrap_or_default();
        if let Some(csv) = csv.as_mut() {
            let f = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v:.1}"));
            let sent = epoch_start + tick_no as f64 * tick.as_secs_f64();
            let line = format!(
                "{sent:.2},{},{},{}\n",
                f(sighting.row),
                f(sighting.stats),
                f(sighting.board)
            );
            csv.push_str(&line);
        }
        // A probe sent after the last window closed belongs to it.
        let last = windows.len().saturating_sub(1);
        if let Some(window) = windows.get_mut(w.min(last)) {
            window.probes.push(sighting);
        }
    }
    if let (Some(csv), Some(path)) = (csv, csv_path) {
        std::fs::write(&path, csv).expect("write BENCH_PROBES_CSV");
    }
    api.stop(true).await;
    for h in &handles {
        h.flush_and_wait(Duration::from_secs(60)).await;
    }
    let mut conn = AsyncPgConnection::establish(c.database.database_url.expose())
        .await
        .expect("pg");
    let q: Quantiles = diesel::sql_query(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d) AS p50, \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY d) AS p99 \
         FROM (SELECT (extract(epoch FROM created_at - ingested_at) * 1000)::float8 AS d \
               FROM events WHERE ingested_at >= to_timestamp($1)) t",
    )
    // Events of the measured run only, not the warm-up's.
    .bind::<Double, _>(epoch_start)
    .get_result(&mut conn)
    .await
    .expect("quantiles");
    for h in handles {
        h.shutdown(Duration::from_secs(20)).await;
    }
    LoadRun {
        windows,
        q,
        achieved,
        rss_start: rss_start.unwrap_or(f64::NAN),
        trim_returned,
        trim_secs: c.process.malloc_trim_secs,
    }
}

/// `redis-benchmark` running the same commands the sinks run, pipelined.
fn redis_baseline(n: u64, command: &[&str]) -> f64 {
    let out = Command::new("redis-benchmark")
        .args(["-q", "-n", &n.to_string(), "-P", "64", "-r", "1000", "--csv"])
        .args(command)
        .output()
        .expect("redis-benchmark (apt install redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    // --csv: "test","rps",...
    text.lines()
        .filter_map(|l| l.split(',').nth(1))
        .filter_map(|v| v.trim_matches('"').parse::<f64>().ok())
        .next()
        .unwrap_or(f64::NAN)
}

/// The bench's events `range` as CSV rows of `events`' columns, their times moved by `shift`.
fn csv_rows(range: std::ops::Range<u64>, shift: chrono::Duration) -> Vec<u8> {
    let mut csv = Vec::with_capacity((range.end - range.start) as usize * 200);
    for i in range {
        let e = event(i);
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},\"{}\"",
            e.event_id,
            e.event_type,
            e.player_id,
            e.game_id,
            (e.timestamp + shift).to_rfc3339(),
            (e.ingested_at + shift).to_rfc3339(),
            serde_json::Value::Object(e.data).to_string().replace('"', "\"\"")
        );
    }
    csv
}

/// Fills `events` with `rows` rows like the API's (time-ordered ids, a day old) through `COPY`,
/// its secondary indexes dropped meanwhile and rebuilt after, as a restore would.
fn prefill(c: &Config, rows: u64) {
    let url = c.database.database_url.expose();
    let psql = |sql: &str| -> String {
        let out = Command::new("psql")
            .args([url, "-qAt", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let defs = psql(
        "SELECT indexname || '|' || indexdef FROM pg_indexes \
         WHERE tablename = 'events' AND schemaname = current_schema() AND indexname <> 'events_pkey'",
    );
    let defs: Vec<(&str, &str)> = defs.lines().filter_map(|l| l.split_once('|')).collect();
    for (name, _) in &defs {
        psql(&format!("DROP INDEX {name}"));
    }
    let mut child = Command::new("psql")
        .args([
            url,
            "-q",
            "-c",
            "\\copy events (event_id, event_type, player_id, game_id, event_timestamp, ingested_at, data) FROM STDIN WITH (FORMAT csv)",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("psql");
    let mut stdin = child.stdin.take().expect("stdin");
    let chunk = 200_000;
    for from in (0..rows).step_by(chunk as usize) {
        stdin
            .write_all(&csv_rows(
                from..(from + chunk).min(rows),
                -chrono::Duration::days(1),
            ))
            .expect("write csv");
    }
    drop(stdin);
    assert!(child.wait().expect("psql").success(), "COPY failed");
    for (_, def) in &defs {
        psql(def);
    }
    psql("ANALYZE events");
    // Start the soak with the fill's dirty pages written out, not with a checkpoint in its first
    // minutes (needs pg_checkpoint or a superuser; without it the first minute carries it).
    let _ = Command::new("psql")
        .args([url, "-qAt", "-c", "CHECKPOINT"])
        .output();
}

/// PostgreSQL `COPY` of the same rows into a copy of `events`, through psql.
fn copy_baseline(c: &Config, n: u64) -> f64 {
    let url = c.database.database_url.expose();
    let psql = |sql: &str| {
        let ok = Command::new("psql")
            .args([url, "-q", "-c", sql])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "psql {sql}");
    };
    psql("CREATE TABLE copy_bench (LIKE events INCLUDING ALL)");
    let csv = csv_rows(0..n, chrono::Duration::zero());
    let started = Instant::now();
    let mut child = Command::new("psql")
        .args([
            url,
            "-q",
            "-c",
            "\\copy copy_bench (event_id, event_type, player_id, game_id, event_timestamp, ingested_at, data) FROM STDIN WITH (FORMAT csv)",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("psql");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&csv)
        .expect("write csv");
    assert!(child.wait().expect("psql").success(), "COPY failed");
    n as f64 / started.elapsed().as_secs_f64()
}

#[actix_web::main]
async fn main() {
    let mut base = Cli::parse_from(["bench"]).config;
    // BENCH_LOG (a tracing filter, e.g. "info") to see why a run went as it did.
    base.telemetry.log_filter = std::env::var("BENCH_LOG").unwrap_or_else(|_| "error".into());
    gamemetrics::telemetry::init(&base.telemetry);
    // The roles run in this process: trim its C heap as `serve` and `consume` trim theirs.
    gamemetrics::heap::spawn_trimmer(base.process.malloc_trim_every()).expect("heap trimmer");
    let n = env_num("BENCH_EVENTS", 100_000);
    let rates: Vec<u64> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let secs = env_num("BENCH_SECONDS", 10);

    let c = fresh(&base, "roles").await;
    let p = producer(&c);
    let t = Instant::now();
    produce(&c, &p, 0, n).await;
    let produce_rate = n as f64 / t.elapsed().as_secs_f64();
    let _ = p.flush(Duration::from_secs(10));
    let mut rows = Vec::new();
    let mut redis_bytes = Vec::new();
    let mut unclaimed_bytes = Vec::new();
    let mut pipeline = Rates(Vec::new());
    let mut pipeline_redis_us = RedisCpu::default();
    // Redis's CPU per event, each role draining alone.
    let mut role_redis_us = Vec::new();
    let mut unclaimed = Vec::new();
    if wants("drain") {
        // One unmeasured drain first: the first after producing ran at half the rate of the
        // ones after it (caches, the broker's fresh segments), whichever role it was.
        let mut warm = fresh(&base, "warmup").await;
        warm.kafka.kafka_topic = c.kafka.kafka_topic.clone();
        drain(&warm, &Role::ALL, n).await;
        discard(&warm).await;
        for role in Role::ALL.into_iter().filter(|r| wants_roles(&[*r])) {
            let (r, bytes, redis_us) = measured(&base, &c.kafka.kafka_topic, &[role], n, |_| {}).await;
            if role != Role::Logger {
                redis_bytes.push((role.service(), bytes));
            }
            role_redis_us.push((role, redis_us));
            rows.push((format!("`{}` alone", role.service()), r));
        }
        if wants_roles(&Role::ALL) {
            (pipeline, _, pipeline_redis_us) =
                measured(&base, &c.kafka.kafka_topic, &Role::ALL, n, |_| {}).await;
        }
        // The same drains without the retry claims (DEDUP_WINDOW_SECS=0), to show what they cost.
        for (name, roles) in [
            ("`stats-aggregator` alone", &[Role::Stats][..]),
            ("`leaderboard-manager` alone", &[Role::Leaderboard][..]),
            ("all three roles at once", &Role::ALL[..]),
        ]
        .into_iter()
        .filter(|(_, roles)| wants_roles(roles))
        {
            let no_claims = |rc: &mut Config| rc.consumer.dedup_window_secs = 0;
            let (rates, bytes, _) = measured(&base, &c.kafka.kafka_topic, roles, n, no_claims).await;
            if let [role] = roles {
                unclaimed_bytes.push((role.service(), bytes));
            }
            unclaimed.push((name, rates));
        }
    }
    let topologies = if wants("stores") {
        stores::run(&base, &c.kafka.kafka_topic, n).await
    } else {
        Vec::new()
    };
    let mut latencies = Vec::new();
    for &rate in rates.iter().filter(|_| wants("latency")) {
        let lat_cfg = fresh(&base, "latency").await;
        let whole = Duration::from_secs(secs + 1);
        latencies.push((rate, load(&lat_cfg, rate, secs, whole, PROBES_PER_SEC).await));
        discard(&lat_cfg).await;
    }

    // The seed's design as drawn (benches/peers/seed_consumers.py), on the same topic.
    let mut peers = Vec::new();
    if let (true, Ok(python)) = (wants("peers"), std::env::var("BENCH_PEER_PYTHON")) {
        let events = env_num("BENCH_PEER_EVENTS", 10_000).min(n);
        for (name, roles) in [
            ("`event-logger`", &[Role::Logger][..]),
            ("`stats-aggregator`", &[Role::Stats][..]),
            ("`leaderboard-manager`", &[Role::Leaderboard][..]),
            ("all three roles at once", &Role::ALL[..]),
        ] {
            let mut pc = fresh(&base, "peer").await;
            pc.kafka.kafka_topic = c.kafka.kafka_topic.clone();
            let rate = seed_peer(&python, &pc, roles, events);
            discard(&pc).await;
            peers.push((name, roles, rate));
        }
    }

    let mut soak = None;
    if wants("soak") {
        let rows = env_num("BENCH_SOAK_ROWS", 5_000_000);
        let (rate, secs) = (env_num("BENCH_SOAK_RATE", 5_000), env_num("BENCH_SOAK_SECS", 600));
        let sc = fresh(&base, "soak").await;
        let t = Instant::now();
        prefill(&sc, rows);
        let filled = t.elapsed().as_secs_f64();
        let run = load(&sc, rate, secs, Duration::from_secs(60), 10).await;
        discard(&sc).await;
        soak = Some((rows, filled, rate, secs, run));
    }

    // Profiles come from drains of their own, so perf's cost stays out of the figures above.
    let mut profiles = Vec::new();
    for (name, roles) in [
        ("`event-logger` alone", &[Role::Logger][..]),
        ("`stats-aggregator` alone", &[Role::Stats][..]),
        ("`leaderboard-manager` alone", &[Role::Leaderboard][..]),
        ("all three roles at once", &Role::ALL[..]),
    ]
    .into_iter()
    .filter(|(_, roles)| wants("profile") && wants_roles(roles))
    {
        let mut rc = fresh(&base, "profile").await;
        rc.kafka.kafka_topic = c.kafka.kafka_topic.clone();
        let redis_before = redis_commandstats(&rc);
        let prof = profile::Profile::start("drain");
        let rate = drain(&rc, roles, n).await;
        let report = prof.and_then(profile::Profile::finish);
        let redis_work = redis_commandstats(&rc);
        discard(&rc).await;
        if let Some(report) = report {
            let mut md = report.markdown(&format!(
                "#### {name}, draining {n} events ({rate:.0} events/s under perf)"
            ));
            md.push_str(&redis_work_table(&redis_before, &redis_work, n));
            profiles.push(md);
        }
    }

    let hincr = redis_baseline(
        n,
        &["HINCRBY", "bench:player_stats:__rand_int__", "total_events", "1"],
    );
    let zincr = redis_baseline(
        n,
        &["ZINCRBY", "bench:leaderboard:game:alltime", "10", "__rand_int__"],
    );
    let copy = copy_baseline(&c, n);
    // The roles' Redis work sent raw, on the same events, keys of its own (dropped after).
    let rc = fresh(&base, "raw").await;
    let cpu = RedisCpu::now(&rc);
    let raw_stats = raw::redis_rate(&rc, raw::Work::Stats, n, event);
    let cpu_stats = RedisCpu::now(&rc);
    let raw_scores = raw::redis_rate(&rc, raw::Work::Scores, n, event);
    let cpu_scores = RedisCpu::now(&rc);
    // Microseconds of Redis's main thread per event for each role's Redis work sent raw.
    let raw_redis_us = [cpu_stats - cpu, cpu_scores - cpu_stats].map(|d| d.per_event(n as f64).main);
    let call_cost = raw::call_cost(&rc);
    discard(&rc).await;

    println!("| what | events/s |");
    println!("|---|---:|");
    println!("| producing the {n} events to Kafka (acks=all, this bench's producer) | {produce_rate:.0} |");
    for (name, r) in &rows {
        println!("| {name}, Kafka → PostgreSQL/Redis | {r} |");
    }
    println!("| all three roles at once (the pipeline) | {pipeline} |");
    for (name, r) in &unclaimed {
        println!("| {name}, retry claims off (`DEDUP_WINDOW_SECS=0`) | {r} |");
    }
    println!("| baseline: `redis-benchmark` HINCRBY, pipelined 64 | {hincr:.0} ops/s |");
    println!("| baseline: `redis-benchmark` ZINCRBY, pipelined 64 | {zincr:.0} ops/s |");
    println!("| baseline: PostgreSQL `COPY` of the same rows into a copy of `events` | {copy:.0} |");
    println!("| baseline: the stats script's Redis commands for the same events, pipelined per batch, no Lua | {raw_stats:.0} |");
    println!("| baseline: the scores script's Redis commands for the same events, pipelined per batch, no Lua | {raw_scores:.0} |");
    if let (Some((_, logger)), false) = (<[_]>::first(&rows), pipeline.0.is_empty()) {
        println!();
        println!(
            "Medians of {} runs (slowest–fastest). Against `COPY`: the pipeline {:.2}, `event-logger` alone {:.2}.",
            pipeline.0.len(),
            pipeline.median() / copy,
            logger.median() / copy
        );
        let alone = |service: &str| {
            rows.iter()
                .find(|(name, _)| name.contains(service))
                .map_or(f64::NAN, |(_, r)| r.median())
        };
        println!(
            "Against their Redis work sent raw: `stats-aggregator` alone {:.2}, `leaderboard-manager` alone {:.2}.",
            alone(Role::Stats.service()) / raw_stats,
            alone(Role::Leaderboard.service()) / raw_scores
        );
        // Work done one after another: the times per event add, so the rates add as inverses.
        let serial = |rates: &[f64]| 1.0 / rates.iter().map(|r| 1.0 / r).sum::<f64>();
        let roles_serial = serial(&[
            logger.median(),
            alone(Role::Stats.service()),
            alone(Role::Leaderboard.service()),
        ]);
        let [stats_us, scores_us] = raw_redis_us;
        let ceiling = |us: f64| 1e6 / us;
        let pipeline_us = pipeline_redis_us.main;
        println!();
        println!(
            "What bounds the pipeline: every command and script runs on Redis's one main thread. \
             The two Redis roles' work sent raw took it {stats_us:.1} + {scores_us:.1} µs per event: \
             with a core to itself and nothing else to do, at most {:.0} events/s, {:.2} of `COPY` \
             (the aim is 0.6). The pipeline's drains, scripts and all, took it {pipeline_us:.1} µs \
             per event: at most {:.0} events/s ({:.2} of `COPY`) on one Redis, here sharing two \
             cores with everything else. The three roles alone, one after another, would take \
             {roles_serial:.0} events/s; together they ran at {:.2} of that.",
            ceiling(stats_us + scores_us),
            ceiling(stats_us + scores_us) / copy,
            ceiling(pipeline_us),
            ceiling(pipeline_us) / copy,
            pipeline.median() / roles_serial,
        );
        println!();
        println!(
            "Redis's CPU per event in the drains above (`INFO cpu` before and after each, summed \
             over the repeats): the main thread, the server's other threads (fsync, lazy free) and \
             its forked children (append-only-file rewrites, which the drains' writes trigger)."
        );
        println!();
        println!("| drain | main thread | other threads | rewrites (children) | all |");
        println!("|---|---:|---:|---:|---:|");
        let named = role_redis_us
            .iter()
            .map(|(role, cpu)| (format!("`{}` alone", role.service()), *cpu))
            .chain([("all three roles at once".to_owned(), pipeline_redis_us)]);
        for (name, cpu) in named {
            println!(
                "| {name} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs |",
                cpu.main,
                (cpu.process - cpu.main).max(0.0),
                cpu.children,
                cpu.process + cpu.children
            );
        }
        println!(
            "| the stats script's commands sent raw | {stats_us:.1} µs | | | |\n\
             | the scores script's commands sent raw | {scores_us:.1} µs | | | |"
        );
    }
    if let Some(cost) = call_cost {
        println!();
        println!(
            "What one Redis command costs here, an HGET of a missing field timed over 100,000 calls: \
             {:.2} µs pipelined (as the raw baselines send), {:.2} µs from a script's loop (as the \
             roles' scripts run every command), {:.2} µs for that loop with no call in it.",
            cost.pipelined, cost.scripted, cost.loop_only
        );
    }
    if !topologies.is_empty() {
        println!();
        println!(
            "The Redis roles and the pipeline on the production Redis shapes, same events: a single Redis"
        );
        println!("with one replica (started for these rows only), and the 6-node Redis Cluster of");
        println!("`scripts/redis-cluster` (TLS, 3 primaries and 3 replicas, all on these 2 cores). With");
        println!(
            "`REDIS_WAIT_REPLICAS=1` a batch counts as applied only once a replica holds it (Redis `WAIT`),"
        );
        println!("so a failover can't lose counted events (docs/decisions.md).");
        println!();
        println!("| Redis | drained by | `REDIS_WAIT_REPLICAS` | events/s |");
        println!("|---|---|---:|---:|");
        for r in &topologies {
            println!("| {} | {} | {} | {} |", r.redis, r.roles, r.wait, r.rates);
        }
    }
    println!();
    println!("Freshness, all three roles running, producing in the background at a fixed rate for {secs} s");
    println!("(realistic cardinality, as above), while {PROBES_PER_SEC} probe events a second go through the ingest API");
    println!("(`POST /api/v1/events`, served in this process) and each store is polled every millisecond");
    println!("(every 5% of the time waited, past 20 ms, so that the probes' polling stays a small load");
    println!("however far behind the roles are) from the moment the 200 arrives until the probe is");
    println!("visible there: the `events` row, the player's Redis stats hash, the player's score on the");
    println!("game's all-time Redis board; a probe not seen in 60 s counts as never. The last column is,");
    println!("over every event of the run, `created_at − ingested_at` of its `events` row.");
    println!();
    println!("| rate asked | achieved | probes | `events` row p50 / p99 | Redis stats p50 / p99 | Redis board p50 / p99 | slowest probe, any store | all events, row p50 / p99 | RSS after 1 s → at the end |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (rate, r) in &latencies {
        let probes = r.probes();
        let row = freshness::quantiles(probes.iter().map(|p| p.row).collect());
        let stats = freshness::quantiles(probes.iter().map(|p| p.stats).collect());
        let board = freshness::quantiles(probes.iter().map(|p| p.board).collect());
        let missing = row.3.max(stats.3).max(board.3);
        let rss_end = r.windows.last().map_or(f64::NAN, |w| w.rss);
        println!(
            "| {rate}/s | {:.0}/s | {}{} | {} / {} | {} / {} | {} / {} | {} | {:.1} / {:.1} ms | {:.0} → {:.0} MiB |",
            r.achieved,
            probes.len(),
            if missing > 0 { format!(" ({missing} never seen)") } else { String::new() },
            freshness::ms(row.0), freshness::ms(row.1),
            freshness::ms(stats.0), freshness::ms(stats.1),
            freshness::ms(board.0), freshness::ms(board.1),
            freshness::ms(row.2.max(stats.2).max(board.2)),
            r.q.p50, r.q.p99, r.rss_start, rss_end
        );
    }
    println!();
    println!("RSS is the whole bench process: the three consumers, their pools and this producer.");
    println!();
    println!("Redis memory a role's drain added (`INFO memory` used_memory, before and after), per event:");
    println!(
        "its stats hashes or boards, its offsets and its retry claims, with DEDUP_BUCKETS = events / 64"
    );
    println!("rounded up to a power of two, so the claims hashes are as full as the README's sizing rule");
    println!("assumes (at 10,000 events/s the default 2^19 is that; a small run with the default would");
    println!("give each claim a hash of its own, ~200 bytes).");
    println!();
    println!("Most of this run's events are a player's first in their game, so stats hashes and board");
    println!("members are created rather than updated: over a week, those are bounded by players × games,");
    println!("the claims by the window (the README's sizing rule); the claims column is the same drain's");
    println!("figure less that of the drain with claims off.");
    println!();
    println!("| role | bytes of Redis per event | of which retry claims |");
    println!("|---|---:|---:|");
    for (service, bytes) in &redis_bytes {
        let off = unclaimed_bytes
            .iter()
            .find(|(s, _)| s == service)
            .map_or(f64::NAN, |(_, b)| *b);
        println!("| `{service}` | {bytes:.0} | {:.0} |", bytes - off);
    }
    if !peers.is_empty() {
        println!();
        println!("### The seed's design as drawn, same events");
        println!();
        println!("`benches/peers/seed_consumers.py`: a Python process per role (confluent-kafka, psycopg,");
        println!(
            "redis-py) writing as the seed's diagrams show: the logger an INSERT and a commit per event,"
        );
        println!(
            "stats a flush per 100 events, the leaderboard ZINCRBY per scoring event and the top 100 per"
        );
        println!("50; offsets committed (asynchronously) after each write; no retry dedup, no exactly-once. The first");
        println!(
            "{} events of the same topic, into a schema and prefix of their own.",
            env_num("BENCH_PEER_EVENTS", 10_000).min(n)
        );
        println!();
        println!(
            "| what | seed design, events/s | gamemetrics, events/s (median above) | gamemetrics ÷ seed |"
        );
        println!("|---|---:|---:|---:|");
        for (name, roles, rate) in &peers {
            let ours = if roles.len() > 1 {
                pipeline.median()
            } else {
                rows.iter()
                    .find(|(n, _)| n.contains(roles[0].service()))
                    .map_or(f64::NAN, |(_, r)| r.median())
            };
            println!("| {name} | {rate:.0} | {ours:.0} | {:.1} |", ours / rate);
        }
    }
    if let Some((rows, filled, rate, secs, run)) = &soak {
        print_soak(*rows, *filled, *rate, *secs, run);
    }
    if !profiles.is_empty() {
        println!();
        println!("### Where the CPU goes");
        println!();
        println!(
            "`perf record -a` (cpu-clock, 999 Hz) over a drain of its own per row; the idle share is time"
        );
        println!("every process spent waiting (commits, round trips), which a CPU profile cannot attribute.");
        for p in &profiles {
            println!();
            print!("{p}");
        }
    }
}

/// Runs the seed-design peer for `roles` at once, each consuming `events` records of `c`'s topic
/// in a group of its own; answers events/s of the slowest.
fn seed_peer(python: &str, c: &Config, roles: &[Role], events: u64) -> f64 {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peers/seed_consumers.py");
    let children: Vec<_> = roles
        .iter()
        .map(|role| {
            let name = match role {
                Role::Logger => "logger",
                Role::Stats => "stats",
                Role::Leaderboard => "leaderboard",
            };
            Command::new(python)
                .arg(script)
                .arg(name)
                .arg(&c.kafka.kafka_topic)
                .arg(format!("{}seed-peer-{name}", c.consumer.consumer_group_prefix))
                .arg(events.to_string())
                .arg(c.database.database_url.expose())
                .arg(c.redis.redis_url.expose())
                .arg(&c.redis.redis_key_prefix)
                .arg(c.kafka.brokers())
                .stdout(Stdio::piped())
                .spawn()
                .expect("python peer")
        })
        .collect();
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().expect("python peer");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<f64>()
                .unwrap_or(f64::NAN)
        })
        .fold(f64::INFINITY, f64::min)
}

/// The soak's table: a row per minute, and the last minute against the first.
fn print_soak(rows: u64, filled: f64, rate: u64, secs: u64, run: &LoadRun) {
    println!();
    println!(
        "### Soak: {} min at {rate} events/s into an `events` table of {rows} rows",
        secs / 60
    );
    println!();
    println!("`events` was filled first with {rows} rows like the API's (time-ordered ids) by `COPY`, its");
    println!(
        "secondary indexes rebuilt after ({filled:.0} s). Then all three roles ran while the bench produced"
    );
    println!(
        "{rate} events/s and 10 probes a second went through the ingest API; a row per minute. Applied is"
    );
    println!("what the slowest role made durable in that minute; in flight, the most records the three");
    println!("roles held read and not yet written (sampled each second), and in brackets the most one role");
    println!("held of one partition: each is parsed and queued in memory until written, so RSS follows");
    println!("the high-water mark; PARTITION_MAX_IN_FLIGHT bounds the bracketed figure.");
    println!("RSS is split into what mimalloc has committed (every Rust allocation) and what glibc's");
    println!("malloc has in use / holds (librdkafka's fetch queues and producer buffers). Forks and");
    println!("checkpoints are the Redis append-only-file rewrites and PostgreSQL checkpoints of the minute.");
    println!();
    println!(
        "| minute | applied events/s | `events` row p50 / p99 | Redis stats p99 | Redis board p99 | Redis forks | PG checkpoints | most in flight (one partition) | RSS | mimalloc | glibc in use / held |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let p99 = |w: &Window| {
        let row = freshness::quantiles(w.probes.iter().map(|p| p.row).collect());
        let stats = freshness::quantiles(w.probes.iter().map(|p| p.stats).collect());
        let board = freshness::quantiles(w.probes.iter().map(|p| p.board).collect());
        (row, stats, board)
    };
    for (i, w) in run.windows.iter().enumerate() {
        let (row, stats, board) = p99(w);
        println!(
            "| {} | {:.0} | {} / {} | {} | {} | {} | {} | {} ({}) | {:.0} MiB | {:.0} MiB | {:.0} / {:.0} MiB |",
            i + 1,
            w.applied,
            freshness::ms(row.0),
            freshness::ms(row.1),
            freshness::ms(stats.1),
            freshness::ms(board.1),
            w.background.redis_forks,
            w.background.pg_checkpoints,
            w.in_flight.0,
            w.in_flight.1,
            w.rss,
            w.heaps.rust_committed,
            w.heaps.c_in_use,
            w.heaps.c_held
        );
    }
    if let (Some(first), Some(last)) = (<[_]>::first(&run.windows), run.windows.last()) {
        let worst = |w: &Window| {
            let (row, stats, board) = p99(w);
            row.1.max(stats.1).max(board.1)
        };
        let (w0, w1) = (worst(first), worst(last));
        let p99_ratio = if w0.is_finite() && w1.is_finite() {
            format!("{:.2}", w1 / w0)
        } else {
            "—".to_owned()
        };
        println!();
        println!(
            "Last minute against the first: applied events/s {:.2}, worst p99 of the three stores {p99_ratio} \
             ({} → {}), RSS {:.0} → {:.0} MiB. A trim of glibc's heap at the end returned {:.0} MiB \
             (`MALLOC_TRIM_SECS={}`).",
            last.applied / first.applied,
            freshness::ms(w0),
            freshness::ms(w1),
            first.rss,
            last.rss,
            run.trim_returned,
            run.trim_secs
        );
        // A rewrite comes every few minutes whatever the table holds, so the minute it lands in
        // says nothing about growth: the same ratio over the minutes without one separates the two.
        let quiet: Vec<_> = run
            .windows
            .iter()
            .enumerate()
            .filter(|(_, w)| w.background.redis_forks == 0)
            .collect();
        if let (Some((i0, q0)), Some((i1, q1))) = (<[_]>::first(&quiet), quiet.last()) {
            let (w0, w1) = (worst(q0), worst(q1));
            if i1 > i0 && w0.is_finite() && w1.is_finite() {
                println!();
                println!(
                    "Over the minutes without a Redis fork ({} of {}), the last (minute {}) against the \
                     first (minute {}): applied events/s {:.2}, worst p99 of the three stores {:.2} ({} → {}).",
                    quiet.len(),
                    run.windows.len(),
                    i1 + 1,
                    i0 + 1,
                    q1.applied / q0.applied,
                    w1 / w0,
                    freshness::ms(w0),
                    freshness::ms(w1)
                );
            }
        }
    }
}

/// One section of Redis's `INFO`.
fn redis_info(c: &Config, section: &str) -> String {
    let mut conn = redis::Client::open(c.redis.db_url(0))
        .and_then(|client| client.get_connection())
        .expect("Redis reachable");
    redis::cmd("INFO")
        .arg(section)
        .query(&mut conn)
        .expect("Redis INFO")
}

/// CPU seconds Redis has used (`INFO cpu`, user and system), split three ways.
#[derive(Clone, Copy, Default)]
struct RedisCpu {
    /// The main thread, where every command and script runs: one core is all it can have.
    main: f64,
    /// The whole server process (the main thread and its background threads: fsync, lazy free).
    process: f64,
    /// Forked children: append-only-file rewrites and snapshots.
    children: f64,
}

impl std::ops::Sub for RedisCpu {
    type Output = RedisCpu;
    fn sub(self, o: RedisCpu) -> RedisCpu {
        RedisCpu {
            main: self.main - o.main,
            process: self.process - o.process,
            children: self.children - o.children,
        }
    }
}

impl std::ops::AddAssign for RedisCpu {
    fn add_assign(&mut self, o: RedisCpu) {
        self.main += o.main;
        self.process += o.process;
        self.children += o.children;
    }
}

impl RedisCpu {
    /// What Redis has used since it started.
    fn now(c: &Config) -> Self {
        let info = redis_info(c, "cpu");
        let field = |name: &str| -> f64 {
            ["user", "sys"]
                .iter()
                .filter_map(|kind| info_field::<f64>(&info, &format!("used_cpu_{kind}{name}")))
                .sum()
        };
        RedisCpu {
            main: field("_main_thread"),
            process: field(""),
            children: field("_children"),
        }
    }

    /// Microseconds per event of `n` events.
    fn per_event(self, n: f64) -> RedisCpu {
        RedisCpu {
            main: self.main * 1e6 / n,
            process: self.process * 1e6 / n,
            children: self.children * 1e6 / n,
        }
    }
}

/// One field of a section of Redis's `INFO`.
fn redis_info_field<T: std::str::FromStr>(c: &Config, section: &str, field: &str) -> Option<T> {
    info_field(&redis_info(c, section), field)
}

/// The value of `field` in `INFO` output (`field:value` lines).
fn info_field<T: std::str::FromStr>(info: &str, field: &str) -> Option<T> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// Redis's `INFO commandstats`: per command, (calls, microseconds inside Redis).
fn redis_commandstats(c: &Config) -> std::collections::BTreeMap<String, (u64, u64)> {
    let info = redis_info(c, "commandstats");
    // cmdstat_zincrby:calls=123,usec=456,usec_per_call=3.7,...
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (cmd, rest) = l.split_once(':')?;
            let field = |name: &str| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(name))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            Some((cmd.to_owned(), (field("calls=")?, field("usec=")?)))
        })
        .collect()
}

/// What Redis ran for a drain: per command, calls and microseconds per event.
fn redis_work_table(
    before: &std::collections::BTreeMap<String, (u64, u64)>,
    after: &std::collections::BTreeMap<String, (u64, u64)>,
    n: u64,
) -> String {
    let mut rows: Vec<(String, f64, f64)> = after
        .iter()
        .map(|(cmd, &(calls, usec))| {
            let (c0, u0) = before.get(cmd).copied().unwrap_or((0, 0));
            let per = |x: u64| x as f64 / n as f64;
            (cmd.clone(), per(calls - c0.min(calls)), per(usec - u0.min(usec)))
        })
        .filter(|(_, calls, usec)| *calls >= 0.01 || *usec >= 0.05)
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    let mut out = String::from(
        "\nWhat Redis ran (`INFO commandstats`; a script's time includes the commands it calls):\n\n\
         | command | calls per event | µs inside Redis per event |\n|---|---:|---:|\n",
    );
    for (cmd, calls, usec) in rows {
        out.push_str(&format!("| {cmd} | {calls:.2} | {usec:.2} |\n"));
    }
    out
}

/// Redis's `used_memory`, in bytes (the whole server: the bench runs alone).
fn redis_used_memory(c: &Config) -> u64 {
    redis_info_field(c, "memory", "used_memory").unwrap_or(0)
}
