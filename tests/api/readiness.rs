//! A consumer's `/readyz` means something: ready while it is a settled member of its group and
//! its stores answer; 503, with the reason, while PostgreSQL or Redis is gone (here: the proxy
//! in front of each pointed at a closed port, every open connection dropped); ready again when
//! they are back. (Kafka going away is in tests/broker_outage.rs, which owns the broker.)

use crate::helpers::*;
use crate::proxy::Proxy;
use gamemetrics::actors::Role;
use gamemetrics::metrics::Metrics;
use serde_json::Value;
use std::time::Duration;

/// A port nothing listens on.
const CLOSED: &str = "127.0.0.1:1";

async fn readyz(client: &reqwest::Client, port: u16) -> (u16, Value) {
    let res = client
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .expect("probe port");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or_default())
}

async fn until(client: &reqwest::Client, port: u16, want: u16, what: &str) -> Value {
    eventually(Duration::from_secs(40), what, || async {
        let (status, body) = readyz(client, port).await;
        (status == want).then_some(body)
    })
    .await
}

#[actix_web::test]
async fn a_consumer_is_ready_only_while_it_is_in_its_group_and_its_stores_answer() {
    let mut config = pipeline_config(|c| c.consumer.ready_group_grace_secs = 1).await;
    let pg = Proxy::start("127.0.0.1:5432".parse().expect("addr")).await;
    let redis = Proxy::start("127.0.0.1:6379".parse().expect("addr")).await;
    let url = config
        .database
        .database_url
        .expose()
        .replace(":5432/", &format!(":{}/", pg.port));
    assert_ne!(
        url,
        config.database.database_url.expose(),
        "the test database is on 5432"
    );
    config.database.database_url = url.parse().expect("url");
    config.redis.redis_url = format!("redis://127.0.0.1:{}", redis.port).parse().expect("url");
    config.http.http_addr = "127.0.0.1:0".parse().expect("addr");
    let metrics = Metrics::new().expect("metrics");
    let consumers = start_consumers_with(&config, &[Role::Stats], &metrics);
    let probes = gamemetrics::app::Application::build_probes(&config, metrics, true).expect("probes");
    let port = probes.port();
    actix_web::rt::spawn(probes.run_until_stopped());
    let client = reqwest::Client::new();

    eventually(Duration::from_secs(40), "a partition assigned", || async {
        (!consumers[0].assignment().is_empty()).then_some(())
    })
    .await;
    let ready = until(&client, port, 200, "ready").await;
    assert_eq!(ready["checks"]["redis"], "ok");

    redis.retarget(CLOSED.parse().expect("addr"));
    let body = until(&client, port, 503, "not ready without Redis").await;
    assert!(body.to_string().contains("Redis"), "{body}");
    redis.retarget("127.0.0.1:6379".parse().expect("addr"));
    until(&client, port, 200, "ready with Redis back").await;

    pg.retarget(CLOSED.parse().expect("addr"));
    let body = until(&client, port, 503, "not ready without PostgreSQL").await;
    assert!(body.to_string().contains("PostgreSQL"), "{body}");
    pg.retarget("127.0.0.1:5432".parse().expect("addr"));
    until(&client, port, 200, "ready with PostgreSQL back").await;
    for c in consumers {
        c.shutdown(Duration::from_secs(10)).await;
    }
}
