//! Records a store refuses for what they are, not because it is down: a row PostgreSQL won't
//! take (a constraint), a Redis key something else wrote with another type. Each such record is
//! dead-lettered alone, with the store's reason and its place on the topic, the planted data is
//! left as it was, and every other record, before and after it on the partition, lands.

use crate::helpers::*;
use crate::model::{count, events, Model};
use gamemetrics::actors::Role;
use gamemetrics::config::Config;
use gamemetrics::domain::leaderboard::{Board, Period};
use redis::AsyncCommands;
use serde_json::{json, Value};
use std::time::Duration;

async fn execute(config: &Config, sql: &str) {
    diesel_async::RunQueryDsl::execute(diesel::sql_query(sql), &mut pg_conn(config).await)
        .await
        .expect(sql);
}

async fn dead_letters(config: &Config, service: &str, like: &str) -> i64 {
    count(
        config,
        &format!(
            "SELECT count(*) AS n FROM dlq WHERE consumer_service = '{service}' AND error_message LIKE '%{like}%' \
             AND kafka_offset IS NOT NULL"
        ),
    )
    .await
}

fn scored(player: &str, game: &str) -> Value {
    json!({"event_type": "player_score", "player_id": player, "game_id": game,
           "timestamp": "2024-01-15T10:00:00Z", "data": {"score": 7}})
}

