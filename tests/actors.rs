//! Actor-level tests: the role actors driven with messages, no Kafka, against recording sinks,
//! on paused time so the 30-second and 5-second timers are exercised without waiting for them.
//! (The real sinks are tested end to end in tests/api.)

use actix::prelude::*;
use clap::Parser;
use gamemetrics::actors::forget::Forgetters;
use gamemetrics::actors::lane::RoleCore;
use gamemetrics::actors::leaderboard::{BoardSink, Leaderboard};
use gamemetrics::actors::logger::Logger;
use gamemetrics::actors::messages::*;
use gamemetrics::actors::sinks::SinkError;
use gamemetrics::actors::stats_buffer::StatsBuffer;
use gamemetrics::actors::{Role, RoleSettings};
use gamemetrics::config::ConsumerConfig;
use gamemetrics::domain::leaderboard::{BoardTop, Period};
use gamemetrics::domain::IngestRequest;
use gamemetrics::metrics::Metrics;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    consumer: ConsumerConfig,
}

fn settings(role: Role) -> RoleSettings {
    settings_with(&Cli::parse_from(["test"]).consumer, role)
}

/// A role's settings under `config`, with metrics of their own.
fn settings_with(config: &ConsumerConfig, role: Role) -> RoleSettings {
    RoleSettings::new(config, Metrics::new().expect("metrics"), role)
}

fn position(service: &'static str) -> Position {
    Position {
        service,
        topic: "t".into(),
        log: "log-a".into(),
        partition: 0,
    }
}

fn event(offset: i64, ty: &str, game: &str, data: serde_json::Value) -> Consumed {
    consumed(
        offset,
        json!({"event_type": ty, "player_id": format!("p{}", offset % 7), "game_id": game,
               "timestamp": "2024-01-15T10:00:00Z", "data": data}),
    )
}

/// The record at `offset` of an event sent with this body, validated as the API does.
fn consumed(offset: i64, body: serde_json::Value) -> Consumed {
    let limits = gamemetrics::domain::EventLimits {
        max_data_bytes: 1 << 16,
        max_future_skew: chrono::Duration::seconds(300),
    };
    let e =
        IngestRequest::parse(body.to_string().as_bytes(), &limits, chrono::Utc::now()).expect("valid event");
    Consumed {
        record: Record {
            offset,
            payload: Payload::Event(e),
        },
    }
}

/// A shared list the fakes append to and the tests read.
#[derive(Clone, Default)]
struct Log<T>(Arc<Mutex<Vec<T>>>);
impl<T: Clone> Log<T> {
    fn push(&self, v: T) {
        self.0.lock().unwrap().push(v)
    }
    fn all(&self) -> Vec<T> {
        self.0.lock().unwrap().clone()
    }
}

/// Records every batch it is sent (by offsets); fails the first `fail` of them.
#[derive(Default)]
struct FakeSinks {
    events: Log<Vec<i64>>,
    stats_pg: Log<Vec<i64>>,
    stats_redis: Log<Vec<i64>>,
    scores: Log<Vec<i64>>,
    boards: Log<Vec<String>>,
    /// Offsets the stats upserts were told are retries.
    stats_pg_retries: Log<Vec<i64>>,
    /// Event id -> offset it was first claimed at, as the Redis claim script records it.
    claimed: std::collections::HashMap<uuid::Uuid, i64>,
    fail: Arc<AtomicUsize>,
    /// While set, every stats write to Redis fails.
    redis_down: Arc<AtomicBool>,
    /// Every forget call, as `store:player`, with how many event, stats and score batches had
    /// been written when it came.
    forgets: Log<(String, usize)>,
}

