//! TLS to PostgreSQL, against the test PostgreSQL with `ssl = on`: `scripts/services` gives it a
//! CA of its own and a server certificate for `localhost` (not for `127.0.0.1`), the way RDS
//! has its own CA. Each `sslmode` does what libpq's does, and a CA or host name that doesn't
//! match is refused with the reason, at start and in `/readyz`.

use crate::helpers::{create_topic, new_schema, start_app, test_config};
use diesel::sql_types::{BigInt, Bool};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use gamemetrics::config::Config;
use std::path::PathBuf;
use std::process::Command;

/// The CA `scripts/services` made for the test PostgreSQL.
fn server_ca() -> PathBuf {
    let ca = PathBuf::from(
        std::env::var("PG_TLS_CA").unwrap_or_else(|_| "/var/lib/postgresql/gamemetrics-tls/ca.crt".into()),
    );
    assert!(
        ca.exists(),
        "{} is missing: run scripts/services start",
        ca.display()
    );
    ca
}

/// A CA PostgreSQL's certificate was not signed by, made by this test.
fn other_ca() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gm-other-ca-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (key, crt) = (dir.join("ca.key"), dir.join("ca.crt"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=not the server's CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    crt
}

/// `url` (the test's own schema) pointed at `host`, with `sslmode`.
fn with_tls(url: &str, host: &str, sslmode: &str) -> String {
    let url = url.replacen("@127.0.0.1:", &format!("@{host}:"), 1);
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sslmode={sslmode}")
}

/// A test config on a fresh schema (made over a plain connection), reached at `host` with
/// `sslmode` and the CA `ca`.
async fn tls_config(host: &str, sslmode: &str, ca: Option<PathBuf>) -> Config {
    let mut config = test_config();
    let (_, url) = new_schema(&config).await;
    config.database.database_url = with_tls(&url, host, sslmode).parse().expect("url");
    config.database.database_ca_file = ca;
    config
}

/// `/readyz` of an app started on `config`: status and JSON body.
async fn readyz(config: Config) -> (u16, serde_json::Value) {
    let app = start_app(config);
    let ready = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .expect("readyz");
    let status = ready.status().as_u16();
    (status, ready.json().await.expect("a JSON body"))
}

#[derive(QueryableByName)]
struct Ssl {
    #[diesel(sql_type = Bool)]
    ssl: bool,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Whether the pool's connection to PostgreSQL is encrypted, as the server sees it.
async fn encrypted(config: &Config) -> bool {
    let pool = gamemetrics::db::pg_pool(&config.database);
    let mut conn = pool.get().await.expect("a pooled connection");
    let row: Ssl = diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .get_result(&mut *conn)
        .await
        .expect("pg_stat_ssl");
    row.ssl
}

#[tokio::test]
async fn verify_full_with_the_servers_ca_migrates_and_serves_over_tls() {
    let config = tls_config("localhost", "verify-full", Some(server_ca())).await;
    gamemetrics::db::check_postgres(&config.database)
        .await
        .expect("the right CA and host name pass the start-up check");
    let applied = gamemetrics::db::run_migrations(&config.database)
        .await
        .expect("migrations over verify-full");
    assert!(!applied.is_empty());
    assert!(encrypted(&config).await, "the pool's connection is TLS");

    let pool = gamemetrics::db::pg_pool(&config.database);
    let mut conn = pool.get().await.expect("pooled");
    diesel::sql_query(
        "INSERT INTO events (event_id, event_type, player_id, game_id, event_timestamp, ingested_at, data) \
         VALUES (gen_random_uuid(), 'session_start', 'p1', 'g1', now(), now(), '{}')",
    )
    .execute(&mut *conn)
    .await
    .expect("a write over TLS");
    let n: Count = diesel::sql_query("SELECT count(*) AS n FROM events")
        .get_result(&mut *conn)
        .await
        .expect("count");
    assert_eq!(n.n, 1, "the row landed in this test's schema");

    create_topic(&config).await;
    let (status, body) = readyz(config).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["postgres"], "ok", "{body}");
}

#[tokio::test]
async fn a_certificate_for_another_host_name_is_refused_at_start_and_in_readyz() {
    // The certificate names localhost; 127.0.0.1 is the same server under a name it doesn't carry.
    let config = tls_config("127.0.0.1", "verify-full", Some(server_ca())).await;
    let err = gamemetrics::db::check_postgres(&config.database)
        .await
        .expect_err("host name mismatch refused at start")
        .to_string();
    assert!(err.contains("certificate verify failed"), "{err}");
    assert!(err.contains("sslmode=verify-full"), "says which setting: {err}");

    let (status, body) = readyz(config).await;
    assert_eq!(status, 503);
    let message = body.to_string();
    assert!(message.contains("PostgreSQL refused this process"), "{message}");
    assert!(message.contains("certificate verify failed"), "{message}");
}

#[tokio::test]
async fn a_wrong_ca_is_refused_at_start_by_the_binary() {
    let config = tls_config("localhost", "verify-ca", Some(other_ca())).await;
    let err = gamemetrics::db::check_postgres(&config.database)
        .await
        .expect_err("a certificate from another CA is refused")
        .to_string();
    assert!(err.contains("certificate verify failed"), "{err}");

    // The same through the binary's own start-up: it exits with the reason, not a time-out.
    let out = Command::new(env!("CARGO_BIN_EXE_gamemetrics"))
        .arg("migrate")
        .env("DATABASE_URL", config.database.database_url.expose())
        .env(
            "DATABASE_CA_FILE",
            config.database.database_ca_file.as_ref().expect("set"),
        )
        .env("KAFKA_TOPIC", &config.kafka.kafka_topic)
        .output()
        .expect("run gamemetrics migrate");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("certificate verify failed"), "{stderr}");
}

#[tokio::test]
async fn require_and_verify_ca_skip_the_host_name_prefer_never_checks_and_disable_stays_plain() {
    // require without a CA: encrypted, nothing checked (libpq's meaning).
    let require = tls_config("127.0.0.1", "require", None).await;
    assert!(encrypted(&require).await);
    // verify-ca: the chain is checked, the name is not.
    let verify_ca = tls_config("127.0.0.1", "verify-ca", Some(server_ca())).await;
    gamemetrics::db::check_postgres(&verify_ca.database)
        .await
        .expect("verify-ca ignores the host name");
    assert!(encrypted(&verify_ca).await);
    // require with a CA checks the chain, as libpq does when a root certificate is there.
    let require_wrong_ca = tls_config("localhost", "require", Some(other_ca())).await;
    assert!(gamemetrics::db::check_postgres(&require_wrong_ca.database)
        .await
        .is_err());
    let disable = tls_config("127.0.0.1", "disable", None).await;
    assert!(!encrypted(&disable).await);
    // prefer never verifies, so a CA file that isn't there (the ConfigMap's setting in an
    // environment without the store-ca ConfigMap) is not even read.
    let prefer = tls_config("127.0.0.1", "prefer", Some("/nonexistent/ca.pem".into())).await;
    assert!(
        encrypted(&prefer).await,
        "prefer takes TLS when the server offers it"
    );
}
