//! The consumer tier end to end on the real broker, PostgreSQL and Redis: events in over HTTP,
//! poison straight onto the topic, and what lands compared with a model computed independently.

use crate::helpers::*;
use crate::model::*;
use diesel::sql_types::{BigInt, Jsonb, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use gamemetrics::actors::Role;
use gamemetrics::config::Config;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

#[derive(QueryableByName, Debug)]
struct DlqRow {
    #[diesel(sql_type = Text)]
    consumer_service: String,
    #[diesel(sql_type = Text)]
    error_message: String,
    #[diesel(sql_type = Jsonb)]
    original_event: Value,
    #[diesel(sql_type = Nullable<BigInt>)]
    kafka_offset: Option<i64>,
}

#[actix_web::test]
async fn events_land_once_in_postgres_and_redis_and_poison_goes_to_the_dlq() {
    let p = spawn_pipeline(&Role::ALL, |c| {
        c.consumer.leaderboard_top_n = 5;
        // The events are from 2024: keep their dated boards long enough to check them.
        c.consumer.leaderboard_retention_days = 36_500;
    })
    .await;
    let config = p.app.config.clone();
    let mut model = Model::default();
    let mut evs = events(150, 7);
    // Half the events carry a client-chosen event_id; 30 of those are sent again one by one,
    // after all the originals, and one batch re-sends 10 more: counted once all the same.
    let retries = with_retries(&mut evs, 2, 40, 7);
    let mut server_ids = Vec::new();
    for ev in evs.iter().chain(&retries[..30]) {
        let res = p.app.post_event(ev).await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        let id = body["event_id"].as_str().unwrap();
        model.add(ev, id);
        if ev.get("event_id").is_none() {
            server_ids.push((ev.clone(), id.to_owned()));
        }
    }
    // A client may also retry with the id the server chose (a 503 answer carries it, and a 503
    // after a produce timeout may still have been written): counted once too.
    for (ev, id) in server_ids.iter().take(10) {
        let mut again = ev.clone();
        again["event_id"] = json!(id);
        assert_eq!(p.app.post_event(&again).await.status(), 200);
        model.add(&again, id);
    }
    let res = p.app.post_batch(&json!(retries[30..])).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    for (ev, result) in retries[30..].iter().zip(body["results"].as_array().unwrap()) {
        assert_eq!(result["status"], "accepted", "{result}");
        model.add(ev, result["event_id"].as_str().unwrap());
    }
    assert_eq!(model.event_ids.len(), 151, "the retries add no event");
    produce_raw(&config, "player-0", b"this is not json").await;
    produce_raw(
        &config,
        "player-1",
        br#"{"event_type":"player_score","player_id":"player-1"}"#,
    )
    .await;

    assert_state(&config, &model).await;

    let dlq = eventually(Duration::from_secs(30), "three dead letters", || async {
        let rows: Vec<DlqRow> = diesel::sql_query(
            "SELECT consumer_service::text, error_message, original_event, kafka_offset FROM dlq ORDER BY consumer_service, id",
        )
        .load(&mut pg_conn(&config).await)
        .await
        .ok()?;
        (rows.len() == 3).then_some(rows)
    })
    .await;
    assert_eq!(dlq[0].consumer_service, "event-logger");
    assert_eq!(dlq[1].consumer_service, "event-logger");
    let reasons: Vec<&str> = dlq[..2].iter().map(|r| r.error_message.as_str()).collect();
    assert!(reasons.iter().any(|r| r.contains("not JSON")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("missing field")), "{reasons:?}");
    assert!(dlq[..2]
        .iter()
        .any(|r| r.original_event == json!({"raw": "this is not json"})));
    assert!(dlq.iter().all(|r| r.kafka_offset.is_some()));
    assert_eq!(dlq[2].consumer_service, "leaderboard-manager");
    assert!(
        dlq[2].error_message.contains("data.score"),
        "{}",
        dlq[2].error_message
    );

    // Redelivery: consumers in fresh groups re-read the whole topic from offset 0. The sinks'
    // offset guards must skip every record, leaving every count, row and score as it was.
    let again = start_consumers(
        &Config {
            consumer: gamemetrics::config::ConsumerConfig {
                consumer_group_prefix: format!("replay-{}", config.consumer.consumer_group_prefix),
                ..config.consumer.clone()
            },
            ..config.clone()
        },
        &Role::ALL,
    );
    for c in &again {
        eventually(
            Duration::from_secs(60),
            "the replaying consumer reads the topic",
            || async {
                (c.flush_and_wait(Duration::from_secs(10)).await && !c.partitions().is_empty()).then_some(())
            },
        )
        .await;
    }
    assert_state(&config, &model).await;
    assert_eq!(
        count(&config, "SELECT count(*) AS n FROM dlq").await,
        3,
        "dead letters are written once"
    );
    for c in again.into_iter().chain(p.consumers) {
        c.shutdown(Duration::from_secs(10)).await;
    }
}

#[actix_web::test]
async fn two_loggers_in_one_group_split_the_partitions_and_write_each_event_once() {
    let config = pipeline_config(|_| {}).await;
    let first = start_consumers(&config, &[Role::Logger]);
    let second = start_consumers(&config, &[Role::Logger]);
    let app = spawn_app_with(|c| *c = config.clone()).await;
    // Produce only once the group has settled, so the split is what is being tested.
    eventually(
        Duration::from_secs(60),
        "the group to split the partitions",
        || async {
            let (a, b) = (first[0].assignment(), second[0].assignment());
            (!a.is_empty() && !b.is_empty() && a.len() + b.len() == 3).then_some(())
        },
    )
    .await;
    let mut sent = 0;
    for i in 0..90 {
        let ev = json!({"event_type":"session_start","player_id":format!("p{i}"),"game_id":"g"});
        assert_eq!(app.post_event(&ev).await.status(), 200);
        sent += 1;
    }
    eventually(Duration::from_secs(60), "all events logged", || async {
        (count(&config, "SELECT count(*) AS n FROM events").await == sent).then_some(())
    })
    .await;
    let (a, b) = (first[0].assignment(), second[0].assignment());
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both consumers got partitions: {a:?} {b:?}"
    );
    assert!(
        a.iter().all(|p| !b.contains(p)),
        "no partition is read by both: {a:?} {b:?}"
    );
    assert_eq!(
        count(&config, "SELECT count(DISTINCT event_id) AS n FROM events").await,
        sent
    );
    for c in first.into_iter().chain(second) {
        c.shutdown(Duration::from_secs(10)).await;
    }
    // What the group committed is the next offset to read: exactly the records consumed, not
    // one past (a restart from there would skip a record).
    let group = format!(
        "{}{}",
        config.consumer.consumer_group_prefix,
        Role::Logger.group_id()
    );
    assert_eq!(committed_total(&config, &group), sent);
}