impl FakeSinks {
    fn failing(&self) -> bool {
        self.fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

impl Actor for FakeSinks {
    type Context = Context<Self>;
}

impl Handler<WriteEvents> for FakeSinks {
    type Result = Result<usize, SinkError>;
    fn handle(&mut self, m: WriteEvents, _: &mut Context<Self>) -> Self::Result {
        self.events.push(m.records.iter().map(|r| r.offset).collect());
        if self.failing() {
            return Err(SinkError::Postgres("injected".into()));
        }
        Ok(m.records.len())
    }
}

impl Handler<UpsertStats> for FakeSinks {
    type Result = Result<usize, SinkError>;
    fn handle(&mut self, m: UpsertStats, _: &mut Context<Self>) -> Self::Result {
        self.stats_pg.push(m.rows.iter().map(|r| r.offset).collect());
        self.stats_pg_retries
            .push(m.rows.iter().filter(|r| r.retry).map(|r| r.offset).collect());
        Ok(m.rows.len())
    }
}

impl Handler<ApplyStats> for FakeSinks {
    type Result = Result<StatsApplied, SinkError>;
    fn handle(&mut self, m: ApplyStats, _: &mut Context<Self>) -> Self::Result {
        if self.redis_down.load(Ordering::SeqCst) {
            return Err(SinkError::Redis("injected".into()));
        }
        self.stats_redis.push(m.deltas.iter().map(|d| d.offset).collect());
        // Answers like the script: claims each id, and names the retries it skipped.
        let retries: Vec<i64> = m
            .deltas
            .iter()
            .filter(|d| *self.claimed.entry(d.event_id).or_insert(d.offset) != d.offset)
            .map(|d| d.offset)
            .collect();
        Ok(StatsApplied {
            applied: m.deltas.len() - retries.len(),
            checked_from: 0,
            retries,
            refused: Vec::new(),
        })
    }
}

impl Handler<ClaimFirst> for FakeSinks {
    type Result = Result<Vec<i64>, SinkError>;
    fn handle(&mut self, m: ClaimFirst, _: &mut Context<Self>) -> Self::Result {
        Ok(m.items
            .into_iter()
            .filter(|i| *self.claimed.entry(i.event_id).or_insert(i.offset) != i.offset)
            .map(|i| i.offset)
            .collect())
    }
}

impl Handler<ApplyScores> for FakeSinks {
    type Result = Result<ScoresApplied, SinkError>;
    fn handle(&mut self, m: ApplyScores, _: &mut Context<Self>) -> Self::Result {
        self.scores.push(m.deltas.iter().map(|d| d.offset).collect());
        Ok(ScoresApplied {
            applied: m.deltas.len(),
            refused: Vec::new(),
        })
    }
}

impl Handler<ReadTop> for FakeSinks {
    type Result = Result<Vec<BoardTop>, SinkError>;
    fn handle(&mut self, m: ReadTop, _: &mut Context<Self>) -> Self::Result {
        Ok(m.game_ids
            .into_iter()
            .map(|g| BoardTop {
                game_id: g,
                period: Period::Alltime,
                entries: vec![],
            })
            .collect())
    }
}

impl Handler<WriteBoards> for FakeSinks {
    type Result = Result<(), SinkError>;
    fn handle(&mut self, m: WriteBoards, _: &mut Context<Self>) -> Self::Result {
        self.boards.push(m.game_ids.clone());
        Ok(())
    }
}

/// Its board writes never wait: nothing to hurry.
impl Handler<HurryBoards> for FakeSinks {
    type Result = ();
    fn handle(&mut self, _: HurryBoards, _: &mut Context<Self>) {}
}

impl FakeSinks {
    fn writes_so_far(&self) -> usize {
        self.events.all().len()
            + self.stats_pg.all().len()
            + self.stats_redis.all().len()
            + self.scores.all().len()
    }
}

impl Handler<ForgetInPg> for FakeSinks {
    type Result = Result<Vec<String>, SinkError>;
    fn handle(&mut self, m: ForgetInPg, _: &mut Context<Self>) -> Self::Result {
        self.forgets
            .push((format!("pg:{}", m.player_id), self.writes_so_far()));
        Ok(vec!["g-of-the-table".into()])
    }
}

impl Handler<ForgetInRedis> for FakeSinks {
    type Result = Result<ForgetStep, SinkError>;
    fn handle(&mut self, m: ForgetInRedis, _: &mut Context<Self>) -> Self::Result {
        self.forgets
            .push((format!("redis:{}", m.player_id), self.writes_so_far()));
        Ok(ForgetStep {
            games: vec!["g-of-redis".into()],
            next: None,
        })
    }
}

/// Where role actors forget players: the recording sinks.
fn forgetters(sinks: &Addr<FakeSinks>) -> Forgetters {
    Forgetters {
        pg: sinks.clone().recipient(),
        redis: sinks.clone().recipient(),
    }
}

/// The recording sinks as a leaderboard's board sink.
fn board_sink<A>(sinks: &Addr<A>) -> BoardSink
where
    A: Actor<Context = Context<A>> + Handler<WriteBoards> + Handler<HurryBoards>,
{
    BoardSink {
        write: sinks.clone().recipient(),
        hurry: sinks.clone().recipient(),
    }
}

/// Stands in for the partition source: records every `Applied`.
struct Source(Log<i64>);
impl Actor for Source {
    type Context = Context<Self>;
}
impl Handler<Applied> for Source {
    type Result = ();
    fn handle(&mut self, m: Applied, _: &mut Context<Self>) {
        self.0.push(m.next_offset);
    }
}

/// The core of a role actor of `role` with `settings`, reporting to `source`.
fn core(role: Role, settings: RoleSettings, source: Addr<Source>) -> RoleCore {
    RoleCore::new(position(role.service()), settings, source.recipient())
}

/// A leaderboard actor wired to the recording sinks and source.
fn start_leaderboard(sinks: Addr<FakeSinks>, source: Addr<Source>) -> Addr<Leaderboard> {
    let core = core(Role::Leaderboard, settings(Role::Leaderboard), source);
    Leaderboard::new(
        core,
        board_sink(&sinks),
        sinks.clone().recipient(),
        sinks.clone().recipient(),
        forgetters(&sinks),
    )
    .start()
}

/// A logger writing to `sink` and reporting to `source`.
fn start_logger(sink: Recipient<WriteEvents>, source: Addr<Source>) -> Addr<Logger> {
    let forget = forgetters(&FakeSinks::default().start());
    Logger::new(core(Role::Logger, settings(Role::Logger), source), sink, forget).start()
}

/// A stats buffer wired to the recording sinks and source.
fn start_stats(sinks: Addr<FakeSinks>, source: Addr<Source>) -> Addr<StatsBuffer> {
    start_stats_with(sinks, source, settings(Role::Stats))
}

/// A stats buffer with the given settings.
fn start_stats_with(
    sinks: Addr<FakeSinks>,
    source: Addr<Source>,
    settings: RoleSettings,
) -> Addr<StatsBuffer> {
    let core = core(Role::Stats, settings, source);
    StatsBuffer::new(
        core,
        sinks.clone().recipient(),
        sinks.clone().recipient(),
        sinks.clone().recipient(),
        forgetters(&sinks),
    )
    .start()
}

/// Sends events at `offsets` (of type `ty`, in `game`) to a role actor in order, then lets `wait`
/// of paused time pass for its timers and sink round trips.
async fn feed<A>(
    actor: &Addr<A>,
    offsets: std::ops::Range<i64>,
    (ty, game, data): (&str, &str, Value),
    wait: Duration,
) where
    A: Actor<Context = Context<A>> + Handler<Consumed>,
{
    for o in offsets {
        actor.send(event(o, ty, game, data.clone())).await.unwrap();
    }
    settle(wait).await;
}

/// Lets timers due by now fire and their sink round trips finish.
async fn settle(d: Duration) {
    tokio::time::sleep(d).await;
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[actix_web::test]
async fn stats_upserts_player_statistics_at_the_100th_event_not_before() {
    tokio::time::pause();
    let sinks = FakeSinks::default();
    let (pg_log, redis_log) = (sinks.stats_pg.clone(), sinks.stats_redis.clone());
    let sinks = sinks.start();
    let applied = Log::default();
    let source = Source(applied.clone()).start();
    let stats = start_stats(sinks, source);
    feed(
        &stats,
        0..99,
        ("session_start", "g", json!({})),
        Duration::from_secs(1),
    )
    .await;
    assert!(pg_log.all().is_empty(), "99 events and 1 s: no upsert yet");
    assert_eq!(
        redis_log.all().concat(),
        (0..99).collect::<Vec<_>>(),
        "Redis is live meanwhile"
    );
    assert!(
        applied.all().iter().all(|&a| a == 0),
        "nothing is durable until the upsert: {:?}",
        applied.all()
    );

    feed(
        &stats,
        99..100,
        ("session_start", "g", json!({})),
        Duration::from_millis(50),
    )
    .await;
    assert_eq!(pg_log.all(), vec![(0..100).collect::<Vec<_>>()]);
    assert_eq!(applied.all().last(), Some(&100));
}

#[actix_web::test]
async fn a_retried_event_id_reaches_the_upsert_marked_as_a_retry() {
    tokio::time::pause();
    let sinks = FakeSinks::default();
    let (retries, redis_ids) = (sinks.stats_pg_retries.clone(), sinks.stats_redis.clone());
    let sinks = sinks.start();
    let stats = start_stats(sinks, Source(Log::default()).start());
    let ids = [
        "0b9a4c52-3a53-4f7e-9d3c-000000000001",
        "0b9a4c52-3a53-4f7e-9d3c-000000000002",
    ];
    // Offsets 0..4: id 1, an event without a client id, id 2, a retry of id 1, a retry of id 2.
    for (offset, id) in [
        (0, Some(ids[0])),
        (1, None),
        (2, Some(ids[1])),
        (3, Some(ids[0])),
        (4, Some(ids[1])),
    ] {
        let mut body = json!({"event_type": "session_start", "player_id": "p", "game_id": "g"});
        if let Some(id) = id {
            body["event_id"] = json!(id);
        }
        stats.send(consumed(offset, body)).await.unwrap();
    }
    stats.send(FlushAll).await.unwrap();
    settle(Duration::from_millis(50)).await;
    assert_eq!(retries.all().concat(), vec![3, 4]);
    assert_eq!(
        redis_ids.all().concat(),
        vec![0, 1, 2, 3, 4],
        "the live lane's script decides for itself"
    );
}

#[actix_web::test]
async fn the_postgres_lane_waits_for_redis_only_when_retries_are_deduplicated() {
    tokio::time::pause();
    for window in [0, 86_400] {
        let sinks = FakeSinks::default();
        let (pg_log, down) = (sinks.stats_pg.clone(), sinks.redis_down.clone());
        down.store(true, Ordering::SeqCst);
        let mut config = Cli::parse_from(["test"]).consumer;
        config.dedup_window_secs = window;
        let settings = settings_with(&config, Role::Stats);
        let stats = start_stats_with(sinks.start(), Source(Log::default()).start(), settings);
        feed(
            &stats,
            0..100,
            ("session_start", "g", json!({})),
            Duration::from_secs(2),
        )
        .await;
        if window == 0 {
            assert_eq!(
                pg_log.all().concat().len(),
                100,
                "no retry question: Redis down doesn't hold PostgreSQL"
            );
        } else {
            assert!(
                pg_log.all().is_empty(),
                "the batch waits for the live lane's retry answers"
            );
            down.store(false, Ordering::SeqCst);
            settle(Duration::from_secs(10)).await;
            assert_eq!(pg_log.all().concat(), (0..100).collect::<Vec<_>>());
        }
    }
}

#[actix_web::test]
async fn stats_upserts_after_30_seconds_when_fewer_than_100_arrive() {
    tokio::time::pause();
    let sinks = FakeSinks::default();
    let pg_log = sinks.stats_pg.clone();
    let sinks = sinks.start();
    let source = Source(Log::default()).start();
    let stats = start_stats(sinks, source);
    feed(
        &stats,
        0..5,
        ("session_start", "g", json!({})),
        Duration::from_millis(29_900),
    )
    .await;
    assert!(pg_log.all().is_empty(), "not before 30 s");
    settle(Duration::from_millis(200)).await;
    assert_eq!(pg_log.all(), vec![vec![0, 1, 2, 3, 4]]);
}

#[actix_web::test]
async fn leaderboard_writes_the_boards_every_50_scoring_events() {
    tokio::time::pause();
    let sinks = FakeSinks::default();
    let (boards, scores) = (sinks.boards.clone(), sinks.scores.clone());
    let sinks = sinks.start();
    let applied = Log::default();
    let source = Source(applied.clone()).start();
    let lb = start_leaderboard(sinks, source);
    let mut offset = 0;
    for i in 0..49 {
        lb.send(event(
            offset,
            "player_score",
            if i % 2 == 0 { "g1" } else { "g2" },
            json!({"score": 10}),
        ))
        .await
        .unwrap();
        // Non-scoring events in between count for nothing.
        lb.send(event(offset + 1, "session_start", "g3", json!({})))
            .await
            .unwrap();
        offset += 2;
    }
    settle(Duration::from_millis(500)).await;
    assert_eq!(
        scores.all().concat().len(),
        49,
        "scores go to Redis as they arrive"
    );
    assert!(boards.all().is_empty(), "49 scoring events: no top-100 write yet");
    lb.send(event(offset, "player_score", "g1", json!({"score": 10})))
        .await
        .unwrap();
    settle(Duration::from_millis(50)).await;
    assert_eq!(boards.all(), vec![vec!["g1".to_owned(), "g2".to_owned()]]);
    assert_eq!(
        applied.all().last(),
        Some(&(offset + 1)),
        "durable once the boards are written"
    );
}

#[actix_web::test]
async fn back_to_back_batches_of_50_are_written_no_closer_than_the_gap() {
    tokio::time::pause();
    let sinks = FakeSinks::default();
    let boards = sinks.boards.clone();
    let sinks = sinks.start();
    let source = Source(Log::default()).start();
    let lb = start_leaderboard(sinks, source);
    let score = |game| ("player_score", game, json!({"score": 1}));
    feed(&lb, 0..50, score("g1"), Duration::from_millis(20)).await;
    assert_eq!(boards.all().len(), 1, "the first 50 are written at once");
    feed(&lb, 50..100, score("g2"), Duration::from_millis(40)).await;
    assert_eq!(
        boards.all().len(),
        1,
        "the next 50 wait for LEADERBOARD_MIN_FLUSH_GAP_MS"
    );
    let gap = settings(Role::Leaderboard).config.leaderboard_min_flush_gap_ms;
    settle(Duration::from_millis(gap)).await;
    assert_eq!(boards.all(), vec![vec!["g1".to_owned()], vec!["g2".to_owned()]]);
}

#[actix_web::test]
async fn a_quiet_game_gets_its_boards_written_by_the_timer() {
    tokio::time::pause();
    let sinks = FakeSinks::default();
    let boards = sinks.boards.clone();
    let sinks = sinks.start();
    let source = Source(Log::default()).start();
    let lb = start_leaderboard(sinks, source);
    lb.send(event(0, "boss_defeated", "quiet", json!({"score": 5})))
        .await
        .unwrap();
    settle(Duration::from_millis(4_900)).await;
    assert!(boards.all().is_empty());
    settle(Duration::from_millis(200)).await;
    assert_eq!(boards.all(), vec![vec!["quiet".to_owned()]]);
}

#[actix_web::test]
async fn a_failed_write_is_retried_with_the_same_batch_and_only_then_reported() {
    tokio::time::pause();
    let sinks = FakeSinks {
        fail: Arc::new(AtomicUsize::new(2)),
        ..Default::default()
    };
    let attempts = sinks.events.clone();
    let sinks = sinks.start();
    let applied = Log::default();
    let source = Source(applied.clone()).start();
    let logger = start_logger(sinks.recipient(), source);
    feed(
        &logger,
        10..13,
        ("session_start", "g", json!({})),
        Duration::from_millis(20),
    )
    .await;
    assert_eq!(attempts.all(), vec![vec![10, 11, 12]]);
    assert!(applied.all().is_empty(), "a failed write reports nothing");
    settle(Duration::from_secs(2)).await;
    assert_eq!(
        attempts.all(),
        vec![vec![10, 11, 12]; 3],
        "two failures, then success, same batch"
    );
    assert_eq!(applied.all(), vec![13]);
}

/// A sink that dies on its first message, like one that panicked mid-write.
struct CrashOnce {
    crashed: Arc<AtomicBool>,
    starts: Arc<AtomicUsize>,
    received: Log<Vec<i64>>,
}

impl Actor for CrashOnce {
    type Context = Context<Self>;
    fn started(&mut self, _: &mut Context<Self>) {
        self.starts.fetch_add(1, Ordering::SeqCst);
    }
}

impl Supervised for CrashOnce {}

impl Handler<WriteEvents> for CrashOnce {
    type Result = ResponseActFuture<Self, Result<usize, SinkError>>;
    fn handle(&mut self, m: WriteEvents, ctx: &mut Context<Self>) -> Self::Result {
        if !self.crashed.swap(true, Ordering::SeqCst) {
            ctx.stop();
            return Box::pin(actix::fut::wrap_future(futures::future::pending()));
        }
        self.received.push(m.records.iter().map(|r| r.offset).collect());
        Box::pin(actix::fut::ready(Ok(m.records.len())))
    }
}

#[actix_web::test]
async fn a_crashed_sink_is_restarted_and_the_batch_it_held_is_written() {
    tokio::time::pause();
    let (starts, received) = (Arc::new(AtomicUsize::new(0)), Log::default());
    let sink = {
        let (starts, received, crashed) =
            (starts.clone(), received.clone(), Arc::new(AtomicBool::new(false)));
        Supervisor::start(move |_| CrashOnce {
            crashed,
            starts,
            received,
        })
    };
    let applied = Log::default();
    let source = Source(applied.clone()).start();
    let logger = start_logger(sink.recipient(), source);
    feed(
        &logger,
        0..4,
        ("session_start", "g", json!({})),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        starts.load(Ordering::SeqCst),
        2,
        "the supervisor restarted the sink once"
    );
    assert_eq!(
        received.all(),
        vec![vec![0, 1, 2, 3]],
        "the held batch was written after the restart"
    );
    assert_eq!(applied.all(), vec![4]);
}

/// A PostgreSQL sink that can't finish a write of more than `limit` records in time.
struct TooSlowForBigBatches {
    limit: usize,
    attempts: Log<Vec<i64>>,
    /// Offsets written, as the offset guard would: each at most once.
    written: Log<i64>,
}
impl Actor for TooSlowForBigBatches {
    type Context = Context<Self>;
}
impl Handler<WriteEvents> for TooSlowForBigBatches {
    type Result = Result<usize, SinkError>;
    fn handle(&mut self, m: WriteEvents, _: &mut Context<Self>) -> Self::Result {
        let offsets: Vec<i64> = m.records.iter().map(|r| r.offset).collect();
        self.attempts.push(offsets.clone());
        if offsets.len() > self.limit {
            return Err(SinkError::Timeout {
                store: "PostgreSQL",
                after: Duration::from_secs(30),
            });
        }
        for o in offsets {
            self.written.push(o);
        }
        Ok(m.records.len())
    }
}

#[actix_web::test]
async fn a_backlog_is_written_in_bounded_batches_and_a_write_that_times_out_is_halved() {
    tokio::time::pause();
    let (attempts, written) = (Log::default(), Log::default());
    let sink = TooSlowForBigBatches {
        limit: 300,
        attempts: attempts.clone(),
        written: written.clone(),
    }
    .start();
    let applied = Log::default();
    let logger = start_logger(sink.recipient(), Source(applied.clone()).start());
    // 5,000 records arrive at once: a backlog. SINK_MAX_BATCH is 2,000 by default.
    feed(
        &logger,
        0..5_000,
        ("session_start", "g", json!({})),
        Duration::from_secs(60),
    )
    .await;

    let attempts = attempts.all();
    assert!(
        attempts.iter().all(|b| b.len() <= 2_000),
        "no write carries more than the cap"
    );
    assert_eq!(
        attempts[0].len(),
        500,
        "the first batch is what was pending when it was taken"
    );
    let sizes: Vec<usize> = attempts.iter().map(Vec::len).collect();
    for w in sizes.windows(2).filter(|w| w[0] > 300) {
        assert_eq!(
            w[1],
            w[0].div_ceil(2),
            "a timed-out write is retried halved: {sizes:?}"
        );
    }
    let timed_out = sizes.iter().filter(|n| **n > 300).count();
    assert!(
        timed_out * 4 < sizes.len(),
        "most writes finish once the cap has shrunk: {sizes:?}"
    );
    assert_eq!(
        written.all(),
        (0..5_000).collect::<Vec<_>>(),
        "every record once, in order"
    );
    assert_eq!(applied.all().last(), Some(&5_000));
}

#[actix_web::test]
async fn boards_left_over_by_a_capped_write_are_written_at_the_gap_not_the_interval() {
    tokio::time::pause();
    let sinks = FakeSinks::default();
    let boards = sinks.boards.clone();
    let sinks = sinks.start();
    let applied = Log::default();
    let mut config = Cli::parse_from(["test"]).consumer;
    // Board writes of at most 100 items: 300 scoring events need three or more of them.
    config.sink_max_batch = 10;
    // A gap well inside the interval, whatever the default.
    config.leaderboard_min_flush_gap_ms = 100;
    let settings = settings_with(&config, Role::Leaderboard);
    let core = core(Role::Leaderboard, settings, Source(applied.clone()).start());
    let lb = Leaderboard::new(
        core,
        board_sink(&sinks),
        sinks.clone().recipient(),
        sinks.clone().recipient(),
        forgetters(&sinks),
    )
    .start();
    feed(
        &lb,
        0..300,
        ("player_score", "g1", json!({"score": 1})),
        Duration::from_secs(1),
    )
    .await;
    // Well inside the 5 s LEADERBOARD_FLUSH_INTERVAL_MS: what a capped write left waits only
    // for the gap.
    assert!(boards.all().len() >= 3, "{} board writes", boards.all().len());
    assert_eq!(applied.all().last(), Some(&300));
}

/// A forget record at offset 7 for player `p0`: each role removes the player only after every
/// record before it is durable (so nothing of theirs lands after the removal), drops `p0`'s
/// records after it, and reports the forget's offset applied only once the removal is done.
#[actix_web::test]
async fn a_forget_runs_after_the_records_before_it_are_durable_and_later_records_of_the_player_are_dropped() {
    tokio::time::pause();
    let forget = |offset| Consumed {
        record: Record {
            offset,
            payload: Payload::Forget {
                player_id: "p0".into(),
            },
        },
    };
    for role in Role::ALL {
        let sinks = FakeSinks::default();
        let logs = (
            sinks.forgets.clone(),
            sinks.events.clone(),
            sinks.stats_pg.clone(),
            sinks.scores.clone(),
            sinks.boards.clone(),
        );
        let sinks = sinks.start();
        let applied = Log::default();
        let source = Source(applied.clone()).start();
        let handle: Recipient<Consumed> = match role {
            Role::Logger => {
                let core = core(Role::Logger, settings(Role::Logger), source);
                Logger::new(core, sinks.clone().recipient(), forgetters(&sinks))
                    .start()
                    .recipient()
            }
            Role::Stats => start_stats(sinks.clone(), source).recipient(),
            Role::Leaderboard => start_leaderboard(sinks.clone(), source).recipient(),
        };
        // Offsets 0..7 (p0 is offset 0), the forget at 7, then 8..15 (p0 again at 14).
        for o in 0..7 {
            handle
                .send(event(o, "player_score", "g", json!({"score": 1})))
                .await
                .unwrap();
        }
        handle.send(forget(7)).await.unwrap();
        for o in 8..15 {
            handle
                .send(event(o, "player_score", "g", json!({"score": 1})))
                .await
                .unwrap();
        }
        settle(Duration::from_secs(40)).await;
        let (forgets, events, stats_pg, scores, boards) = logs;
        let written: Vec<i64> = match role {
            Role::Logger => events.all().concat(),
            Role::Stats => stats_pg.all().concat(),
            Role::Leaderboard => scores.all().concat(),
        };
        assert!(
            written.contains(&0),
            "{role:?}: p0's record before the forget is applied: {written:?}"
        );
        assert!(
            !written.contains(&14),
            "{role:?}: p0's record after the forget is dropped: {written:?}"
        );
        assert!(
            written.contains(&13),
            "{role:?}: others' records after it are applied: {written:?}"
        );
        let forgets = forgets.all();
        let expected: Vec<&str> = match role {
            Role::Logger => vec!["pg:p0"],
            Role::Stats | Role::Leaderboard => vec!["redis:p0", "pg:p0"],
        };
        assert_eq!(
            forgets.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>(),
            expected,
            "{role:?}"
        );
        // Every write of records 0..7 came before the removal: for stats, the Redis lane and
        // the 30-second upsert of 0..7 (forced early by the forget) both.
        assert!(
            forgets[0].1 > usize::from(role == Role::Stats),
            "{role:?}: {forgets:?}"
        );
        assert_eq!(
            applied.all().last(),
            Some(&15),
            "{role:?}: everything applied in the end"
        );
        if role == Role::Leaderboard {
            let rewritten: Vec<String> = boards.all().concat();
            assert!(
                rewritten.contains(&"g-of-redis".to_owned())
                    && rewritten.contains(&"g-of-the-table".to_owned()),
                "the games that held the player get their top N written again: {rewritten:?}"
            );
        }
    }
}

/// The PostgreSQL sink's board gap, with no end: after the first write, a write waits until an
/// urgent one or a hurry comes. Records the games of every write when it is answered.
#[derive(Default)]
struct GappedBoards {
    written: Log<Vec<String>>,
    in_gap: bool,
    waiting: Vec<(Vec<String>, tokio::sync::oneshot::Sender<()>)>,
}

impl Actor for GappedBoards {
    type Context = Context<Self>;
}

impl GappedBoards {
    fn release(&mut self) {
        for (games, go) in self.waiting.drain(..) {
            self.written.push(games);
            let _ = go.send(());
        }
    }
}

impl Handler<WriteBoards> for GappedBoards {
    type Result = ResponseFuture<Result<(), SinkError>>;
    fn handle(&mut self, m: WriteBoards, _: &mut Context<Self>) -> Self::Result {
        let (go, wait) = tokio::sync::oneshot::channel();
        self.waiting.push((m.game_ids, go));
        if m.urgent || !self.in_gap {
            self.release();
            self.in_gap = true;
        }
        Box::pin(async move { wait.await.map_err(|_| SinkError::Postgres("gone".into())) })
    }
}

impl Handler<HurryBoards> for GappedBoards {
    type Result = ();
    fn handle(&mut self, _: HurryBoards, _: &mut Context<Self>) {
        self.release();
    }
}

/// A leaderboard with `config` behind a sink whose gap never ends, fed 60 scoring events (a
/// write at once) and 60 more (a second write, past this role's own gap, waiting out the
/// sink's): the actor, the writes answered, the offsets reported durable.
async fn leaderboard_with_a_write_in_the_gap(
    config: ConsumerConfig,
) -> (Addr<Leaderboard>, Log<Vec<String>>, Log<i64>) {
    let sinks = FakeSinks::default().start();
    let gapped = GappedBoards::default();
    let written = gapped.written.clone();
    let gapped = gapped.start();
    let applied = Log::default();
    let settings = settings_with(&config, Role::Leaderboard);
    let core = core(Role::Leaderboard, settings, Source(applied.clone()).start());
    let lb = Leaderboard::new(
        core,
        board_sink(&gapped),
        sinks.clone().recipient(),
        sinks.clone().recipient(),
        forgetters(&sinks),
    )
    .start();
    feed(&lb, 0..60, score_g1(), Duration::from_secs(1)).await;
    feed(&lb, 60..120, score_g1(), Duration::from_secs(10)).await;
    assert_eq!(written.all().len(), 1, "the second write waits in the sink");
    assert_eq!(applied.all().last(), Some(&60));
    (lb, written, applied)
}

fn score_g1() -> (&'static str, &'static str, Value) {
    ("player_score", "g1", json!({"score": 1}))
}

#[actix_web::test]
async fn a_drain_does_not_wait_out_the_board_gap_behind_a_write_already_sent() {
    tokio::time::pause();
    let (lb, written, applied) =
        leaderboard_with_a_write_in_the_gap(Cli::parse_from(["test"]).consumer).await;
    lb.send(FlushAll).await.unwrap();
    settle(Duration::from_secs(1)).await;
    assert_eq!(written.all().len(), 2, "the drain hurried the write it waits on");
    assert_eq!(applied.all().last(), Some(&120), "and everything seen is durable");
}

#[actix_web::test]
async fn half_of_the_uncommitted_bound_waiting_on_a_board_write_hurries_it() {
    tokio::time::pause();
    let mut config = Cli::parse_from(["test"]).consumer;
    // Half of it, 100, is more than a board write's 50 events and less than three of them.
    config.partition_max_uncommitted = 200;
    let (lb, written, applied) = leaderboard_with_a_write_in_the_gap(config).await;
    // 120 not yet durable: the source would pause the partition at 200.
    feed(&lb, 120..180, score_g1(), Duration::from_secs(1)).await;
    assert!(written.all().len() >= 2, "the write held back was hurried");
    assert!(
        applied.all().last().is_some_and(|a| *a >= 120),
        "{:?}",
        applied.all().last()
    );
}
