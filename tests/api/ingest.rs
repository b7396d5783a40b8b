//! POST /api/v1/events on the real broker: what lands on the topic, and what is refused.

use crate::helpers::{java_murmur2, java_partition, spawn_app, spawn_app_with, topic_message_count};
use serde_json::{json, Value};
use std::time::Duration;

fn event(player: &str) -> Value {
    json!({"event_type":"player_score","player_id":player,"game_id":"game-001",
           "timestamp":"2024-01-15T10:30:00Z","data":{"score":1500}})
}

#[test]
fn the_independent_murmur2_matches_kafkas_own_test_vectors() {
    // From Kafka's UtilsTest.testMurmur2.
    let cases: [(&[u8], i32); 6] = [
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
        (b"abc", 479_470_107),
    ];
    for (key, expected) in cases {
        assert_eq!(java_murmur2(key), expected, "{}", String::from_utf8_lossy(key));
    }
}

#[tokio::test]
async fn an_accepted_event_is_on_the_topic_keyed_and_partitioned_like_java() {
    let app = spawn_app().await;
    let players: Vec<String> = (0..24).map(|i| format!("player-{i:03}")).collect();
    let mut ids = Vec::new();
    for p in &players {
        let res = app.post_event(&event(p)).await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["status"], "success");
        ids.push(body["event_id"].as_str().unwrap().to_owned());
    }

    let msgs = app.read_topic(players.len(), Duration::from_secs(30));
    assert_eq!(msgs.len(), players.len());
    let mut partitions_used = std::collections::HashSet::new();
    for m in &msgs {
        let player = m.key.clone().expect("message has a key");
        assert_eq!(m.partition, java_partition(&player, 3), "partition of {player}");
        partitions_used.insert(m.partition);
        let v = &m.value;
        assert_eq!(v["player_id"], player.as_str());
        assert_eq!(v["event_type"], "player_score");
        assert_eq!(v["game_id"], "game-001");
        assert_eq!(v["timestamp"], "2024-01-15T10:30:00.000000Z");
        assert_eq!(v["data"], json!({"score":1500}));
        assert!(v["ingested_at"].as_str().unwrap().ends_with('Z'));
        let id = v["event_id"].as_str().unwrap();
        assert!(
            ids.iter().any(|i| i == id),
            "event_id {id} was answered to a client"
        );
        assert_eq!(m.headers.get("event_id").map(String::as_str), Some(id));
        assert_eq!(
            m.headers.get("event_type").map(String::as_str),
            Some("player_score")
        );
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 7, "exactly the seven event fields: {keys:?}");
    }
    assert_eq!(partitions_used.len(), 3, "24 players spread over all partitions");
}

#[tokio::test]
async fn a_client_supplied_event_id_is_kept() {
    let app = spawn_app().await;
    let mut ev = event("player-001");
    ev["event_id"] = json!("550e8400-e29b-41d4-a716-446655440000");
    let body: Value = app.post_event(&ev).await.json().await.unwrap();
    assert_eq!(body["event_id"], "550e8400-e29b-41d4-a716-446655440000");
    let msgs = app.read_topic(1, Duration::from_secs(30));
    assert_eq!(msgs[0].value["event_id"], "550e8400-e29b-41d4-a716-446655440000");
}