#[derive(QueryableByName, Debug, PartialEq)]
struct Ranked {
    #[diesel(sql_type = Text)]
    player_id: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    rank: i32,
    #[diesel(sql_type = BigInt)]
    score: i64,
}

async fn alltime_table(config: &Config) -> Vec<Ranked> {
    diesel::sql_query(
        "SELECT player_id::text, rank, score FROM leaderboards \
         WHERE game_id = 'arena' AND period = 'alltime' ORDER BY rank",
    )
    .load(&mut pg_conn(config).await)
    .await
    .unwrap_or_default()
}

#[actix_web::test]
async fn the_leaderboards_table_holds_exactly_the_top_100_with_ranks() {
    let p = spawn_pipeline(&[Role::Leaderboard], |_| {}).await;
    let config = p.app.config.clone();
    let post = |player: String, score: i64| {
        let app = &p.app;
        async move {
            let ev = json!({"event_type":"player_score","player_id":player,"game_id":"arena","data":{"score":score}});
            assert_eq!(app.post_event(&ev).await.status(), 200);
        }
    };
    // 150 players with distinct scores 10..1500, plus two tied at 5000 (ties: player id descending).
    for i in 1..=150 {
        post(format!("p{i:03}"), i * 10).await;
    }
    post("tie-a".into(), 5000).await;
    post("tie-b".into(), 5000).await;
    let mut expected: Vec<(String, i64)> = (1..=150).map(|i| (format!("p{i:03}"), i * 10)).collect();
    expected.push(("tie-a".into(), 5000));
    expected.push(("tie-b".into(), 5000));
    let ranked = |mut v: Vec<(String, i64)>| {
        v.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
        v.into_iter()
            .take(100)
            .enumerate()
            .map(|(i, (player_id, score))| Ranked {
                player_id,
                rank: i as i32 + 1,
                score,
            })
            .collect::<Vec<_>>()
    };
    let want = ranked(expected.clone());
    assert_eq!(&want[0].player_id, "tie-b");
    eventually(Duration::from_secs(30), "the top 100", || async {
        (alltime_table(&config).await == want).then_some(())
    })
    .await;

    // Ten players from the bottom jump to the top: ten others must leave the table.
    for i in 1..=10 {
        post(format!("p{i:03}"), 10_000).await;
        expected[i as usize - 1].1 += 10_000;
    }
    let want = ranked(expected);
    eventually(Duration::from_secs(30), "the new top 100", || async {
        (alltime_table(&config).await == want).then_some(())
    })
    .await;
    for c in p.consumers {
        c.shutdown(Duration::from_secs(10)).await;
    }
}

