//! The guarantees on three brokers: a cluster of its own (`scripts/kafka start --nodes 3` on
//! ports 9192–9197), the topic at replication 3 and `min.insync.replicas` 2, ingest and every
//! consumer role running. In one test, one phase after another, since each phase breaks the
//! cluster the next one needs whole:
//!
//! 1. kill -9 the broker leading the most partitions, then the active KRaft controller, each
//!    mid-stream: every event answered 200 is in every store exactly once;
//! 2. two brokers down: ingest answers 503 with `Retry-After`, never 200 for what it could not
//!    replicate; when they return everything catches up, nothing answered 200 is lost;
//! 3. kill -9 the ingest process under load: every event it answered 200 for is in the stores.
//!
//! Clients behave as a client should: an event gets its `event_id` before the first attempt
//! and is sent again with it after a 503 or a lost answer, so "exactly once" is checked against
//! a model of the events, each counted once.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "api/model.rs"]
#[allow(dead_code)]
mod model;

use gamemetrics::actors::Role;
use gamemetrics::config::Config;
use helpers::*;
use model::{assert_state, events, Model};
use serde_json::{json, Value};
use std::time::Duration;

fn kafka3(args: &[&str]) {
    run_script("kafka", args, &KAFKA3_ENV);
}

/// Gives each event its id before the first attempt.
fn with_ids(evs: Vec<Value>) -> Vec<Value> {
    evs.into_iter()
        .map(|mut e| {
            e["event_id"] = json!(uuid::Uuid::new_v4());
            e
        })
        .collect()
}

/// Sends an event until it is answered 200, as a client retrying with its event_id.
async fn until_accepted(client: &reqwest::Client, url: &str, ev: &Value) {
    for _ in 0..240 {
        match client.post(url).json(ev).send().await {
            Ok(r) if r.status() == 200 => return,
            Ok(r) => {
                let status = r.status().as_u16();
                assert!(
                    status == 503 || status == 408,
                    "only 503 (or a 408 under load) while brokers fail: {status}"
                );
            }
            Err(_) => {} // the process is gone: a lost answer
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("never accepted: {ev}");
}

/// Posts every event until accepted, `concurrency` at a time.
async fn post_until_accepted(client: &reqwest::Client, url: &str, evs: &[Value], concurrency: usize) {
    use futures::StreamExt;
    futures::stream::iter(evs)
        .for_each_concurrent(concurrency, |ev| until_accepted(client, url, ev))
        .await;
}

/// The node (1..3) leading the most partitions of the topic.
fn busiest_leader(config: &Config) -> i32 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = gamemetrics::kafka::client_config(&config.kafka)
        .expect("config")
        .create()
        .expect("client");
    let md = consumer
        .fetch_metadata(Some(&config.kafka.kafka_topic), Duration::from_secs(10))
        .expect("metadata");
    let mut led = std::collections::BTreeMap::new();
    for p in md.topics()[0].partitions() {
        *led.entry(p.leader()).or_insert(0) += 1;
    }
    led.into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(id, _)| id)
        .expect("a leader")
}

fn active_controller() -> i32 {
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka"))
        .arg("controller")
        .envs(KAFKA3_ENV)
        .output()
        .expect("scripts/kafka controller");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a node id")
}

#[actix_web::test]
async fn on_three_brokers_a_broker_crash_a_lost_quorum_and_an_ingest_crash_lose_and_double_nothing() {
    kafka3(&["start", "--nodes", "3"]);
    let config = pipeline_config(|c| {
        c.kafka.kafka_brokers = Some(KAFKA3_BOOTSTRAP.into());
        c.kafka.produce_timeout_ms = 3_000;
        c.consumer.leaderboard_retention_days = 36_500;
    })
    .await;
    let consumers = start_consumers(&config, &Role::ALL);
    let app = spawn_app_with(|c| *c = config.clone()).await;
    let url = format!("{}/api/v1/events", app.address);
    // A connection per request: the server closes idle keep-alive connections while a broker
    // restarts, and a reused one would fail with no answer to judge.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let all = with_ids(events(1_200, 61));
    let mut model = Model::default();
    for ev in &all {
        model.add(ev, ev["event_id"].as_str().expect("id"));
    }
    let mut parts = all.chunks(300);

    // 1. A broker crash, twice, mid-stream: the partitions' busiest leader, then the controller.
    for victim in [busiest_leader(&config), active_controller()] {
        let part = parts.next().expect("a part");
        let crash = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            kafka3(&["kill-node", &victim.to_string()]);
        };
        tokio::join!(post_until_accepted(&client, &url, part, 4), crash);
        kafka3(&["start-node", &victim.to_string()]);
    }

    // 2. Two brokers down: no quorum, no in-sync replicas enough. Refused with 503 and
    // Retry-After; accepted once they are back.
    let part = parts.next().expect("a part");
    kafka3(&["kill-node", "1"]);
    kafka3(&["kill-node", "2"]);
    let res = client.post(&url).json(&part[0]).send().await.expect("an answer");
    assert_eq!(
        res.status(),
        503,
        "never 200 for an event that could not be replicated"
    );
    assert!(res.headers().contains_key("retry-after"));
    kafka3(&["start-node", "1"]);
    kafka3(&["start-node", "2"]);
    post_until_accepted(&client, &url, part, 4).await;

    // 3. kill -9 the ingest process under load; the client sends what got no answer again.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let serve = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_gamemetrics"))
            .arg("serve")
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("KAFKA_BROKERS", KAFKA3_BOOTSTRAP)
            .env("KAFKA_TOPIC", &config.kafka.kafka_topic)
            .env("DATABASE_URL", config.database.database_url.expose())
            .env("AUTH_REQUIRED", "false")
            .env("RUST_LOG", "error")
            .spawn()
            .expect("gamemetrics serve")
    };
    let mut ingest = serve();
    let serve_url = format!("http://127.0.0.1:{port}/api/v1/events");
    eventually(Duration::from_secs(30), "the ingest process", || async {
        client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
    })
    .await;
    let part = parts.next().expect("a part");
    let crash = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        ingest.kill().expect("kill -9");
        let _ = ingest.wait();
        tokio::time::sleep(Duration::from_millis(500)).await;
        serve()
    };
    let ((), restarted) = tokio::join!(post_until_accepted(&client, &serve_url, part, 4), crash);
    let mut restarted = restarted;

    for rest in parts {
        post_until_accepted(&client, &url, rest, 4).await;
    }

    // Everything answered 200, in every store, exactly once; the consumers kept going.
    assert_state(&config, &model).await;
    let _ = restarted.kill();
    let _ = restarted.wait();
    for c in consumers {
        c.shutdown(Duration::from_secs(10)).await;
    }
    kafka3(&["stop"]);
}
