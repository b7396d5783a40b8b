//! Offsets that start over: the topic deleted and created again, a second cluster with a topic
//! of the same name, and the embedded broker after a real one. Each is a new log whose offsets
//! begin at 0 again; every event accepted on it must land once in every store, beside the
//! untouched data of the earlier log.

use crate::helpers::*;
use crate::model::*;
use gamemetrics::actors::Role;
use gamemetrics::config::Config;
use gamemetrics::kafka::{EmbeddedKafka, TopicSpec};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use serde_json::Value;
use std::time::Duration;

/// A pipeline configuration whose 2024 events keep their dated boards for the checks.
async fn config() -> Config {
    pipeline_config(|c| c.consumer.leaderboard_retention_days = 36_500).await
}

/// Runs every role and an app against `config`'s broker, posts `evs`, waits until the stores
/// equal `model` with the accepted events added, then stops the consumers.
async fn run_phase(config: &Config, evs: &[Value], model: &mut Model) {
    let consumers = start_consumers(config, &Role::ALL);
    let app = start_app(config.clone());
    let accepted = post_all(&app, evs.to_vec(), 8).await;
    for (ev, id) in &accepted {
        model.add(ev, id);
    }
    assert_state(config, model).await;
    for c in consumers {
        c.shutdown(Duration::from_secs(10)).await;
    }
}

/// The events of the two phases: the second re-sends one event of the first with its id (a
/// client retry that straddles the start-over), which must still count once.
fn two_phases() -> (Vec<Value>, Vec<Value>) {
    let mut evs = events(40, 11);
    let retries = with_retries(&mut evs[..30], 3, 1, 11);
    let mut second = evs.split_off(30);
    second.extend(retries);
    (evs, second)
}

/// Distinct logs `consumer_offsets` holds for the logger's partitions.
async fn logger_logs(config: &Config) -> i64 {
    count(
        config,
        "SELECT count(DISTINCT topic_id) AS n FROM consumer_offsets WHERE consumer_service = 'event-logger'",
    )
    .await
}

/// Deletes the config's topic and creates it again: a new log under the same name.
async fn recreate_topic(config: &Config) {
    let admin: AdminClient<DefaultClientContext> = gamemetrics::kafka::client_config(&config.kafka)
        .expect("config")
        .create()
        .expect("admin client");
    let topic = config.kafka.kafka_topic.as_str();
    let deleted = admin
        .delete_topics(&[topic], &AdminOptions::new())
        .await
        .expect("delete request");
    assert!(deleted[0].is_ok(), "{deleted:?}");
    // Deletion completes in the background: create it again as soon as the broker lets us.
    eventually(Duration::from_secs(60), "the topic created again", || async {
        gamemetrics::kafka::ensure_topic(&config.kafka, &TopicSpec::from_config(&config.kafka))
            .await
            .ok()
            .filter(|created| *created)
    })
    .await;
}

#[actix_web::test]
async fn a_topic_deleted_and_created_again_is_applied_from_its_start() {
    let config = config().await;
    let (first, second) = two_phases();
    let mut model = Model::default();
    run_phase(&config, &first, &mut model).await;

    recreate_topic(&config).await;

    run_phase(&config, &second, &mut model).await;
    assert_eq!(logger_logs(&config).await, 2, "offsets kept per log");
}

#[actix_web::test]
async fn the_embedded_broker_after_a_real_one_is_applied_from_its_start() {
    let config = config().await;
    let (first, second) = two_phases();
    let mut model = Model::default();
    run_phase(&config, &first, &mut model).await;

    let embedded = EmbeddedKafka::start(&TopicSpec::from_config(&config.kafka)).expect("mock cluster");
    let mut on_embedded = config.clone();
    on_embedded.kafka.kafka_brokers = Some(embedded.bootstrap_servers());
    run_phase(&on_embedded, &second, &mut model).await;
    assert_eq!(logger_logs(&config).await, 2, "offsets kept per log");
}

/// A second, separate Kafka cluster on ports of its own, stopped and wiped when dropped.
struct SecondCluster {
    _stop: OnDrop,
}

impl SecondCluster {
    const PORT_BASE: &'static str = "19092";

    fn start() -> Self {
        let env = vec![
            (
                "KAFKA_STATE_DIR",
                format!("/tmp/gamemetrics-kafka-second-{}", std::process::id()),
            ),
            ("KAFKA_PORT_BASE", Self::PORT_BASE.to_owned()),
            ("KAFKA_HEAP", "-Xmx384m -Xms128m".to_owned()),
        ];
        let stop = OnDrop {
            script: "kafka",
            args: &["stop", "--wipe"],
            env,
        };
        let env: Vec<(&str, &str)> = stop.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_script("kafka", &["start"], &env);
        SecondCluster { _stop: stop }
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", Self::PORT_BASE)
    }
}

