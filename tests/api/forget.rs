//! Forgetting a player: `DELETE /players/{id}` (admin keys only) and `gamemetrics players
//! forget`, with the player's events in flight during the forget. Afterwards every store holds
//! exactly what the other players' events make (the model), nothing of the player is left in
//! any table, hash or board, the stored top N is full again, and the player's later events are
//! dropped.

use crate::helpers::*;
use crate::model::{self, count, Model};
use gamemetrics::actors::Role;
use gamemetrics::auth;
use gamemetrics::config::Config;
use redis::AsyncCommands;
use serde_json::{json, Value};
use std::time::Duration;

const FORGOTTEN: &str = "player-3";

/// How long a test waits for a forget to finish: a bound on liveness, not a speed claim. A
/// forget's scan of the boards database takes ~100 round trips per million keys, and on a
/// machine draining a backlog beside the test each waits up to a second behind its scripts.
const FORGET_DEADLINE: Duration = Duration::from_secs(180);

async fn delete(app: &TestApp, key: Option<&str>, player: &str) -> reqwest::Response {
    let mut req = app.client.delete(format!("{}/players/{player}", app.address));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.expect("DELETE")
}

/// Every trace of `player` in the stores: rows of events, dlq, player_statistics and
/// leaderboards, the Redis stats hash, and board entries (any sorted set under the prefix).
async fn traces(config: &Config, player: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (table, cond) in [
        ("events", "player_id = $1"),
        ("dlq", "original_event->>'player_id' = $1"),
        ("player_statistics", "player_id = $1"),
        ("leaderboards", "player_id = $1"),
    ] {
        let n = count(
            config,
            &format!(
                "SELECT count(*) AS n FROM {table} WHERE {}",
                cond.replace("$1", &format!("'{player}'"))
            ),
        )
        .await;
        if n > 0 {
            found.push(format!("{n} rows in {table}"));
        }
    }
    let keys = redis_keys(config);
    let mut stats = redis_conn(config, 0).await;
    let exists: bool = stats.exists(keys.player_stats(player)).await.expect("EXISTS");
    if exists {
        found.push("the Redis stats hash".into());
    }
    let mut boards = redis_conn(config, 1).await;
    let all: Vec<String> = boards
        .keys(format!("{}*", config.redis.redis_key_prefix))
        .await
        .expect("KEYS");
    for key in all {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut boards)
            .await
            .expect("TYPE");
        if kind == "zset" {
            let score: Option<f64> = boards.zscore(&key, player).await.expect("ZSCORE");
            if score.is_some() {
                found.push(format!("an entry in {key}"));
            }
        }
    }
    found
}

/// A player id other than `player` whose events go to the same partition: one of its events
/// posted after one of `player`'s is read after it.
fn same_partition_as(player: &str, partitions: i32) -> String {
    (0..)
        .map(|i| format!("companion-{i}"))
        .find(|c| java_partition(c, partitions) == java_partition(player, partitions))
        .expect("some id shares the partition")
}

