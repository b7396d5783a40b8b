//! Kafka as the manifests configure it: a broker of its own (`scripts/kafka start --sasl-ssl`,
//! 127.0.0.1:9392) with a `SASL_SSL` listener, a CA made for this run, one SCRAM-SHA-512 user
//! per `KafkaUser` in `k8s/kafka/users.yaml` (created by Kafka's own StorageTool) and exactly
//! those users' ACLs. Every gamemetrics process runs as its Deployment runs it: its command line,
//! the ConfigMap's Kafka settings and its own `*_KAFKA_EXTRA_CONFIG` from `k8s/base/secrets.yaml`,
//! with only the password and the CA path filled in.
//!
//! 1. `migrate` creates the topic; `serve` takes events; each consumer role applies them: the
//!    stores equal the model of the accepted events.
//! 2. A wrong password, or a user without the ACL a role needs, fails clearly: an ERROR at
//!    start, `/readyz` 503 saying what is wrong, ingest answering 503 (never 200, never a hang).

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "api/model.rs"]
#[allow(dead_code)]
mod model;

use gamemetrics::config::Config;
use helpers::*;
use model::{assert_state, events, Model};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::Duration;

const STATE: &str = "/tmp/gamemetrics-kafka-sasl";
const ENV: [(&str, &str); 2] = [("KAFKA_PORT_BASE", "9392"), ("KAFKA_STATE_DIR", STATE)];
const BOOTSTRAP: &str = "127.0.0.1:9392";

/// `KEY: "value"` lines of a manifest (the ConfigMap's data, the Secret's stringData).
fn manifest_values(path: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).expect(path);
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(": ")?;
            let v = v.strip_prefix('"')?.strip_suffix('"')?;
            k.chars()
                .all(|c| c.is_ascii_uppercase() || c == '_')
                .then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The passwords `scripts/kafka` gave its SCRAM users.
fn passwords() -> BTreeMap<String, String> {
    std::fs::read_to_string(format!("{STATE}/users"))
        .expect("users file")
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(u, p)| (u.to_owned(), p.to_owned()))
        .collect()
}

/// The Secret's `<service>_KAFKA_EXTRA_CONFIG`, as a cluster would get it: the KafkaUser's real
/// password (`password` overrides it) and the CA file made for this broker.
fn extra_config(service: &str, password: Option<&str>) -> String {
    let secret = manifest_values("k8s/base/secrets.yaml");
    let template = &secret[&format!("{service}_KAFKA_EXTRA_CONFIG")];
    let user = template
        .split(',')
        .find_map(|kv| kv.strip_prefix("sasl.username="))
        .expect("a sasl.username");
    let real = passwords()
        .remove(user)
        .expect("a SCRAM user for every KafkaUser");
    let filled = template
        .replace(
            "sasl.password=CHANGE_ME",
            &format!("sasl.password={}", password.unwrap_or(&real)),
        )
        .replace("/etc/kafka-ca/ca.crt", &format!("{STATE}/tls/ca.crt"));
    assert!(
        filled.contains("security.protocol=SASL_SSL")
            && !filled.contains("CHANGE_ME")
            && filled.contains(STATE),
        "the Secret's shape changed: {template}"
    );
    filled
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port()
}