#[actix_web::test]
async fn a_second_cluster_with_a_topic_of_the_same_name_is_applied_from_its_start() {
    let config = config().await;
    let (first, second) = two_phases();
    let mut model = Model::default();
    run_phase(&config, &first, &mut model).await;

    let cluster = SecondCluster::start();
    let mut on_second = config.clone();
    on_second.kafka.kafka_brokers = Some(cluster.bootstrap());
    create_topic(&on_second).await;
    run_phase(&on_second, &second, &mut model).await;
    assert_eq!(logger_logs(&config).await, 2, "offsets kept per log");

    // Back on the first cluster: its log is known, nothing of it is applied twice, new events land.
    let back = events(6, 12);
    run_phase(&config, &back, &mut model).await;
    assert_eq!(logger_logs(&config).await, 2);
}

/// The topic's id on the test broker, as the consumers see it.
fn topic_id(config: &Config) -> String {
    let consumer: rdkafka::consumer::BaseConsumer = gamemetrics::kafka::client_config(&config.kafka)
        .expect("config")
        .create()
        .expect("client");
    gamemetrics::kafka::describe_topic_id(
        rdkafka::consumer::Consumer::client(&consumer),
        &config.kafka.kafka_topic,
        Duration::from_secs(10),
    )
    .expect("topic id")
    .to_string()
}