#[actix_web::test]
async fn forgetting_a_player_mid_stream_removes_them_everywhere_and_for_good() {
    let p = spawn_pipeline(&Role::ALL, |c| {
        c.consumer.leaderboard_retention_days = 36_500;
        // A short top N, so removing a player from it must bring the next one in.
        c.consumer.leaderboard_top_n = 3;
        c.http.auth_required = Some(false);
    })
    .await;
    let (app, config) = (&p.app, p.app.config.clone());
    let pg = gamemetrics::db::pg_pool(&config.database);
    let admin = auth::create_key(&pg, None, None).await.expect("admin key");
    let game_key = auth::create_key(&pg, Some("game-0"), None)
        .await
        .expect("game key");

    let events = model::events(400, 17);
    let (before, during) = events.split_at(200);
    let mut accepted = post_all(app, before.to_vec(), 8).await;
    // A dead letter naming the player: a score the leaderboard refuses.
    let refused = json!({"event_type": "player_score", "player_id": FORGOTTEN, "game_id": "game-1",
                         "timestamp": "2024-01-15T10:00:00Z", "data": {"score": -5}});
    assert_eq!(app.post_event(&refused).await.status(), 200);
    eventually(Duration::from_secs(30), "the player's dead letter", || async {
        let sql = format!("SELECT count(*) AS n FROM dlq WHERE original_event->>'player_id' = '{FORGOTTEN}'");
        (count(&config, &sql).await == 1).then_some(())
    })
    .await;

    // Refusals first: no key, a game's key, a bad id.
    let res = delete(app, None, FORGOTTEN).await;
    assert_eq!(res.status(), 401);
    let res = delete(app, Some(&game_key), FORGOTTEN).await;
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.expect("json");
    assert!(body["error"]["message"]
        .as_str()
        .expect("message")
        .contains("admin key"));
    let res = delete(app, Some(&admin), &"x".repeat(101)).await;
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.json::<Value>().await.expect("json")["error"]["field"],
        "player_id"
    );

    // The forget lands while the second half of the events, the player's among them, is posted.
    let forget = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let res = delete(app, Some(&admin), FORGOTTEN).await;
        assert_eq!(res.status(), 202);
        res.json::<Value>().await.expect("json")
    };
    let (later, first) = tokio::join!(post_all(app, during.to_vec(), 4), forget);
    accepted.extend(later);
    assert_eq!(first["status"], "forgetting");
    assert_eq!(first["first_request"], true);

    let mut expected = Model::default();
    for (ev, id) in &accepted {
        if ev["player_id"] != FORGOTTEN {
            expected.add(ev, id);
        }
    }
    assert!(
        accepted.iter().any(|(ev, _)| ev["player_id"] == FORGOTTEN),
        "the test must post events of the player"
    );
    model::assert_state(&config, &expected).await;

    // Asked again: done, with what each role removed; every request audited. The wait is
    // long because the leaderboard's forget scans Redis's whole boards database: in CI a
    // million-event backlog drains beside this test and fills it with retry claims while each
    // round trip waits behind the backlog's script calls (docs/operations.md, "Forgetting").
    let done: Value = eventually(FORGET_DEADLINE, "the forget to complete", || async {
        let res = delete(app, Some(&admin), FORGOTTEN).await;
        (res.status() == 200).then_some(())?;
        res.json::<Value>().await.ok()
    })
    .await;
    assert_eq!(done["status"], "forgotten");
    assert_eq!(done["first_request"], false);
    assert!(
        done["events_removed"].as_i64().expect("events_removed") > 0,
        "{done}"
    );
    assert_eq!(done["dlq_removed"], 1, "{done}");
    assert_eq!(done["statistics_removed"], 1, "{done}");
    let admin_id = &admin[4..16];
    assert_eq!(done["requested_by"], admin_id, "{done}");
    let audited = format!("SELECT count(*) AS n FROM player_forget_requests WHERE player_id = '{FORGOTTEN}' AND requested_by = '{admin_id}' AND via = 'http'");
    assert!(count(&config, &audited).await >= 2);
    assert_eq!(traces(&config, FORGOTTEN).await, Vec::<String>::new());

    // Later events of the player are accepted (Kafka holds them) but never applied: one of
    // another player on the same partition, posted after, shows the consumers went past them.
    let companion = same_partition_as(FORGOTTEN, config.kafka.kafka_topic_partitions);
    let later = json!({"event_type": "player_score", "player_id": FORGOTTEN, "game_id": "game-1",
                       "timestamp": "2024-01-15T11:00:00Z", "data": {"score": 4999}});
    assert_eq!(app.post_event(&later).await.status(), 200);
    let marker = json!({"event_type": "player_score", "player_id": companion, "game_id": "game-1",
                        "timestamp": "2024-01-15T11:00:01Z", "data": {"score": 1}});
    let (_, marker_id) = post_all(app, vec![marker.clone()], 1).await.remove(0);
    expected.add(&marker, &marker_id);
    model::assert_state(&config, &expected).await;
    assert_eq!(traces(&config, FORGOTTEN).await, Vec::<String>::new());
}