#[actix_web::test]
async fn a_record_a_store_refuses_is_dead_lettered_alone_and_the_partition_moves_on() {
    let config = pipeline_config(|c| c.consumer.leaderboard_retention_days = 36_500).await;
    // Planted before any consumer writes: a constraint in each table a role writes, and keys of
    // the wrong type where a player's stats and a game's board would go.
    execute(
        &config,
        "ALTER TABLE events ADD CONSTRAINT no_cheaters CHECK (player_id <> 'cheater')",
    )
    .await;
    execute(
        &config,
        "ALTER TABLE player_statistics ADD CONSTRAINT no_stat_refused CHECK (player_id <> 'stat-refused')",
    )
    .await;
    let keys = redis_keys(&config);
    let planted_stats = keys.player_stats("planted");
    let planted_board = format!("{}:alltime", keys.board_base("game-planted"));
    redis_conn(&config, 0)
        .await
        .set::<_, _, ()>(&planted_stats, "not a hash")
        .await
        .expect("SET");
    redis_conn(&config, 1)
        .await
        .set::<_, _, ()>(&planted_board, "not a sorted set")
        .await
        .expect("SET");
    // A game's board keys the scores script reaches in other ways than its all-time board: a
    // weekly marker that is not a string; the dated board of the events' day, which the first
    // event of that day would rename to the current board; and the dated board of the day a
    // marker names when there is no current board, which a rollover would leave for that day's
    // later events to write.
    let boards = |game: &str, period: Period, stamp: Option<&str>| match stamp {
        Some(s) => keys.board(game, &Board::Dated(period, s.to_owned())),
        None => keys.board_marker(game, period),
    };
    let mut c1 = redis_conn(&config, 1).await;
    let _: () = c1
        .hset(boards("game-marked", Period::Weekly, None), "x", 1)
        .await
        .expect("HSET");
    for (key, value) in [
        (
            boards("game-dated", Period::Daily, Some("2024-01-15")),
            "not a sorted set",
        ),
        (boards("game-rolled", Period::Daily, None), "2024-01-14"),
        (
            boards("game-rolled", Period::Daily, Some("2024-01-14")),
            "not a sorted set",
        ),
    ] {
        let _: () = c1.set(key, value).await.expect("SET");
    }
    let consumers = start_consumers(&config, &Role::ALL);
    let app = spawn_app_with(|c| *c = config.clone()).await;

    // The refused records first, then ordinary traffic on every partition behind them.
    let refused = vec![
        scored("cheater", "game-0"),
        scored("cheater", "game-1"),
        scored("planted", "game-2"),
        scored("someone", "game-planted"),
        scored("someone", "game-marked"),
        scored("someone", "game-dated"),
        scored("someone", "game-rolled"),
        scored("stat-refused", "game-0"),
    ];
    post_all(&app, refused, 1).await;
    let mut model = Model::default();
    for (ev, id) in post_all(&app, events(300, 41), 8).await {
        model.add(&ev, &id);
    }

    eventually(
        Duration::from_secs(60),
        "each refused record in the DLQ, alone",
        || async {
            let logger = dead_letters(&config, "event-logger", "no_cheaters").await;
            let stats_redis = dead_letters(&config, "stats-aggregator", "player planted").await;
            let stats_pg = dead_letters(&config, "stats-aggregator", "no_stat_refused").await;
            let mut boards = 0;
            for game in ["game-planted", "game-marked", "game-dated", "game-rolled"] {
                boards += dead_letters(&config, "leaderboard-manager", &format!("game {game} ")).await;
            }
            ((logger, stats_redis, stats_pg, boards) == (2, 1, 1, 4)).then_some(())
        },
    )
    .await;

    // Everything else landed: every ordinary event, and every store's view of the records only
    // one store refused.
    let ordinary = model.event_ids.len() as i64;
    eventually(
        Duration::from_secs(60),
        "the ordinary events and the others' records",
        || async {
            let stored = count(
                &config,
                "SELECT count(*) AS n FROM events WHERE player_id NOT IN ('cheater')",
            )
            .await;
            // Ordinary events plus planted's, someone's four and stat-refused's (only `events` refused
            // none of those).
            (stored == ordinary + 6).then_some(())
        },
    )
    .await;
    assert_eq!(
        count(
            &config,
            "SELECT count(*) AS n FROM events WHERE player_id = 'cheater'"
        )
        .await,
        0
    );
    let r0 = redis_view(&config, 0);
    for (player, (total, _, _)) in &model.stats {
        let key = keys.player_stats(player);
        eventually(Duration::from_secs(30), &format!("Redis {key}"), || {
            let (r0, key) = (r0.clone(), key.clone());
            async move {
                let got: Option<i64> = r0.conn().await.ok()?.hget(&key, "total_events").await.ok()?;
                (got == Some(*total)).then_some(())
            }
        })
        .await;
    }
    // The cheater's stats and scores count (only `events` refused them); stat-refused counts in
    // Redis but not in player_statistics; planted, refused by the stats role's Redis, counts in
    // neither of its stores (one dead letter, replayable for that role alone).
    let mut c0 = r0.conn().await.expect("Redis");
    let cheater: Option<i64> = c0
        .hget(keys.player_stats("cheater"), "total_events")
        .await
        .expect("HGET");
    assert_eq!(cheater, Some(2));
    eventually(Duration::from_secs(30), "player_statistics", || async {
        let n = count(
            &config,
            "SELECT count(*) AS n FROM player_statistics WHERE player_id IN ('cheater', 'someone')",
        )
        .await;
        (n == 2).then_some(())
    })
    .await;
    assert_eq!(
        count(
            &config,
            "SELECT count(*) AS n FROM player_statistics WHERE player_id IN ('stat-refused', 'planted')"
        )
        .await,
        0
    );
    // The planted keys are as they were planted.
    let stats_left: String = c0.get(&planted_stats).await.expect("GET");
    assert_eq!(stats_left, "not a hash");
    let board_left: String = redis_view(&config, 1)
        .conn()
        .await
        .expect("Redis")
        .get(&planted_board)
        .await
        .expect("GET");
    assert_eq!(board_left, "not a sorted set");
    let marker_left: i64 = c1
        .hget(boards("game-marked", Period::Weekly, None), "x")
        .await
        .expect("HGET");
    assert_eq!(marker_left, 1);
    for (game, stamp) in [("game-dated", "2024-01-15"), ("game-rolled", "2024-01-14")] {
        let left: String = c1
            .get(boards(game, Period::Daily, Some(stamp)))
            .await
            .expect("GET");
        assert_eq!(left, "not a sorted set", "{game}");
    }
    // Nothing else was dead-lettered: the model's one scoring event without a score, and the eight.
    eventually(
        Duration::from_secs(30),
        "exactly the expected dead letters",
        || async { (count(&config, "SELECT count(*) AS n FROM dlq").await == 9).then_some(()) },
    )
    .await;
    for c in consumers {
        c.shutdown(Duration::from_secs(10)).await;
    }
}
