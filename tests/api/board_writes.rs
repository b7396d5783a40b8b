//! The top-N writes' cadence in the PostgreSQL sink: at most one per board gap, except a write
//! somebody waits on (a drain before shutdown, a forget), which starts at once, as does one
//! already waiting when somebody comes to wait on it, or one that came while a write ran.

use crate::helpers::*;
use crate::model::count;
use actix::prelude::*;
use gamemetrics::actors::messages::{HurryBoards, Position, ReadTop, WriteBoards};
use gamemetrics::actors::sinks::postgres::PgSink;
use gamemetrics::actors::sinks::SinkError;
use gamemetrics::domain::leaderboard::{BoardTop, Period};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Answers every top-N read with one player on game g1's all-time board, whoever is set last
/// when the gate is open; counts the reads begun.
struct Top {
    leader: Arc<Mutex<&'static str>>,
    gate: tokio::sync::watch::Receiver<bool>,
    reads: Arc<AtomicUsize>,
}

impl Actor for Top {
    type Context = Context<Self>;
}

impl Handler<ReadTop> for Top {
    type Result = ResponseFuture<Result<Vec<BoardTop>, SinkError>>;

    fn handle(&mut self, _: ReadTop, _: &mut Context<Self>) -> Self::Result {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let (leader, mut gate) = (self.leader.clone(), self.gate.clone());
        Box::pin(async move {
            gate.wait_for(|open| *open)
                .await
                .map_err(|_| SinkError::Postgres("gate gone".into()))?;
            let leader = *leader.lock().expect("leader");
            Ok(vec![BoardTop {
                game_id: "g1".into(),
                period: Period::Alltime,
                entries: vec![(leader.into(), 10)],
            }])
        })
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
    let (gate, gate_rx) = tokio::sync::watch::channel(true);
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = Top {
        leader: leader.clone(),
        gate: gate_rx,
        reads: reads.clone(),
    }
    .start()
    .recipient();
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

    // A partition has one board write in flight: sent before its drain began, it is hurried.
    *leader.lock().unwrap() = "p3";
    let third = tokio::spawn(pg.send(write(false)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third write waits for the gap");
    assert!(holds("p2").await && !holds("p3").await);
    pg.send(HurryBoards).await.expect("sink");
    tokio::time::timeout(Duration::from_secs(60), third)
        .await
        .expect("the hurried write does not wait out the gap")
        .expect("task")
        .expect("sink")
        .expect("hurried write");
    assert!(
        holds("p3").await && !holds("p2").await,
        "the hurried write ran: p3 leads"
    );

    // An urgent write that comes while another runs goes right after it, not after its gap.
    gate.send_replace(false);
    let before = reads.load(Ordering::SeqCst);
    *leader.lock().unwrap() = "p4";
    let running = tokio::spawn(pg.send(write(true)));
    while reads.load(Ordering::SeqCst) == before {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let next = tokio::spawn(pg.send(write(true)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    gate.send_replace(true);
    running
        .await
        .expect("task")
        .expect("sink")
        .expect("running write");
    tokio::time::timeout(Duration::from_secs(60), next)
        .await
        .expect("an urgent write that came during a write does not wait out the gap after it")
        .expect("task")
        .expect("sink")
        .expect("next write");
    assert_eq!(
        reads.load(Ordering::SeqCst),
        before + 2,
        "two writes, not one shared"
    );
}