/// A connection holding `table` locked in an open transaction (COMMIT on it releases it).
async fn lock_table(config: &Config, table: &str) -> diesel_async::AsyncPgConnection {
    let mut conn = pg_conn(config).await;
    diesel::sql_query("BEGIN").execute(&mut conn).await.unwrap();
    diesel::sql_query(format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

#[actix_web::test]
async fn a_stalled_sink_pauses_the_partition_and_it_resumes_after() {
    let config = pipeline_config(|c| {
        c.consumer.partition_max_in_flight = 50;
        c.consumer.logger_flush_events = 20;
    })
    .await;
    let metrics = gamemetrics::metrics::Metrics::new().unwrap();
    let consumers = start_consumers_with(&config, &[Role::Logger], &metrics);
    let app = spawn_app_with(|c| *c = config.clone()).await;
    // Stall the logger's sink: its INSERTs wait behind this lock.
    let mut blocker = lock_table(&config, "events").await;
    for i in 0..600 {
        let ev = json!({"event_type":"session_start","player_id":format!("p{}", i % 3),"game_id":"g"});
        assert_eq!(app.post_event(&ev).await.status(), 200);
    }
    let paused = r#"gamemetrics_consumer_partition_paused{partition="#;
    eventually(Duration::from_secs(30), "a paused partition", || async {
        metrics
            .render()
            .lines()
            .any(|l| l.starts_with(paused) && l.ends_with(" 1"))
            .then_some(())
    })
    .await;
    diesel::sql_query("COMMIT").execute(&mut blocker).await.unwrap();
    eventually(
        Duration::from_secs(60),
        "every event written once the sink is free",
        || async { (count(&config, "SELECT count(*) AS n FROM events").await == 600).then_some(()) },
    )
    .await;
    eventually(Duration::from_secs(30), "every partition resumed", || async {
        metrics
            .render()
            .lines()
            .filter(|l| l.starts_with(paused))
            .all(|l| l.ends_with(" 0"))
            .then_some(())
    })
    .await;
    for c in consumers {
        c.shutdown(Duration::from_secs(10)).await;
    }
}

#[actix_web::test]
async fn scores_keep_landing_while_the_top_n_write_waits_and_the_uncommitted_bound_holds() {
    let config = pipeline_config(|c| {
        c.consumer.partition_max_in_flight = 50;
        c.consumer.partition_max_uncommitted = 400;
    })
    .await;
    let metrics = gamemetrics::metrics::Metrics::new().unwrap();
    let consumers = start_consumers_with(&config, &[Role::Leaderboard], &metrics);
    let app = spawn_app_with(|c| *c = config.clone()).await;
    // One player: one partition. Its first event opens the partition (records that arrive
    // while a partition opens are handed on together once it is).
    let ev = json!({"event_type":"player_score","player_id":"p0","game_id":"arena","data":{"score":1}});
    assert_eq!(app.post_event(&ev).await.status(), 200);
    let ranked = |score| {
        vec![Ranked {
            player_id: "p0".into(),
            rank: 1,
            score,
        }]
    };
    eventually(
        Duration::from_secs(30),
        "the first score in the table",
        || async { (alltime_table(&config).await == ranked(1)).then_some(()) },
    )
    .await;
    // Stall the top-N write: its read of the stored boards waits behind this lock. Scores of a
    // record are in Redis before its board is written; the record is durable only after.
    let mut blocker = lock_table(&config, "leaderboards").await;
    for _ in 0..6 {
        let batch: Vec<Value> = (0..100).map(|_| ev.clone()).collect();
        assert_eq!(app.post_batch(&json!(batch)).await.status(), 200);
    }
    let key = format!("{}:alltime", redis_keys(&config).board_base("arena"));
    let boards = redis_conn(&config, 1).await;
    let score = |mut c: redis::aio::MultiplexedConnection, key: String| async move {
        redis::AsyncCommands::zscore::<_, _, Option<i64>>(&mut c, &key, "p0")
            .await
            .unwrap()
            .unwrap_or(0)
    };
    // Past PARTITION_MAX_IN_FLIGHT: records waiting only for the table hold no event.
    eventually(
        Duration::from_secs(30),
        "more scores than the in-flight bound",
        || {
            let (c, key) = (boards.clone(), key.clone());
            async move { (score(c, key).await > 200).then_some(()) }
        },
    )
    .await;
    // ...but not past PARTITION_MAX_UNCOMMITTED (and the up to 64 records a source may have
    // been handed before it paused): nothing is durable while the table is locked, so the
    // partition stays paused and the scores stop.
    let stalled = eventually(Duration::from_secs(60), "the scores to stop", || {
        let (c, key) = (boards.clone(), key.clone());
        async move {
            let before = score(c.clone(), key.clone()).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            (score(c, key).await == before).then_some(before - 1)
        }
    })
    .await;
    assert!(
        stalled <= 400 + 64,
        "{stalled} scores applied past the uncommitted bound"
    );
    let paused = r#"gamemetrics_consumer_partition_paused{partition="#;
    assert!(metrics
        .render()
        .lines()
        .any(|l| l.starts_with(paused) && l.ends_with(" 1")));
    diesel::sql_query("COMMIT").execute(&mut blocker).await.unwrap();
    eventually(
        Duration::from_secs(60),
        "every score in the table once",
        || async { (alltime_table(&config).await == ranked(601)).then_some(()) },
    )
    .await;
    for c in consumers {
        assert!(c.flush_and_wait(Duration::from_secs(30)).await);
        c.shutdown(Duration::from_secs(10)).await;
    }
    assert_eq!(score(boards.clone(), key.clone()).await, 601);
    let group = format!(
        "{}{}",
        config.consumer.consumer_group_prefix,
        Role::Leaderboard.group_id()
    );
    eventually(Duration::from_secs(30), "every offset committed", || async {
        (committed_total(&config, &group) == 601).then_some(())
    })
    .await;
}

#[actix_web::test]
async fn the_current_daily_board_follows_event_days_but_not_past_the_server_clock() {
    use actix::Actor;
    use gamemetrics::actors::messages::Position;
    use gamemetrics::actors::messages::{ApplyScores, ScoreDelta};
    use redis::AsyncCommands;
    let config = test_config();
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let sink = redis_sink(&config, &prefix, 86_400).start();
    let far = chrono::Utc::now().timestamp() + 86_400;
    let delta = |offset: i64, player: &str, day: &str| ScoreDelta {
        offset,
        event_id: uuid::Uuid::from_u128(offset as u128 + 1),
        game_id: "g".into(),
        player_id: player.into(),
        score: 10,
        day: day.into(),
        day_expires_at: far,
        week: "2024-W03".into(),
        week_expires_at: far,
        ingested_at: chrono::Utc::now(),
    };
    let position = Position {
        service: "leaderboard-manager",
        topic: "t".into(),
        log: "log-a".into(),
        partition: 0,
    };
    let mut r = redis_conn(&config, 1).await;
    let current = format!("{prefix}leaderboard:g:daily");
    let apply = |d: ScoreDelta| {
        sink.send(ApplyScores {
            position: position.clone(),
            deltas: Arc::new(vec![d]),
        })
    };

    apply(delta(0, "a", "2024-01-15")).await.unwrap().unwrap();
    // Ahead of the server's clock (a client clock running fast): counted on its own dated board
    // but it must not end the current day.
    apply(delta(1, "early", "2999-01-01")).await.unwrap().unwrap();
    let got: Vec<(String, i64)> = r.zrevrange_withscores(&current, 0, -1).await.unwrap();
    assert_eq!(got, [("a".to_owned(), 10)]);
    let future: Vec<(String, i64)> = r
        .zrevrange_withscores(format!("{current}:2999-01-01"), 0, -1)
        .await
        .unwrap();
    assert_eq!(future, [("early".to_owned(), 10)]);
    // A newer day that has begun: the current board starts over with that day's scores.
    apply(delta(2, "b", "2024-01-16")).await.unwrap().unwrap();
    apply(delta(3, "a", "2024-01-15")).await.unwrap().unwrap(); // late, for the previous day
    let got: Vec<(String, i64)> = r.zrevrange_withscores(&current, 0, -1).await.unwrap();
    assert_eq!(got, [("b".to_owned(), 10)]);
    let day15: Vec<(String, i64)> = r
        .zrevrange_withscores(format!("{current}:2024-01-15"), 0, -1)
        .await
        .unwrap();
    assert_eq!(day15, [("a".to_owned(), 20)]);
    // Redelivery of the same offsets changes nothing.
    apply(delta(2, "b", "2024-01-16")).await.unwrap().unwrap();
    let got: Vec<(String, i64)> = r.zrevrange_withscores(&current, 0, -1).await.unwrap();
    assert_eq!(got, [("b".to_owned(), 10)]);
    // The day's own expiry goes with its board: the current one, and the dated one it became.
    for key in [current.clone(), format!("{current}:2024-01-15")] {
        let at: i64 = redis::cmd("EXPIRETIME")
            .arg(&key)
            .query_async(&mut r)
            .await
            .unwrap();
        assert_eq!(at, far, "{key} expires with its day's retention");
    }

    // A current board written before current boards carried an expiry, when every event also
    // went to its day's dated board: that one is whole and stays; the old current board goes.
    let old = format!("{prefix}leaderboard:h:daily");
    let () = redis::pipe()
        .zadd(&old, "x", 5)
        .zadd(format!("{old}:2024-01-15"), "x", 5)
        .zadd(format!("{old}:2024-01-15"), "y", 3)
        .expire_at(format!("{old}:2024-01-15"), far)
        .set(format!("{old}:current"), "2024-01-15")
        .query_async(&mut r)
        .await
        .unwrap();
    let next_day = ScoreDelta {
        game_id: "h".into(),
        ..delta(4, "z", "2024-01-16")
    };
    apply(next_day).await.unwrap().unwrap();
    let day15: Vec<(String, i64)> = r
        .zrevrange_withscores(format!("{old}:2024-01-15"), 0, -1)
        .await
        .unwrap();
    assert_eq!(day15, [("x".to_owned(), 5), ("y".to_owned(), 3)]);
    let got: Vec<(String, i64)> = r.zrevrange_withscores(&old, 0, -1).await.unwrap();
    assert_eq!(got, [("z".to_owned(), 10)]);
}

/// Player `p`'s session_start at `offset` with event id `id`, as the stats lane sends it.
fn delta(offset: i64, id: uuid::Uuid) -> gamemetrics::actors::messages::StatDelta {
    gamemetrics::actors::messages::StatDelta {
        offset,
        event_id: id,
        player_id: "p".into(),
        event_type: "session_start".into(),
        timestamp: "2024-01-15T10:00:00.000000Z".into(),
        ingested_at: chrono::Utc::now(),
    }
}

#[actix_web::test]
async fn a_client_event_id_seen_at_one_offset_is_not_counted_again_at_another() {
    use actix::Actor;
    use gamemetrics::actors::messages::Position;
    use gamemetrics::actors::messages::{ApplyStats, ClaimFirst, StatDelta, StatsApplied};
    use redis::AsyncCommands;
    let config = test_config();
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let window = 600;
    let sink = redis_sink(&config, &prefix, window).start();
    let (retried, other, single) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let position = Position {
        service: "stats-aggregator",
        topic: "t".into(),
        log: "log-a".into(),
        partition: 0,
    };
    let apply = |deltas: Vec<StatDelta>| {
        sink.send(ApplyStats {
            position: position.clone(),
            deltas: Arc::new(deltas),
        })
    };
    let claim = |items: Vec<(i64, uuid::Uuid)>| {
        sink.send(ClaimFirst {
            position: position.clone(),
            items: items
                .into_iter()
                .map(|(offset, event_id)| gamemetrics::actors::messages::ClaimItem {
                    offset,
                    event_id,
                    player_id: "p".into(),
                })
                .collect(),
        })
    };

    // The PostgreSQL lane gets to offsets 0..3 first: the retry at 2 is named.
    let retries = claim(vec![(0, retried), (1, other), (2, retried)])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retries, vec![2]);
    // The live lane then applies the same offsets and one more: the retry is skipped, the first
    // sightings (already claimed, by their own offsets) count.
    let applied = apply(vec![
        delta(0, retried),
        delta(1, other),
        delta(2, retried),
        delta(3, single),
    ])
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        applied,
        StatsApplied {
            applied: 3,
            checked_from: 0,
            retries: vec![2],
            refused: vec![],
        },
        "the live lane names the retry it skipped, for the PostgreSQL lane to reuse"
    );
    // A later retry in another batch, and a replay of the claims after a crash, agree.
    let later = apply(vec![delta(7, other)]).await.unwrap().unwrap();
    assert_eq!(
        (later.applied, later.checked_from, later.retries),
        (0, 4, vec![7])
    );
    // Offsets already applied are skipped unchecked (checked_from says so).
    let again = apply(vec![delta(3, single)]).await.unwrap().unwrap();
    assert_eq!((again.applied, again.checked_from), (0, 8));
    let retries = claim(vec![(0, retried), (2, retried), (7, other)])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retries, vec![2, 7]);

    let mut r = redis_conn(&config, 0).await;
    let total: i64 = r
        .hget(format!("{prefix}player_stats:p"), "total_events")
        .await
        .unwrap();
    assert_eq!(total, 3);
    // The claim is a field of one claims hash of this generation, which expires within two
    // windows.
    let hashes: Vec<String> = r.keys(format!("{prefix}gamemetrics:seen:*")).await.unwrap();
    let mut holding = Vec::new();
    for h in &hashes {
        let found: bool = r.hexists(h, retried.as_bytes().to_vec()).await.unwrap();
        if found {
            holding.push(h.clone());
        }
    }
    assert_eq!(holding.len(), 1, "one hash holds the claim: {hashes:?}");
    let ttl: i64 = r.ttl(&holding[0]).await.unwrap();
    assert!(
        ttl > 0 && ttl <= 2 * window as i64,
        "claims expire within two windows, ttl {ttl}"
    );
}