#[actix_web::test]
async fn the_cli_forgets_a_player_and_waits_until_every_role_has() {
    let p = spawn_pipeline(&Role::ALL, |c| c.consumer.leaderboard_retention_days = 36_500).await;
    let (app, config) = (&p.app, p.app.config.clone());
    let event = |player: &str| {
        json!({"event_type": "player_score", "player_id": player, "game_id": "game-cli",
               "timestamp": "2024-01-15T10:00:00Z", "data": {"score": 10}})
    };
    post_all(app, vec![event("cli-gone"), event("cli-stays")], 2).await;
    eventually(Duration::from_secs(30), "both players' rows", || async {
        (count(&config, "SELECT count(*) AS n FROM events").await == 2).then_some(())
    })
    .await;
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_gamemetrics"))
            .args(["players", "forget", "cli-gone", "--wait", "60"])
            .env("KAFKA_BROKERS", config.kafka.brokers())
            .env("KAFKA_TOPIC", &config.kafka.kafka_topic)
            .env("DATABASE_URL", config.database.database_url.expose())
            .env("RUST_LOG", "error")
            .output()
            .expect("run gamemetrics players forget")
    };
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(answer["status"], "forgotten");
    assert_eq!(answer["events_removed"], 1);
    assert!(answer["requested_by"].as_str().expect("who").starts_with("cli:"));
    assert_eq!(traces(&config, "cli-gone").await, Vec::<String>::new());
    assert_eq!(
        count(
            &config,
            "SELECT count(*) AS n FROM events WHERE player_id = 'cli-stays'"
        )
        .await,
        1
    );
    // Idempotent: again, nothing more is removed, and the request is audited.
    let again: Value = serde_json::from_slice(&run().stdout).expect("json");
    assert_eq!(again["first_request"], false);
    assert_eq!(again["events_removed"], 1);
    let audited = count(
        &config,
        "SELECT count(*) AS n FROM player_forget_requests WHERE via = 'cli'",
    )
    .await;
    assert_eq!(audited, 2);
}

/// A forget cut short: the tombstone is there but the stores have passed the forget record (a
/// crash or a revoke mid-removal). The next time each role opens a partition it finishes it.
#[actix_web::test]
async fn a_forget_cut_short_is_finished_when_a_partition_opens_again() {
    let p = spawn_pipeline(&Role::ALL, |c| c.consumer.leaderboard_retention_days = 36_500).await;
    let (app, config) = (&p.app, p.app.config.clone());
    let ev = |player: &str| {
        json!({"event_type": "player_score", "player_id": player, "game_id": "game-cut",
               "timestamp": "2024-01-15T10:00:00Z", "data": {"score": 3}})
    };
    post_all(app, vec![ev("cut-short"), ev("cut-other")], 2).await;
    eventually(Duration::from_secs(30), "both players everywhere", || async {
        let rows = count(
            &config,
            "SELECT count(*) AS n FROM leaderboards WHERE period = 'alltime'",
        )
        .await;
        let stats = count(&config, "SELECT count(*) AS n FROM player_statistics").await;
        (rows == 2 && stats == 2).then_some(())
    })
    .await;
    for c in p.consumers {
        c.shutdown(Duration::from_secs(10)).await;
    }
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(
            "INSERT INTO forgotten_players (player_id, requested_by) VALUES ('cut-short', 'test')",
        ),
        &mut pg_conn(&config).await,
    )
    .await
    .expect("tombstone");

    // Back, and a record on every partition so each opens.
    let _consumers = start_consumers(&config, &Role::ALL);
    let partitions = config.kafka.kafka_topic_partitions;
    let openers: Vec<Value> = (0..partitions)
        .map(|part| {
            let player = (0..)
                .map(|i| format!("opener-{i}"))
                .find(|id| java_partition(id, partitions) == part)
                .expect("an id on the partition");
            ev(&player)
        })
        .collect();
    post_all(app, openers, 1).await;
    eventually(FORGET_DEADLINE, "the forget finished by every role", || async {
        let done = count(
            &config,
            "SELECT count(*) AS n FROM forgotten_players WHERE logger_done_at IS NOT NULL \
             AND stats_done_at IS NOT NULL AND leaderboard_done_at IS NOT NULL",
        )
        .await;
        (done == 1).then_some(())
    })
    .await;
    assert_eq!(traces(&config, "cut-short").await, Vec::<String>::new());
    assert_eq!(
        count(
            &config,
            "SELECT count(*) AS n FROM events WHERE player_id = 'cut-other'"
        )
        .await,
        1
    );
}