/// A gamemetrics process run as its Deployment runs it, logging to a file of its own.
struct Proc {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Proc {
    fn start(config: &Config, args: &[&str], extra: &str) -> Self {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gamemetrics"));
        cmd.args(args);
        // The ConfigMap's Kafka settings, then what only a test changes: where the stores and
        // the broker are, and flush timers that don't make it wait 30 s.
        for (k, v) in manifest_values("k8s/base/configmap.yaml") {
            if k.starts_with("KAFKA_") || k == "PRODUCE_TIMEOUT_MS" {
                cmd.env(k, v);
            }
        }
        cmd.env("KAFKA_BROKERS", BOOTSTRAP)
            .env("KAFKA_EXTRA_CONFIG", extra)
            .env("DATABASE_URL", config.database.database_url.expose())
            .env("REDIS_URL", config.redis.redis_url.expose())
            .env("REDIS_KEY_PREFIX", &config.redis.redis_key_prefix)
            .env("STATS_FLUSH_INTERVAL_MS", "300")
            .env("LEADERBOARD_FLUSH_INTERVAL_MS", "300")
            .env("LEADERBOARD_RETENTION_DAYS", "36500")
            .env("AUTH_REQUIRED", "false")
            .env("READY_GROUP_GRACE_SECS", "5")
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn");
        let log = std::env::temp_dir().join(format!("gamemetrics-sasl-{port}.log"));
        let file = std::fs::File::create(&log).expect("a log file");
        cmd.stdout(file.try_clone().expect("log file")).stderr(file);
        Proc {
            child: cmd.spawn().expect("start gamemetrics"),
            port,
            log,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Stops the process and answers what it logged.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Runs `gamemetrics migrate` with the given Kafka identity; answers (success, stderr).
fn migrate(config: &Config, extra: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gamemetrics"))
        .arg("migrate")
        .env("KAFKA_BROKERS", BOOTSTRAP)
        .env("KAFKA_EXTRA_CONFIG", extra)
        .env("KAFKA_TOPIC", "player.events.raw")
        .env("DATABASE_URL", config.database.database_url.expose())
        .env("RUST_LOG", "warn")
        .output()
        .expect("gamemetrics migrate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until the process answers HTTP, whatever the status: a process whose producer is
/// already fenced answers `/healthz` 503 from its first request.
async fn alive(client: &reqwest::Client, p: &Proc) {
    eventually(
        Duration::from_secs(30),
        "the process answers /healthz",
        || async { client.get(p.url("/healthz")).send().await.ok() },
    )
    .await;
}

/// Waits for `/readyz` to answer `status`, and answers its body.
async fn readyz(client: &reqwest::Client, p: &Proc, status: u16, what: &str) -> Value {
    eventually(Duration::from_secs(60), what, || async {
        let r = client.get(p.url("/readyz")).send().await.ok()?;
        (r.status() == status).then_some(())?;
        r.json::<Value>().await.ok()
    })
    .await
}

#[actix_web::test]
async fn with_sasl_ssl_and_the_manifests_acls_every_role_works_and_a_wrong_identity_says_why() {
    // A fresh broker each run: the users' passwords and the CA are made anew.
    run_script("kafka", &["stop", "--wipe"], &ENV);
    run_script("kafka", &["start", "--sasl-ssl"], &ENV);
    let _stop = OnDrop {
        script: "kafka",
        args: &["stop", "--wipe"],
        env: ENV.iter().map(|(k, v)| (*k, v.to_string())).collect(),
    };
    let mut config = test_config();
    config.redis.redis_key_prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    isolated_database(&mut config).await;
    gamemetrics::telemetry::init(&config.telemetry);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");

    // The migrate job's user may create the topic; ingest's may not, and is told so.
    let (ok, err) = migrate(&config, &extra_config("INGESTION", None));
    assert!(!ok, "ingest's KafkaUser has no Create ACL");
    assert!(err.contains("refuses this user"), "a clear reason: {err}");
    let (ok, err) = migrate(&config, &extra_config("MIGRATE", None));
    assert!(ok, "migrate with its own user: {err}");

    // 1. Every role with its own user.
    let serve = Proc::start(&config, &["serve"], &extra_config("INGESTION", None));
    let roles: Vec<Proc> = [
        ("LOGGER", "logger"),
        ("STATS", "stats"),
        ("LEADERBOARD", "leaderboard"),
    ]
    .iter()
    .map(|(svc, role)| Proc::start(&config, &["consume", "--role", role], &extra_config(svc, None)))
    .collect();
    readyz(&client, &serve, 200, "ingest ready").await;
    for p in &roles {
        readyz(&client, p, 200, "each consumer ready").await;
    }
    let evs = events(300, 7);
    let mut model = Model::default();
    for ev in &evs {
        let res = client
            .post(serve.url("/api/v1/events"))
            .json(ev)
            .send()
            .await
            .expect("an answer");
        assert_eq!(res.status(), 200, "accepted over SASL_SSL");
        let body: Value = res.json().await.expect("json");
        model.add(ev, body["event_id"].as_str().expect("event_id"));
    }
    assert_state(&config, &model).await;

    // 2a. A wrong password: said at start, in /readyz, and ingest answers 503.
    let bad_serve = Proc::start(&config, &["serve"], &extra_config("INGESTION", Some("wrong")));
    let bad_logger = Proc::start(
        &config,
        &["consume", "--role", "logger"],
        &extra_config("LOGGER", Some("wrong")),
    );
    for p in [&bad_serve, &bad_logger] {
        let body = readyz(&client, p, 503, "not ready with a wrong password").await;
        let why = body["error"]["message"].as_str().unwrap_or_default().to_owned();
        assert!(why.contains("refuses this process's credentials"), "{body}");
    }
    let res = client
        .post(bad_serve.url("/api/v1/events"))
        .json(&events(1, 99)[0])
        .send()
        .await
        .expect("an answer within PRODUCE_TIMEOUT_MS, not a hang");
    assert_eq!(res.status(), 503, "{:?}", res.text().await);
    for p in [bad_serve, bad_logger] {
        let log = p.stop();
        assert!(
            log.contains("ERROR") && log.contains("refuses this process's credentials"),
            "an ERROR at start: {log}"
        );
    }

    // 2b. A user without the ACLs: the logger's user can't write (ingest) or join another
    // role's group (stats).
    let no_write = Proc::start(&config, &["serve"], &extra_config("LOGGER", None));
    alive(&client, &no_write).await;
    let res = client
        .post(no_write.url("/api/v1/events"))
        .json(&events(1, 98)[0])
        .send()
        .await
        .expect("an answer");
    assert_eq!(
        res.status(),
        503,
        "not 200 for an event Kafka refused: {:?}",
        res.text().await
    );
    let body = readyz(&client, &no_write, 503, "ingest without Write").await;
    let why = body.to_string();
    assert!(
        why.contains("refuses this user") && why.contains("Write"),
        "{body}"
    );
    // librdkafka's idempotent producer can't recover from that: liveness asks for a restart.
    eventually(Duration::from_secs(30), "/healthz asks for a restart", || async {
        let r = client.get(no_write.url("/healthz")).send().await.ok()?;
        (r.status() == 503).then_some(())?;
        r.text().await.ok().filter(|t| t.contains("needs a restart"))
    })
    .await;
    let no_group = Proc::start(
        &config,
        &["consume", "--role", "stats"],
        &extra_config("LOGGER", None),
    );
    let body = readyz(&client, &no_group, 503, "a consumer without its group's ACL").await;
    assert!(
        body.to_string().contains("refuses this user the consumer group"),
        "{body}"
    );
    for p in [no_write, no_group] {
        let log = p.stop();
        assert!(
            log.contains("ERROR") && log.contains("refuses this user"),
            "an ERROR: {log}"
        );
    }

    // Nothing the refused processes saw reached the stores.
    assert_state(&config, &model).await;
    drop(roles);
    drop(serve);
}
