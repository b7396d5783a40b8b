//! TLS and AUTH to Redis, as ElastiCache runs with in-transit encryption and an AUTH token:
//! `scripts/services` starts a second Redis with TLS only (`--port 0 --tls-port`), a
//! certificate for `localhost` from a CA of its own, and `requirepass`. The whole pipeline runs
//! on it; a wrong token, a wrong CA and a wrong host name are refused at start with the reason.

use crate::helpers::*;
use crate::model::*;
use gamemetrics::actors::Role;
use gamemetrics::config::RedisConfig;
use serde_json::{json, Value};
use std::path::PathBuf;

fn tls_port() -> String {
    std::env::var("REDIS_TLS_PORT").unwrap_or_else(|_| "6380".into())
}

/// The TLS Redis, reached as `host`, with `password` and the CA `ca`.
fn tls_redis(host: &str, password: &str, ca: Option<PathBuf>) -> RedisConfig {
    let ca_path = redis_tls_dir().join("ca.crt");
    assert!(
        ca_path.exists(),
        "{} is missing: run scripts/services start",
        ca_path.display()
    );
    RedisConfig {
        redis_url: format!("rediss://:{password}@{host}:{}", tls_port())
            .parse()
            .expect("url"),
        redis_key_prefix: format!("test:{}:", uuid::Uuid::new_v4().simple()),
        redis_ca_file: ca,
        ..crate::helpers::test_config().redis
    }
}

#[actix_web::test]
async fn the_pipeline_runs_on_a_tls_redis_with_an_auth_token() {
    let redis = tls_redis(
        "localhost",
        &redis_tls_token(),
        Some(redis_tls_dir().join("ca.crt")),
    );
    gamemetrics::db::check_redis(&redis, true)
        .await
        .expect("the right CA and token pass the start-up check");
    let p = spawn_pipeline(&Role::ALL, |c| {
        c.consumer.leaderboard_retention_days = 36_500;
        c.redis = redis.clone();
    })
    .await;
    let (app, config) = (&p.app, p.app.config.clone());
    let mut model = Model::default();
    for ev in events(50, 31) {
        let body: Value = app.post_event(&ev).await.json().await.expect("json");
        model.add(&ev, body["event_id"].as_str().expect("id"));
    }
    // Stats, boards and offsets in the TLS Redis (read over TLS) equal the model.
    assert_state(&config, &model).await;
    // The read API reads them over TLS too.
    let (player, (total, _, _)) = model.stats.iter().next().expect("a player");
    let res = app.get(&format!("/player/{player}/stats")).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["total_events"], json!(total));
    assert_eq!(body["source"], "redis");
}

#[tokio::test]
async fn a_wrong_token_a_wrong_ca_and_a_wrong_host_name_are_refused_at_start() {
    let ca = Some(redis_tls_dir().join("ca.crt"));
    let wrong_token =
        gamemetrics::db::check_redis(&tls_redis("localhost", "not-the-token", ca.clone()), true)
            .await
            .expect_err("a wrong token is refused")
            .to_string();
    assert!(wrong_token.contains("authentication failed"), "{wrong_token}");
    assert!(
        !wrong_token.contains("not-the-token"),
        "the token is not echoed: {wrong_token}"
    );

    // The system trust store doesn't know the test CA: the certificate doesn't verify.
    let no_ca = gamemetrics::db::check_redis(&tls_redis("localhost", &redis_tls_token(), None), true)
        .await
        .expect_err("an unknown CA is refused")
        .to_string();
    assert!(no_ca.contains("certificate"), "{no_ca}");

    // The certificate names localhost, not 127.0.0.1.
    let wrong_host =
        gamemetrics::db::check_redis(&tls_redis("127.0.0.1", &redis_tls_token(), ca.clone()), true)
            .await
            .expect_err("a host name the certificate doesn't carry is refused")
            .to_string();
    assert!(wrong_host.contains("certificate"), "{wrong_host}");

    // The binary's own start-up says so and exits.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gamemetrics"))
        .args(["consume", "--role", "stats"])
        .env(
            "REDIS_URL",
            format!("rediss://:not-the-token@localhost:{}", tls_port()),
        )
        .env("REDIS_CA_FILE", redis_tls_dir().join("ca.crt"))
        .env("HTTP_ADDR", "127.0.0.1:0")
        .output()
        .expect("run gamemetrics consume");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Redis at rediss://"), "{stderr}");
    assert!(
        !stderr.contains("not-the-token"),
        "the URL's password is masked: {stderr}"
    );
}
