//! `REDIS_READ_URL`: the read API on a real Redis replica of the test Redis, while the
//! consumers write to the primary. What the endpoints answer equals the model once the replica
//! has caught up, and the answers really come from the replica: with it gone, reads fail
//! while the primary is fine.

use crate::helpers::*;
use crate::model::*;
use gamemetrics::actors::Role;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` replicating the test Redis, on a port of its own, stopped on drop.
struct Replica {
    child: Child,
    url: String,
    dir: std::path::PathBuf,
}

impl Replica {
    async fn start(primary: &str) -> Replica {
        let (host, port) = primary
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .rsplit_once(':')
            .expect("REDIS_URL host:port");
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        // Its synced copy lands in a directory of its own, not the working directory.
        let dir = std::env::temp_dir().join(format!("gm-replica-{free}"));
        std::fs::create_dir_all(&dir).expect("replica dir");
        let child = Command::new("redis-server")
            .args(["--port", &free.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&dir)
            .args(["--replicaof", host, port])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services installs it)");
        let url = format!("redis://127.0.0.1:{free}");
        let client = redis::Client::open(format!("{url}/0")).expect("url");
        let started = Instant::now();
        loop {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                if info.contains("master_link_status:up") {
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "replica never synced"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Replica { child, url, dir }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let res = app.get(path).await;
    let status = res.status().as_u16();
    (status, res.json().await.expect("JSON body"))
}

/// Polls `path` until it answers `want` (replication is asynchronous), or gives up after 10 s.
async fn eventually(app: &TestApp, path: &str, want: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = get_json(app, path).await;
        if status == 200 && want(&body) {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path} never matched: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn the_read_api_answers_from_the_replica_what_the_model_says() {
    let primary = test_config().redis.redis_url.expose().to_owned();
    let mut replica = Replica::start(&primary).await;
    let url = replica.url.clone();
    let p = spawn_pipeline(&Role::ALL, |c| {
        c.consumer.leaderboard_retention_days = 36_500;
        c.redis.redis_read_url = Some(url.parse().expect("url"));
    })
    .await;
    let (app, config) = (&p.app, p.app.config.clone());
    let mut model = Model::default();
    for ev in events(60, 23) {
        let body: Value = app.post_event(&ev).await.json().await.expect("json");
        model.add(&ev, body["event_id"].as_str().expect("id"));
    }
    // The primary holds the model's state...
    assert_state(&config, &model).await;
    // ...and the read API, reading the replica, answers it.
    for (player, (total, breakdown, last)) in &model.stats {
        // Until the replica has the player's hash the API answers from `player_statistics`
        // (same counts, no last_event): only an answer from Redis shows the replica's copy.
        let body = eventually(app, &format!("/player/{player}/stats"), |b| {
            b["source"] == "redis" && b["total_events"] == json!(total)
        })
        .await;
        assert_eq!(body["event_breakdown"], json!(breakdown));
        assert_eq!(body["last_event"], last.as_str());
    }
    for game in model.newest_day.keys() {
        let want: Vec<(String, i64)> = model.ranked(game, "alltime");
        let body = eventually(
            app,
            &format!("/games/{game}/leaderboard?period=alltime&limit=1000"),
            |b| b["entries"].as_array().map(Vec::len) == Some(want.len()),
        )
        .await;
        let got: Vec<(String, i64)> = body["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| {
                (
                    e["player_id"].as_str().expect("player").to_owned(),
                    e["score"].as_i64().expect("score"),
                )
            })
            .collect();
        assert_eq!(got, want, "{game} alltime, read from the replica");
    }

    // Without the replica, the same reads fail (503) while the primary still answers.
    let _ = replica.child.kill();
    let _ = replica.child.wait();
    let player = model.stats.keys().next().expect("a player");
    let started = Instant::now();
    loop {
        let (status, body) = get_json(app, &format!("/player/{player}/stats")).await;
        if status == 503 {
            assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "reads kept answering with the replica gone: they are not from it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut primary_conn = redis::Client::open(config.redis.db_url(0))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("the primary is still up");
    let pong: String = redis::cmd("PING")
        .query_async(&mut primary_conn)
        .await
        .expect("PING");
    assert_eq!(pong, "PONG");
}