async fn assert_error(res: reqwest::Response, status: u16, code: &str, field: Option<&str>) {
    assert_eq!(res.status(), status);
    let body: Value = res.json().await.expect("error body is JSON");
    assert_eq!(body["status"], "error", "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        !body["error"]["message"].as_str().unwrap_or_default().is_empty(),
        "{body}"
    );
    if let Some(f) = field {
        assert_eq!(body["error"]["field"], f, "{body}");
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_json_error_and_nothing_is_produced() {
    let app = spawn_app_with(|c| {
        c.http.max_body_bytes = 2048;
        c.http.max_data_bytes = 512;
    })
    .await;

    assert_error(
        app.post_raw("{not json", "application/json").await,
        400,
        "invalid_json",
        None,
    )
    .await;
    assert_error(
        app.post_raw("[1,2]", "application/json").await,
        400,
        "invalid_body",
        None,
    )
    .await;
    let mut e = event("p");
    e.as_object_mut().unwrap().remove("game_id");
    assert_error(app.post_event(&e).await, 400, "missing_field", Some("game_id")).await;
    assert_error(
        app.post_event(&event(&"x".repeat(101))).await,
        400,
        "invalid_field",
        Some("player_id"),
    )
    .await;
    assert_error(
        app.post_event(&event("")).await,
        400,
        "invalid_field",
        Some("player_id"),
    )
    .await;
    let mut e = event("p");
    e["event_type"] = json!(42);
    assert_error(app.post_event(&e).await, 400, "invalid_field", Some("event_type")).await;
    let mut e = event("p");
    e["colour"] = json!("red");
    assert_error(app.post_event(&e).await, 400, "unknown_field", Some("colour")).await;
    let mut e = event("p");
    e["timestamp"] = json!("15/01/2024");
    assert_error(app.post_event(&e).await, 400, "invalid_field", Some("timestamp")).await;
    let mut e = event("p");
    e["timestamp"] = json!("2999-01-01T00:00:00Z");
    assert_error(
        app.post_event(&e).await,
        400,
        "timestamp_in_future",
        Some("timestamp"),
    )
    .await;
    let mut e = event("p");
    e["data"] = json!("score=5");
    assert_error(app.post_event(&e).await, 400, "invalid_field", Some("data")).await;
    let mut e = event("p");
    e["event_id"] = json!("not-a-uuid");
    assert_error(app.post_event(&e).await, 400, "invalid_field", Some("event_id")).await;
    let mut e = event("p");
    e["data"] = json!({"blob": "y".repeat(600)});
    assert_error(app.post_event(&e).await, 413, "too_large", Some("data")).await;
    let mut e = event("p");
    e["data"] = json!({"blob": "y".repeat(4000)});
    assert_error(app.post_event(&e).await, 413, "payload_too_large", None).await;
    assert_error(
        app.post_raw(event("p").to_string(), "text/plain").await,
        415,
        "unsupported_media_type",
        None,
    )
    .await;
    assert_error(app.get("/api/v1/events").await, 405, "method_not_allowed", None).await;
    assert_error(app.get("/no/such/route").await, 404, "not_found", None).await;

    // One good event afterwards proves the topic works, and that it holds only that one.
    assert_eq!(app.post_event(&event("p")).await.status(), 200);
    assert_eq!(app.read_topic(1, Duration::from_secs(30)).len(), 1);
    assert_eq!(
        topic_message_count(&app.config),
        1,
        "no refused request reached Kafka"
    );
}

#[tokio::test]
async fn a_burst_past_the_rate_limit_gets_429_and_nothing_is_produced_for_it() {
    let app = spawn_app_with(|c| {
        c.http.rate_limit_rps = 1;
        c.http.rate_limit_burst = 5;
    })
    .await;
    let (mut ok, mut limited) = (0, 0);
    for i in 0..20 {
        let res = app.post_event(&event(&format!("p{i}"))).await;
        match res.status().as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(retry >= 1);
                assert_error(res, 429, "rate_limited", None).await;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok >= 5, "the burst is allowed: {ok}");
    assert!(limited >= 10, "most of the rest is refused: {limited}");
    assert_eq!(app.read_topic(ok, Duration::from_secs(30)).len(), ok);
    assert_eq!(
        topic_message_count(&app.config),
        ok as i64,
        "429s produced nothing"
    );
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[tokio::test]
async fn a_batch_answers_item_by_item_and_produces_only_the_valid_ones() {
    let app = spawn_app_with(|c| c.http.batch_max_events = 5).await;
    let mut bad_type = event("p3");
    bad_type["event_type"] = json!(7);
    let mut unknown = event("p4");
    unknown["colour"] = json!("red");
    let batch = json!([event("p0"), event("p1"), bad_type, unknown, event("p2")]);
    let res = app
        .client
        .post(format!("{}/api/v1/events/batch", app.address))
        .header("Content-Type", "application/json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["accepted"], 3);
    let statuses: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["accepted", "accepted", "rejected", "rejected", "accepted"]
    );
    assert_eq!(body["results"][2]["error"]["field"], "event_type");
    assert_eq!(body["results"][3]["error"]["code"], "unknown_field");
    let ids: std::collections::HashSet<String> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["event_id"].as_str().map(str::to_owned))
        .collect();
    let msgs = app.read_topic(3, Duration::from_secs(30));
    let on_topic: std::collections::HashSet<String> = msgs
        .iter()
        .map(|m| m.value["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(on_topic, ids);
    assert_eq!(topic_message_count(&app.config), 3);

    let post = |body: String| {
        app.client
            .post(format!("{}/api/v1/events/batch", app.address))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    let six: Vec<Value> = (0..6).map(|i| event(&format!("q{i}"))).collect();
    assert_error(
        post(json!(six).to_string()).await.unwrap(),
        400,
        "invalid_body",
        None,
    )
    .await;
    assert_error(
        post(event("x").to_string()).await.unwrap(),
        400,
        "invalid_body",
        None,
    )
    .await;
    assert_error(post("[]".into()).await.unwrap(), 400, "invalid_body", None).await;
}

#[tokio::test]
async fn gzip_bodies_are_accepted_and_limited_after_decompression() {
    let app = spawn_app_with(|c| c.http.max_body_bytes = 4096).await;
    let send = |body: Vec<u8>, encoding: &'static str| {
        app.client
            .post(format!("{}/api/v1/events", app.address))
            .header("Content-Type", "application/json")
            .header("Content-Encoding", encoding)
            .body(body)
            .send()
    };
    let res = send(gzip(event("zipped").to_string().as_bytes()), "gzip")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let msgs = app.read_topic(1, Duration::from_secs(30));
    assert_eq!(msgs[0].value["player_id"], "zipped");

    // Small on the wire, far past the limit once inflated.
    let mut bomb = event("bomb");
    bomb["data"] = json!({"pad": " ".repeat(100_000)});
    let squeezed = gzip(bomb.to_string().as_bytes());
    assert!(squeezed.len() < 4096);
    assert_error(
        send(squeezed, "gzip").await.unwrap(),
        413,
        "payload_too_large",
        None,
    )
    .await;
    assert_error(
        send(b"not gzip at all".to_vec(), "gzip").await.unwrap(),
        400,
        "invalid_body",
        None,
    )
    .await;
    assert_error(
        send(event("b").to_string().into_bytes(), "br").await.unwrap(),
        400,
        "invalid_body",
        None,
    )
    .await;
    assert_eq!(topic_message_count(&app.config), 1);
}
