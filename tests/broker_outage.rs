//! The ingestion API through a real Kafka outage: the broker is stopped with `scripts/kafka`,
//! the API must answer 503 with `Retry-After` (never hang, never 500), and must accept events
//! again once the broker is back, with nothing written for the refused ones. A consumer beside
//! it is not ready while it has no group to be a member of, and ready again after.
//!
//! This is its own test binary because it stops the shared broker: cargo runs test binaries one
//! after another, so no other test is talking to Kafka meanwhile.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use serde_json::{json, Value};
use std::time::Duration;

fn kafka(args: &[&str]) {
    helpers::run_script("kafka", args, &[]);
}

/// The consumer probe's `/readyz` status and body.
async fn consumer_readyz(port: u16) -> (u16, String) {
    match reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

async fn consumer_ready(port: u16) -> u16 {
    consumer_readyz(port).await.0
}

#[actix_web::test]
async fn a_broker_outage_gives_503_and_the_api_recovers_when_it_returns() {
    let app = helpers::spawn_app_with(|c| c.kafka.produce_timeout_ms = 2_000).await;
    let ev = |p: &str| json!({"event_type":"player_score","player_id":p,"game_id":"g","data":{"score":1}});
    assert_eq!(app.post_event(&ev("before")).await.status(), 200);
    let mut config = helpers::pipeline_config(|c| c.consumer.ready_group_grace_secs = 1).await;
    config.http.http_addr = "127.0.0.1:0".parse().expect("addr");
    let metrics = gamemetrics::metrics::Metrics::new().expect("metrics");
    let consumers = helpers::start_consumers_with(&config, &[gamemetrics::actors::Role::Logger], &metrics);
    let probes = gamemetrics::app::Application::build_probes(&config, metrics, false).expect("probes");
    let probe_port = probes.port();
    actix_web::rt::spawn(probes.run_until_stopped());
    helpers::eventually(Duration::from_secs(40), "the consumer in its group", || async {
        (!consumers[0].assignment().is_empty() && consumer_ready(probe_port).await == 200).then_some(())
    })
    .await;

    let guard = helpers::OnDrop::run("kafka", &["start"]);
    kafka(&["stop"]);
    let res = app.post_event(&ev("during")).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "kafka_unavailable");
    assert_eq!(app.get("/readyz").await.status(), 503);
    let why = helpers::eventually(
        Duration::from_secs(40),
        "the consumer not ready without its group",
        || async {
            let (status, body) = consumer_readyz(probe_port).await;
            (status == 503).then_some(body)
        },
    )
    .await;
    assert!(why.contains("consumer group"), "{why}");
    drop(guard); // the broker comes back

    // The producer reconnects on its own; retry a bounded number of times with one event_id, as
    // a client should, so an ambiguous failure during the restart can't become a second event.
    let mut after = ev("after");
    after["event_id"] = json!(uuid::Uuid::new_v4());
    let mut recovered = false;
    for _ in 0..60 {
        if app.post_event(&after).await.status() == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(recovered, "the API accepts events again after the broker returns");
    assert_eq!(app.get("/readyz").await.status(), 200);
    helpers::eventually(
        Duration::from_secs(60),
        "the consumer back in its group",
        || async { (consumer_ready(probe_port).await == 200).then_some(()) },
    )
    .await;

    let total = helpers::topic_message_count(&app.config) as usize;
    let msgs = app.read_topic(total, Duration::from_secs(30));
    assert_eq!(msgs.len(), total);
    let mut players: Vec<&str> = msgs
        .iter()
        .map(|m| m.value["player_id"].as_str().unwrap())
        .collect();
    players.sort_unstable();
    players.dedup();
    assert_eq!(
        players,
        ["after", "before"],
        "the event refused with 503 was not written"
    );
    let after_msgs = msgs.iter().filter(|m| m.value["player_id"] == "after");
    assert!(after_msgs
        .into_iter()
        .all(|m| m.value["event_id"] == after["event_id"]));
}
