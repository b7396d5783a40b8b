//! The top-N writes' cadence in the PostgreSQL sink: at most one per board gap, except a write
//! somebody waits on (a drain before shutdown, a forget), which starts at once.

use crate::helpers::*;
use crate::model::count;
use actix::prelude::*;
use gamemetrics::actors::messages::{Position, ReadTop, WriteBoards};
use gamemetrics::actors::sinks::postgres::PgSink;
use gamemetrics::actors::sinks::SinkError;
use gamemetrics::domain::leaderboard::{BoardTop, Period};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Answers every top-N read with one player on game g1's all-time board, whoever is set last.
struct Top(Arc<Mutex<&'static str>>);

impl Actor for Top {
    type Context = Context<Self>;
}

impl Handler<ReadTop> for Top {
    type Result = Result<Vec<BoardTop>, SinkError>;

    fn handle(&mut self, _: ReadTop, _: &mut Context<Self>) -> Self::Result {
        let leader = *self.0.lock().expect("leader");
        Ok(vec![BoardTop {
            game_id: "g1".into(),
            period: Period::Alltime,
            entries: vec![(leader.into(), 10)],
        }])
    }
}

#[actix_web::test]
async fn a_board_write_waits_out_the_gap_unless_somebody_waits_on_it() {
    let config = pipeline_config(|_| {}).await;
    // A gap no test outlasts: the second write can only start early by being urgent.
    let pg = PgSink::new(gamemetrics::db::pg_pool(&config.database))
        .with_board_gap(Duration::from_secs(3600))
        .start();
    let leader = Arc::new(Mutex::new("p1"));
    let reader = Top(leader.clone()).start().recipient();
    let write = |urgent| WriteBoards {
        position: Position {
            service: "leaderboard-manager",
            topic: "t".into(),
            log: "log-a".into(),
            partition: 0,
        },
        game_ids: vec!["g1".into()],
        n: 100,
        reader: reader.clone(),
        dlq: Vec::new(),
        urgent,
    };
    let holds = |player: &'static str| {
        let config = config.clone();
        async move {
            count(
                &config,
                &format!(
                    "SELECT count(*) AS n FROM leaderboards WHERE game_id = 'g1' AND player_id = '{player}'"
                ),
            )
            .await
                == 1
        }
    };
    pg.send(write(false)).await.expect("sink").expect("first write");
    assert!(holds("p1").await, "the first write starts at once");

    *leader.lock().unwrap() = "p2";
    let second = tokio::spawn(pg.send(write(false)));
    // Not a timing claim: within the hour-long gap this write must not have started.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "a second write waits for the gap");
    assert!(holds("p1").await && !holds("p2").await);

    // A liveness bound, not a speed claim: without the urgent path this waits for the hour.
    tokio::time::timeout(Duration::from_secs(60), pg.send(write(true)))
        .await
        .expect("the urgent write does not wait out the gap")
        .expect("sink")
        .expect("urgent write");
    second
        .await
        .expect("task")
        .expect("sink")
        .expect("the waiting write shares it");
    assert!(
        holds("p2").await && !holds("p1").await,
        "the urgent write ran: p2 leads"
    );
}