#[actix_web::test]
async fn a_claim_outlives_its_generation_by_a_window_and_then_expires() {
    use actix::Actor;
    use gamemetrics::actors::messages::{ApplyStats, Position};
    let config = test_config();
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let window = 2;
    let sink = redis_sink(&config, &prefix, window)
        .with_claim_buckets(16)
        .start();
    let position = Position {
        service: "stats-aggregator",
        topic: "t".into(),
        log: "log-a".into(),
        partition: 0,
    };
    let id = uuid::Uuid::new_v4();
    let apply = |offset: i64| {
        sink.send(ApplyStats {
            position: position.clone(),
            deltas: Arc::new(vec![delta(offset, id)]),
        })
    };
    let generation = || chrono::Utc::now().timestamp() as u64 / window;
    let start = generation();
    assert_eq!(apply(0).await.unwrap().unwrap().applied, 1);
    // The next generation still finds it (in the previous one's hashes), and renews it.
    while generation() == start {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = apply(5).await.unwrap().unwrap();
    assert_eq!(
        (again.applied, again.retries),
        (0, vec![5]),
        "a retry one generation later"
    );
    // Two generations without a sighting: the claim is gone, the id counts as new.
    let renewed = generation();
    while generation() < renewed + 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let later = apply(9).await.unwrap().unwrap();
    assert_eq!(
        (later.applied, later.retries),
        (1, vec![]),
        "forgotten after its window"
    );
}

#[actix_web::test]
async fn freshness_is_recorded_per_store_from_ingest_to_durable() {
    let config = pipeline_config(|_| {}).await;
    let metrics = gamemetrics::metrics::Metrics::new().unwrap();
    let consumers = start_consumers_with(&config, &Role::ALL, &metrics);
    let app = start_app(config.clone());
    let scoring =
        json!({"event_type": "player_score", "player_id": "p", "game_id": "g", "data": {"score": 3}});
    let other = json!({"event_type": "session_start", "player_id": "p", "game_id": "g"});
    for ev in [&scoring, &scoring, &other] {
        assert_eq!(app.post_event(ev).await.status(), 200);
    }
    let series: Vec<String> = [
        ("event-logger", "postgres", 3),
        ("stats-aggregator", "redis", 3),
        ("leaderboard-manager", "redis", 2),
    ]
    .iter()
    .map(|(service, sink, n)| {
        format!(r#"gamemetrics_consumer_end_to_end_seconds_count{{service="{service}",sink="{sink}"}} {n}"#)
    })
    .collect();
    eventually(
        Duration::from_secs(30),
        "a latency per store for each event",
        || {
            let text = metrics.render();
            let all = series.iter().all(|s| text.contains(s.as_str()));
            async move { all.then_some(()) }
        },
    )
    .await;
    for c in consumers {
        c.shutdown(Duration::from_secs(10)).await;
    }
}