#[actix_web::test]
async fn a_store_ahead_of_the_log_blocks_its_partition_and_says_so_until_mended() {
    use diesel_async::RunQueryDsl;
    let config = config().await;
    let log = topic_id(&config);
    // The logger's offsets say partition 0 of this very log was applied up to 1,000, but the
    // log is empty: a truncated log, or a store restored from elsewhere.
    diesel::sql_query(format!(
        "INSERT INTO consumer_offsets (consumer_service, topic, kafka_partition, topic_id, next_offset) \
         VALUES ('event-logger', '{}', 0, '{log}', 1000)",
        config.kafka.kafka_topic
    ))
    .execute(&mut pg_conn(&config).await)
    .await
    .expect("seed offsets");
    let metrics = gamemetrics::metrics::Metrics::new().expect("metrics");
    let consumers = start_consumers_with(&config, &[Role::Logger], &metrics);
    let probes = gamemetrics::app::Application::build_probes(&config, metrics, true).expect("probe port");
    let probe = format!("http://127.0.0.1:{}", probes.port());
    tokio::spawn(probes.run_until_stopped());
    let app = start_app(config.clone());
    let evs = events(30, 5);
    let mut on_zero = 0;
    for ev in &evs {
        assert_eq!(app.post_event(ev).await.status(), 200);
        on_zero += i64::from(java_partition(ev["player_id"].as_str().unwrap(), 3) == 0);
    }
    assert!(on_zero > 0 && on_zero < evs.len() as i64);

    // The other partitions flow; partition 0 is held, and readiness and the metric say why.
    let others = evs.len() as i64 - on_zero;
    eventually(
        Duration::from_secs(30),
        "the other partitions' events",
        || async { (count(&config, "SELECT count(*) AS n FROM events").await == others).then_some(()) },
    )
    .await;
    // Partition 0 opens on its own schedule: the others landing says nothing about when its
    // check has run, so wait for readiness to report it (a loaded CI machine got there after).
    let client = reqwest::Client::new();
    let message = eventually(
        Duration::from_secs(30),
        "readiness to name the blocked partition",
        || async {
            let ready = client.get(format!("{probe}/readyz")).send().await.ok()?;
            (ready.status() == 503).then_some(())?;
            let body: Value = ready.json().await.ok()?;
            body["error"]["message"].as_str().map(str::to_owned)
        },
    )
    .await;
    assert!(
        message.contains("event-logger") && message.contains("up to 1000"),
        "{message}"
    );
    let text = client
        .get(format!("{probe}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"gamemetrics_consumer_partition_blocked{partition="0",service="event-logger"} 1"#),
        "{text}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count(&config, "SELECT count(*) AS n FROM events").await,
        others,
        "nothing skipped, nothing applied"
    );

    // An operator removes the impossible offset: the partition opens and catches up.
    diesel::sql_query("DELETE FROM consumer_offsets WHERE kafka_partition = 0")
        .execute(&mut pg_conn(&config).await)
        .await
        .expect("mend offsets");
    eventually(Duration::from_secs(60), "partition 0's events", || async {
        (count(&config, "SELECT count(*) AS n FROM events").await == evs.len() as i64).then_some(())
    })
    .await;
    let ready = client.get(format!("{probe}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    for c in consumers {
        c.shutdown(Duration::from_secs(10)).await;
    }
}

#[actix_web::test]
async fn offsets_stored_before_topic_ids_are_adopted_only_by_a_log_that_reached_them() {
    use actix::Actor;
    use diesel_async::RunQueryDsl;
    use gamemetrics::actors::messages::Position;
    use gamemetrics::actors::messages::{LiveDb, LogState, OpenLogPg as OpenPg, OpenLogRedis as OpenRedis};
    use gamemetrics::actors::sinks::postgres::PgSink;

    use redis::AsyncCommands;
    let config = config().await;
    let prefix = config.redis.redis_key_prefix.clone();
    let pg = PgSink::new(gamemetrics::db::pg_pool(&config.database)).start();
    let redis = redis_sink(&config, &prefix, 600).start();
    let position = |partition: i32, log: &str| Position {
        service: "stats-aggregator",
        topic: "t".into(),
        log: log.into(),
        partition,
    };
    // Partition 0 was applied up to 50, partition 1 up to 500, before offsets were kept per log.
    diesel::sql_query(
        "INSERT INTO consumer_offsets (consumer_service, topic, kafka_partition, next_offset) \
         VALUES ('stats-aggregator', 't', 0, 50), ('stats-aggregator', 't', 1, 500)",
    )
    .execute(&mut pg_conn(&config).await)
    .await
    .unwrap();
    let mut r = redis_conn(&config, 0).await;
    for (p, next) in [(0, 50), (1, 500)] {
        let _: () = r
            .set(
                format!("{prefix}gamemetrics:offsets:stats-aggregator:t:{p}"),
                next,
            )
            .await
            .unwrap();
    }
    let open = |p: i32, log: &str, log_end: i64| {
        let (pg, redis, position) = (pg.clone(), redis.clone(), position(p, log));
        async move {
            let a = pg
                .send(OpenPg {
                    position: position.clone(),
                    log_end,
                })
                .await
                .unwrap()
                .unwrap();
            let b = redis
                .send(OpenRedis {
                    position,
                    log_end,
                    db: LiveDb::Stats,
                })
                .await
                .unwrap()
                .unwrap();
            (a, b)
        }
    };
    let open_at = |n| LogState::Open { next_offset: n };
    // The log has 80 records on partition 0: it reached 50, so the stored offset is its own.
    assert_eq!(open(0, "A", 80).await, (open_at(50), open_at(50)));
    // On partition 1 it has 80, short of 500: that offset is from another log; start over.
    assert_eq!(open(1, "A", 80).await, (open_at(0), open_at(0)));
    // A later log never adopts what an earlier one took over, and the earlier one keeps it.
    assert_eq!(open(0, "B", 900).await, (open_at(0), open_at(0)));
    assert_eq!(open(0, "A", 80).await, (open_at(50), open_at(50)));
    // A store claiming more of a log than the log holds is behind, whatever the store.
    assert_eq!(
        open(0, "A", 20).await,
        (
            LogState::Behind {
                stored: 50,
                log_end: 20
            },
            LogState::Behind {
                stored: 50,
                log_end: 20
            }
        )
    );
    assert_eq!(
        count(
            &config,
            "SELECT count(*) AS n FROM consumer_offsets WHERE topic_id = ''"
        )
        .await,
        1,
        "partition 1's legacy row stays as history"
    );
}

#[actix_web::test]
async fn a_topic_created_again_under_running_consumers_is_applied_from_its_start() {
    let config = config().await;
    let (first, second) = two_phases();
    let mut model = Model::default();
    let consumers = start_consumers(&config, &Role::ALL);
    let app = start_app(config.clone());
    for ev in &first {
        let body: Value = app.post_event(ev).await.json().await.unwrap();
        model.add(ev, body["event_id"].as_str().unwrap());
    }
    assert_state(&config, &model).await;
    recreate_topic(&config).await;
    // A fresh producer: the app's would keep the old topic's metadata for a while.
    let app = start_app(config.clone());
    for ev in &second {
        let body: Value = app.post_event(ev).await.json().await.unwrap();
        model.add(ev, body["event_id"].as_str().unwrap());
    }
    assert_state(&config, &model).await;
    for c in consumers {
        c.shutdown(Duration::from_secs(10)).await;
    }
}

#[actix_web::test]
async fn a_topic_created_again_and_left_empty_under_running_consumers_is_applied_later() {
    let config = config().await;
    let (first, second) = two_phases();
    let mut model = Model::default();
    let consumers = start_consumers(&config, &Role::ALL);
    let app = start_app(config.clone());
    for (ev, id) in post_all(&app, first, 8).await {
        model.add(&ev, &id);
    }
    assert_state(&config, &model).await;
    recreate_topic(&config).await;
    // Longer than the consumers' 10 s log check: they see the new id before any record of it
    // (no offsets went back), open the new log and wait for its records.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let app = start_app(config.clone());
    for (ev, id) in post_all(&app, second, 8).await {
        model.add(&ev, &id);
    }
    assert_state(&config, &model).await;
    for c in consumers {
        c.shutdown(Duration::from_secs(10)).await;
    }
}
