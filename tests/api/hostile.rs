//! A hostile client against the real stack: each test is one way a client could cost the
//! service more than it should, or harm another game's data, and what bounds it. Every request
//! loop is bounded in count; every wait has a deadline.

use crate::helpers::*;
use crate::model::count;
use gamemetrics::actors::Role;
use gamemetrics::auth;
use gamemetrics::config::Config;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::Duration;

fn event(game: &str) -> Value {
    json!({"event_type": "player_score", "player_id": "p1", "game_id": game, "data": {"score": 5}})
}

async fn post_keyed(app: &TestApp, path: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = app
        .client
        .post(format!("{}{path}", app.address))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    req.send().await.expect("request reaches the app")
}

/// An app requiring keys, on a schema of its own, with one key per game given.
async fn keyed_app(
    adjust: impl FnOnce(&mut Config),
    games: &[(&str, Option<u32>)],
) -> (TestApp, Vec<String>) {
    let mut config = test_config();
    isolated_database(&mut config).await;
    let pg = gamemetrics::db::pg_pool(&config.database);
    let mut keys = Vec::new();
    for (game, rps) in games {
        keys.push(auth::create_key(&pg, Some(game), *rps).await.expect("key"));
    }
    let app = spawn_app_with(|c| {
        *c = config.clone();
        c.http.auth_required = Some(true);
        adjust(c);
    })
    .await;
    (app, keys)
}

#[tokio::test]
async fn made_up_methods_share_one_metric_series() {
    let app = spawn_app().await;
    for i in 0..50 {
        let method = reqwest::Method::from_bytes(format!("M{}{i}", "A".repeat(2000)).as_bytes()).unwrap();
        let res = app
            .client
            .request(method, format!("{}/healthz", app.address))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
    }
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(!text.contains("AAAAAAAAAA"), "a made-up method became a label");
    let other: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("gamemetrics_http_requests_total") && l.contains(r#"method="other""#))
        .collect();
    assert_eq!(other.len(), 1, "{other:?}");
    assert!(other[0].ends_with(" 50"), "{other:?}");
}

#[tokio::test]
async fn a_body_that_never_finishes_is_cut_off_with_408() {
    let app = spawn_app_with(|c| c.http.body_read_timeout_ms = 300).await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        // A guard against a server that never answers: the test fails instead of hanging.
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(
            b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{",
        )
        .unwrap();
        let mut out = Vec::new();
        // Read to the end: the server must also close the connection.
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
}

#[tokio::test]
async fn keyless_traffic_cannot_spend_what_keyed_clients_share() {
    let (app, keys) = keyed_app(
        |c| {
            c.http.rate_limit_rps = 20;
            c.http.unauth_rate_limit_rps = 2;
        },
        &[("g", None)],
    )
    .await;
    // A client already known to this instance (its key is cached).
    assert_eq!(
        post_keyed(&app, "/api/v1/events", Some(&keys[0]), &event("g"))
            .await
            .status(),
        200
    );
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(
            post_keyed(&app, "/api/v1/events", None, &json!({}))
                .await
                .status()
                .as_u16(),
        );
    }
    // The first get their 401; past the unauthenticated budget (2/s), 429.
    let throttled = |s: &[u16]| s.iter().filter(|s| **s == 429).count();
    assert!(statuses[..2].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 401 || *s == 429), "{statuses:?}");
    assert!(throttled(&statuses) >= 30, "{statuses:?}");
    // Made-up key ids are looked up in PostgreSQL only within that same budget.
    let mut made_up = Vec::new();
    for i in 0..20 {
        let key = format!("gmk_madeup{i}_secret");
        made_up.push(
            post_keyed(&app, "/api/v1/events", Some(&key), &event("g"))
                .await
                .status()
                .as_u16(),
        );
    }
    assert!(throttled(&made_up) >= 15, "{made_up:?}");
    // The keyed client's budget is untouched.
    for _ in 0..10 {
        assert_eq!(
            post_keyed(&app, "/api/v1/events", Some(&keys[0]), &event("g"))
                .await
                .status(),
            200
        );
    }
}

