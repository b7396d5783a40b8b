//! The monitoring shipped in k8s/monitoring, against the real thing: a Prometheus (Debian's
//! package) scrapes a running gamemetrics every second with the PrometheusRule's rules loaded,
//! and every series those rules record (which is every query of the Grafana dashboard and the
//! left-hand side of every alert) returns data.

use crate::helpers::*;
use gamemetrics::actors::Role;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[actix_web::test]
async fn a_real_prometheus_records_every_rule_from_a_running_gamemetrics() {
    // As deployed: the ingestion API and the consumers, each scraped on its own port.
    let config = pipeline_config(|_| {}).await;
    let metrics = gamemetrics::metrics::Metrics::new().expect("metrics");
    let _consumers = start_consumers_with(&config, &Role::ALL, &metrics);
    let mut probe_config = config.clone();
    probe_config.http.http_addr = "127.0.0.1:0".parse().expect("addr");
    let probes = gamemetrics::app::Application::build_probes(&probe_config, metrics, true).expect("probes");
    let probe_target = format!("127.0.0.1:{}", probes.port());
    actix_web::rt::spawn(probes.run_until_stopped());
    let app = &spawn_app_with(|c| *c = config.clone()).await;
    let dir = std::env::temp_dir().join(format!(
        "gamemetrics-prometheus-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check-monitoring"))
        .arg("rules")
        .arg(&dir)
        .status()
        .expect("scripts/check-monitoring");
    assert!(status.success());
    let target = app.address.trim_start_matches("http://").to_owned();
    // The labels the Prometheus Operator's PodMonitor gives a target.
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [rules.yaml]\n\
             scrape_configs:\n  - job_name: gamemetrics/gamemetrics\n    static_configs:\n      \
             - targets: ['{target}', '{probe_target}']\n        labels: {{namespace: gamemetrics}}\n"
        ),
    )
    .expect("config");
    let port = free_port();
    let _prometheus = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (scripts/test installs it)"),
    );

    // Once Prometheus has scraped the counters at their start (so an increase shows as one),
    // traffic of every kind the rules read: events, a poison record, a 4xx.
    let client = reqwest::Client::new();
    let query = |q: &str| {
        let (client, q) = (client.clone(), q.to_owned());
        async move {
            let body: Value = client
                .get(format!("http://127.0.0.1:{port}/api/v1/query"))
                .query(&[("query", q.as_str())])
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            Some(body)
        }
    };
    // Both targets up, and the consumers' DLQ counter scraped at 0: `up` alone was satisfied by
    // the API's target while the consumers' had not been scraped yet, and a poison record
    // counted before that first scrape never shows as an increase.
    eventually(
        Duration::from_secs(60),
        "Prometheus scraping both targets, the DLQ counter at its start",
        || async {
            let up = query("count(up{namespace=\"gamemetrics\"} == 1)").await?;
            let targets: f64 = up["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
            let dlq = query("gamemetrics_consumer_dlq_total").await?;
            (targets == 2.0 && !dlq["data"]["result"].as_array()?.is_empty()).then_some(())
        },
    )
    .await;
    for i in 0..50 {
        let ev = json!({"event_type": "player_score", "player_id": format!("p{}", i % 5),
            "game_id": "game-mon", "timestamp": "2024-01-15T10:00:00Z", "data": {"score": i}});
        assert_eq!(app.post_event(&ev).await.status(), 200);
    }
    produce_raw(&config, "p0", b"not json").await;
    let _ = app.post_raw("{", "application/json").await;

    let records: Vec<String> = std::fs::read_to_string(dir.join("records.txt"))
        .expect("records")
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(records.len() >= 10, "{records:?}");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/k8s/monitoring/gamemetrics-dashboard.json"
        ))
        .expect("dashboard"),
    )
    .expect("json");
    let mut queries: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    queries.extend(records);
    queries.push("up{namespace=\"gamemetrics\"}".into());
    queries.sort();
    queries.dedup();

    for q in &queries {
        eventually(
            Duration::from_secs(60),
            &format!("Prometheus data for {q}"),
            || async {
                let body = query(q).await?;
                (!body["data"]["result"].as_array()?.is_empty()).then_some(())
            },
        )
        .await;
    }
    // And the numbers are this run's: the DLQ rule saw the poison record.
    eventually(
        Duration::from_secs(60),
        "the poison record in the DLQ rule",
        || async {
            let body = query("gamemetrics:dlq:increase15m").await?;
            let v: f64 = body["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
            (v > 0.0).then_some(())
        },
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
