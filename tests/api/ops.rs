//! Health, readiness, metrics, and what the API does when Kafka can't be reached.

use crate::helpers::{spawn_app, spawn_app_with, UNREACHABLE_BROKER};
use serde_json::{json, Value};

#[tokio::test]
async fn health_and_readiness_against_the_real_broker() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    let res = app.get("/readyz").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["checks"]["kafka"], "ok");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = spawn_app().await;
    let ok = json!({"event_type":"a","player_id":"p","game_id":"g"});
    assert_eq!(app.post_event(&ok).await.status(), 200);
    assert_eq!(app.post_raw("{", "application/json").await.status(), 400);
    let text = app.get("/metrics").await.text().await.unwrap();
    for needle in [
        r#"gamemetrics_http_requests_total{method="POST",route="/api/v1/events",status="200"} 1"#,
        r#"gamemetrics_http_requests_total{method="POST",route="/api/v1/events",status="400"} 1"#,
        "gamemetrics_kafka_produce_duration_seconds_count 1",
        "gamemetrics_http_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
}

#[tokio::test]
async fn an_unreachable_broker_means_503_with_retry_after_not_a_hang() {
    let app = spawn_app_with(|c| {
        c.kafka.kafka_brokers = Some(UNREACHABLE_BROKER.into());
        c.kafka.produce_timeout_ms = 1_000;
    })
    .await;
    let res = app
        .post_event(&json!({"event_type":"a","player_id":"p","game_id":"g"}))
        .await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "kafka_unavailable");
    assert!(uuid::Uuid::parse_str(body["error"]["event_id"].as_str().unwrap()).is_ok());

    let res = app.get("/readyz").await;
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_ready");
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains(r#"gamemetrics_kafka_produce_errors_total{reason="timeout"} 1"#),
        "{text}"
    );
}