/// Claim-like hashes the boards' database holds beside the boards in production (a million
/// at the default DEDUP_BUCKETS): `tags` hash tags (spread over a cluster's nodes) of
/// `per_tag` keys, made (`HSET`) or removed (`DEL`) inside Redis.
async fn claim_like_keys(config: &Config, op: &str, tags: usize, per_tag: usize) {
    let script = redis::Script::new(
        "for i = 1, tonumber(ARGV[2]) do
           local k = ARGV[1] .. i
           if ARGV[3] == 'DEL' then redis.call('DEL', k) else redis.call('HSET', k, 'f', 'v') end
         end
         return 0",
    );
    let mut conn = redis_view(config, 1).conn().await.expect("Redis");
    for tag in 0..tags {
        let base = format!("{}gamemetrics:seen:{{j{tag}}}:", config.redis.redis_key_prefix);
        script
            .key(format!("{base}0"))
            .arg(&base)
            .arg(per_tag)
            .arg(op)
            .invoke_async::<()>(&mut conn)
            .await
            .expect("claim-like keys");
    }
}

/// Forgetting a player finds their board entries by scanning the boards' database, which also
/// holds the retry claims: up to a million hashes. One sink step visits a bounded share of it
/// (so a step finishes on a busy Redis, and a failed step is sent again from where it began,
/// not from the start), and the steps together still find every board: on a single Redis and
/// on the cluster, whose scan moves from primary to primary.
#[actix_web::test]
async fn a_forget_scans_a_large_boards_database_in_bounded_steps() {
    use actix::Actor;
    use gamemetrics::actors::messages::{ForgetInRedis, LiveDb};
    use gamemetrics::actors::sinks::redis::FORGET_STEP_KEYS;
    use gamemetrics::domain::leaderboard::{Board, Period};
    use redis::AsyncCommands;
    const JUNK: (usize, usize) = (25, 10_000);
    for cluster in [false, true] {
        let mut config = test_config();
        if cluster {
            config.redis = cluster_redis(cluster_port());
        }
        let prefix = config.redis.redis_key_prefix.clone();
        let keys = redis_keys(&config);
        claim_like_keys(&config, "HSET", JUNK.0, JUNK.1).await;
        let mut boards = redis_view(&config, 1).conn().await.expect("Redis");
        let current = |g: &str| keys.board(g, &Board::Current(Period::Alltime));
        for game in ["g0", "g1", "g2"] {
            let _: () = boards
                .zadd_multiple(current(game), &[(5, "gone"), (3, "kept")])
                .await
                .expect("ZADD");
        }
        let dated = keys.board("g3", &Board::Dated(Period::Daily, "2024-01-15".into()));
        let _: () = boards.zadd(&dated, "gone", 7).await.expect("ZADD");

        let sink = redis_sink(&config, &prefix, 0).start();
        let (mut from, mut steps, mut games) = (Some(gamemetrics::db::ScanCursor::default()), 0, Vec::new());
        while let Some(at) = from {
            let step = sink
                .send(ForgetInRedis {
                    player_id: "gone".into(),
                    db: LiveDb::Boards,
                    from: at,
                })
                .await
                .expect("mailbox")
                .expect("a forget step");
            steps += 1;
            games.extend(step.games);
            from = step.next;
        }
        games.sort();
        let what = if cluster { "the cluster" } else { "a single Redis" };
        assert_eq!(games, ["g0", "g1", "g2"], "{what}");
        // At most FORGET_STEP_KEYS (100,000) keys a step: the 250,000 made here take 3 or more.
        assert_eq!(FORGET_STEP_KEYS, 100_000);
        assert!(steps >= 3, "{what}: {steps} steps for {} keys", JUNK.0 * JUNK.1);
        for game in ["g0", "g1", "g2"] {
            let gone: Option<f64> = boards.zscore(current(game), "gone").await.expect("ZSCORE");
            let kept: Option<f64> = boards.zscore(current(game), "kept").await.expect("ZSCORE");
            assert_eq!((gone, kept), (None, Some(3.0)), "{what}, {game}");
        }
        let gone: Option<f64> = boards.zscore(&dated, "gone").await.expect("ZSCORE");
        assert_eq!(gone, None, "{what}, the dated board");
        claim_like_keys(&config, "DEL", JUNK.0, JUNK.1).await;
    }
}
