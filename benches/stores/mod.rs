//! The pipeline on the production Redis shapes (BENCH_ONLY=stores): a single Redis with a
//! replica, and the TLS 6-node Redis Cluster of scripts/redis-cluster, each with and without
//! REDIS_WAIT_REPLICAS=1, on the same topic as the other drains.

use gamemetrics::actors::Role;
use gamemetrics::config::Config;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A replica of the bench's Redis on `port`, for this phase only (its replication stream would
/// cost the primary CPU in every other phase); killed on drop.
struct Replica(Child);

impl Replica {
    fn start(primary: &Config, port: u16) -> Option<Replica> {
        let (host, primary_port) = host_port(primary.redis.redis_url.expose())?;
        let dir = std::env::temp_dir().join(format!("gamemetrics-bench-replica-{port}"));
        std::fs::create_dir_all(&dir).ok()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args([
                "--appendonly",
                "no",
                "--replicaof",
                &host,
                &primary_port.to_string(),
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let replica = Replica(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            let info: Option<String> = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c))
                .ok();
            if info.is_some_and(|i| i.contains("master_link_status:up")) {
                return Some(replica);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split("://").nth(1)?;
    let hostport = rest.rsplit('@').next()?.split('/').next()?;
    let (host, port) = hostport.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

/// The test cluster scripts/services starts: BENCH_REDIS_CLUSTER_URL, CA in REDIS_TLS_DIR.
fn cluster(c: &mut Config) {
    let dir = std::env::var("REDIS_TLS_DIR").unwrap_or_else(|_| "/tmp/gamemetrics-services/redis-tls".into());
    let url = std::env::var("BENCH_REDIS_CLUSTER_URL")
        .unwrap_or_else(|_| "rediss://:gamemetrics-tls-token@localhost:7001".into());
    c.redis.redis_url = url.parse().expect("url");
    c.redis.redis_cluster = true;
    c.redis.redis_ca_file = Some(std::path::PathBuf::from(dir).join("ca.crt"));
}

/// Empties the test cluster's primaries (the bench runs alone; the keys are the bench's).
fn flush_cluster(c: &Config) {
    let Some((host, port)) = host_port(c.redis.redis_url.expose()) else {
        return;
    };
    let password = c
        .redis
        .redis_url
        .expose()
        .split("://")
        .nth(1)
        .and_then(|r| r.split_once('@'))
        .map(|(user, _)| user.trim_start_matches(':').to_owned())
        .unwrap_or_default();
    let mut cmd = Command::new("redis-cli");
    cmd.args(["--tls", "-h", &host, "-p", &port.to_string(), "--no-auth-warning"]);
    if let Some(ca) = &c.redis.redis_ca_file {
        cmd.arg("--cacert").arg(ca);
    }
    if !password.is_empty() {
        cmd.args(["-a", &password]);
    }
    let _ = cmd
        .args(["--cluster", "call", &format!("{host}:{port}"), "FLUSHALL"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// One row: the Redis shape, the wait, the roles drained, their events/s.
pub struct Row {
    pub redis: &'static str,
    pub wait: u32,
    pub roles: &'static str,
    pub rates: super::Rates,
}

/// The drains of each shape: the two Redis roles alone (Redis bounds them), then the pipeline.
const DRAINS: [(&str, &[Role]); 3] = [
    ("`stats-aggregator` alone", &[Role::Stats]),
    ("`leaderboard-manager` alone", &[Role::Leaderboard]),
    ("all three roles", &Role::ALL),
];

/// Drains the topic on each shape, waiting for a replica or not.
pub async fn run(base: &Config, topic: &str, n: u64) -> Vec<Row> {
    let mut rows = Vec::new();
    let replica_port = u16::try_from(super::env_num("BENCH_REPLICA_PORT", 6382)).unwrap_or(6382);
    if let Some(replica) = Replica::start(base, replica_port) {
        for (names, roles) in DRAINS {
            for wait in [0, 1] {
                let rates = super::measured(base, topic, roles, n, |c| c.redis.redis_wait_replicas = wait)
                    .await
                    .0;
                rows.push(Row {
                    redis: "single, one replica",
                    wait,
                    roles: names,
                    rates,
                });
            }
        }
        drop(replica);
    }
    let mut probe = base.clone();
    cluster(&mut probe);
    if gamemetrics::db::check_redis(&probe.redis, true).await.is_ok() {
        for ((names, roles), wait) in DRAINS.into_iter().flat_map(|d| [(d, 0), (d, 1)]) {
            let mut runs = Vec::new();
            for _ in 0..super::env_num("BENCH_REPEAT", 3).max(1) {
                let mut rc = super::fresh(base, "drain").await;
                rc.kafka.kafka_topic = topic.to_owned();
                rc.consumer.dedup_buckets = u32::try_from((n / 64).next_power_of_two()).unwrap_or(1 << 19);
                let prefix = rc.redis.redis_key_prefix.clone();
                cluster(&mut rc);
                rc.redis.redis_key_prefix = prefix;
                rc.redis.redis_wait_replicas = wait;
                runs.push(super::drain(&rc, roles, n).await);
                super::discard(&rc).await;
                flush_cluster(&rc);
            }
            rows.push(Row {
                redis: "6-node cluster, TLS",
                wait,
                roles: names,
                rates: super::Rates(runs),
            });
        }
    }
    rows
}