#[tokio::test]
async fn a_batch_takes_one_token_per_event_from_the_key() {
    let (app, keys) = keyed_app(|_| {}, &[("g", Some(5))]).await;
    let batch = |n: usize| json!(vec![event("g"); n]);
    let res = post_keyed(&app, "/api/v1/events/batch", Some(&keys[0]), &batch(6)).await;
    assert_eq!(res.status(), 429);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("at most 5"),
        "{body}"
    );
    let res = post_keyed(&app, "/api/v1/events/batch", Some(&keys[0]), &batch(5)).await;
    assert_eq!(res.status(), 200);
    let res = post_keyed(&app, "/api/v1/events/batch", Some(&keys[0]), &batch(5)).await;
    assert_eq!(res.status(), 429);
    let retry_after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let body: Value = res.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("retry after {retry_after} s")),
        "the body and Retry-After agree: {body}"
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let (app, keys) = keyed_app(|_| {}, &[("g", None)]).await;
    let res = app
        .client
        .post(format!("{}/api/v1/events", app.address))
        .header("Content-Type", "application/json")
        .header("Authorization", format!("bearer {}", keys[0]))
        .body(event("g").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn one_game_reusing_another_games_event_id_erases_nothing() {
    let p = spawn_pipeline(&Role::ALL, |_| {}).await;
    let config = p.app.config.clone();
    let id = uuid::Uuid::new_v4().to_string();
    for game in ["game-a", "game-b"] {
        let mut ev = event(game);
        ev["event_id"] = json!(id);
        ev["player_id"] = json!(format!("player-of-{game}"));
        let body: Value = p.app.post_event(&ev).await.json().await.unwrap();
        assert_eq!(body["event_id"], json!(id));
    }
    // Both land everywhere: each game's event row, player stats and board score.
    eventually(Duration::from_secs(30), "both events", || async {
        (count(
            &config,
            &format!("SELECT count(*) AS n FROM events WHERE event_id = '{id}'"),
        )
        .await
            == 2)
            .then_some(())
    })
    .await;
    let mut boards = redis_conn(&config, 1).await;
    let mut stats = redis_conn(&config, 0).await;
    let prefix = &config.redis.redis_key_prefix;
    for game in ["game-a", "game-b"] {
        let player = format!("player-of-{game}");
        eventually(Duration::from_secs(30), "the score and the stats", || {
            let (mut boards, mut stats) = (boards.clone(), stats.clone());
            let (board, hash, player) = (
                format!("{prefix}leaderboard:{game}:alltime"),
                format!("{prefix}player_stats:{player}"),
                player.clone(),
            );
            async move {
                let score: Option<i64> = redis::AsyncCommands::zscore(&mut boards, &board, &player)
                    .await
                    .ok()?;
                let total: Option<i64> = redis::AsyncCommands::hget(&mut stats, &hash, "total_events")
                    .await
                    .ok()?;
                (score == Some(5) && total == Some(1)).then_some(())
            }
        })
        .await;
    }
    // A real retry (same game, same id) still counts once.
    let mut again = event("game-a");
    again["event_id"] = json!(id);
    again["player_id"] = json!("player-of-game-a");
    assert_eq!(p.app.post_event(&again).await.status(), 200);
    for c in p.consumers {
        assert!(c.flush_and_wait(Duration::from_secs(30)).await);
    }
    let total: i64 = redis::AsyncCommands::hget(
        &mut stats,
        format!("{prefix}player_stats:player-of-game-a"),
        "total_events",
    )
    .await
    .unwrap();
    assert_eq!(total, 1);
    let score: i64 = redis::AsyncCommands::zscore(
        &mut boards,
        format!("{prefix}leaderboard:game-a:alltime"),
        "player-of-game-a",
    )
    .await
    .unwrap();
    assert_eq!(score, 5);
    assert_eq!(
        count(
            &config,
            &format!("SELECT count(*) AS n FROM events WHERE event_id = '{id}'")
        )
        .await,
        2
    );
}

#[tokio::test]
async fn malformed_cursors_dates_and_weeks_are_400() {
    let app = spawn_app().await;
    for path in [
        "/player/p/events?before=-210866803200000001_ffffffff-ffff-ffff-ffff-ffffffffffff",
        "/player/p/events?before=9223372036854775807_ffffffff-ffff-ffff-ffff-ffffffffffff",
        "/games/g/leaderboard?period=weekly&week=2024-W99",
        "/games/g/leaderboard?period=weekly&week=%2B202-W01",
        "/games/g/leaderboard?period=weekly&week=2024-W00",
        "/games/g/leaderboard?period=daily&date=2026-1-5",
        "/games/g/leaderboard?period=daily&date=2026-02-30",
    ] {
        let res = app.get(path).await;
        assert_eq!(res.status(), 400, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_query", "{path}: {body}");
    }
    for path in [
        "/games/g/leaderboard?period=weekly&week=2020-W53",
        "/games/g/leaderboard?period=daily&date=2024-02-29",
    ] {
        assert_eq!(app.get(path).await.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn only_real_nul_characters_and_invisible_names_are_refused() {
    let app = spawn_app().await;
    let with = |patch: Value| {
        let mut ev = event("g");
        for (k, v) in patch.as_object().unwrap() {
            ev[k] = v.clone();
        }
        ev
    };
    // The six characters `\u0000` (a backslash, then u0000) are fine; a real NUL is not.
    let res = app.post_raw(
        r#"{"event_type":"a","player_id":"p","game_id":"g","data":{"s":"\\u0000"}}"#,
        "application/json",
    );
    assert_eq!(res.await.status(), 200);
    let res = app.post_event(&with(json!({"data": {"s": "a\u{0}b"}}))).await;
    assert_eq!(res.status(), 400);
    for name in ["\u{200B}", "p\u{202E}1", "\u{FEFF}p", "p\u{2028}", "\u{E0041}"] {
        let res = app.post_event(&with(json!({"player_id": name}))).await;
        assert_eq!(res.status(), 400, "{name:?}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["field"], "player_id");
    }
    // Integers are kept exactly within 64 bits; past that they would be rounded, so refused.
    let res = app.post_raw(
        r#"{"event_type":"a","player_id":"p","game_id":"g","data":{"n":18446744073709551616}}"#,
        "application/json",
    );
    assert_eq!(res.await.status(), 400);
    let res = app.post_raw(
        r#"{"event_type":"a","player_id":"p","game_id":"g","data":{"n":9007199254740993,"m":-9223372036854775808,"s":"123456789012345678901234567890"}}"#,
        "application/json",
    );
    assert_eq!(res.await.status(), 200);
}

/// `gamemetrics serve` as a process of its own, so its memory can be read from /proc.
struct Server {
    child: KillOnDrop,
    address: String,
}

impl Server {
    fn start(config: &Config) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_gamemetrics"))
            .arg("serve")
            .env("KAFKA_BROKERS", config.kafka.brokers())
            .env("KAFKA_TOPIC", &config.kafka.kafka_topic)
            .env("DATABASE_URL", config.database.database_url.expose())
            .env("REDIS_URL", config.redis.redis_url.expose())
            .env("AUTH_REQUIRED", "false")
            .env("HTTP_WORKERS", "2")
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start gamemetrics serve");
        Server {
            child: KillOnDrop(child),
            address: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The most memory the process has held (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
    }
}

#[tokio::test]
async fn small_bodies_that_unpack_into_huge_batches_cost_little_memory() {
    use flate2::write::GzEncoder;
    let app = spawn_app().await;
    let server = Server::start(&app.config);
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(30), "the server", || async {
        client
            .get(format!("{}/healthz", server.address))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    // 4 MiB of `[[0,0,…]]` and of `[0,0,…]`, each a few KiB gzipped.
    let bombs: Vec<Vec<u8>> = [("[[", "]]"), ("[", "]")]
        .iter()
        .map(|(open, close)| {
            let mut text = String::from(*open);
            text.push_str(&"0,".repeat((4 << 20) / 2 - 4));
            text.push('0');
            text.push_str(close);
            let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::best());
            gz.write_all(text.as_bytes()).unwrap();
            gz.finish().unwrap()
        })
        .collect();
    let before = server.peak_rss_mib();
    let sends = (0..16).map(|i| {
        let (client, url, body) = (
            client.clone(),
            format!("{}/api/v1/events/batch", server.address),
            bombs[i % 2].clone(),
        );
        async move {
            client
                .post(url)
                .header("Content-Type", "application/json")
                .header("Content-Encoding", "gzip")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = futures::future::join_all(sends).await;
    // `[[0,…]]` is one item too large to be an event; `[0,…]` is too many items. A body this
    // test's debug-built server could not inflate and read within BODY_READ_TIMEOUT_MS, on a
    // machine busy with the other tests, is answered 408: also a clear refusal (seen in CI).
    assert!(
        statuses.iter().all(|s| [200, 400, 408].contains(s)),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&400),
        "at least one bomb was read and refused: {statuses:?}"
    );
    let peak = server.peak_rss_mib();
    eprintln!("peak RSS {peak} MiB, {before} MiB before the bombs");
    // Sixteen 4 MiB bodies in flight at once are 64 MiB of text; parsed into JSON trees they
    // took over 400 MiB. Bodies, plus a bounded parse each, stay well under 200.
    assert!(
        peak < before + 200,
        "peak RSS {peak} MiB (was {before} MiB before the bombs)"
    );
}
