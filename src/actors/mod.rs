//! The consumer tier as an actix actor tree.
//!
//! ```text
//!   poll loop (one StreamConsumer per role, consumer group per role, on the role's own arbiter)
//!     └─ PartitionSource  (source.rs; one per assigned partition: opens the partition's log,
//!        │                 parses, stores offsets, pauses)
//!        └─ Logger | StatsBuffer | Leaderboard   (batching state lives here, in lanes: lane.rs)
//!             ├─ PgSink     (sinks/postgres.rs; supervised; SQL in db/, diesel-async bb8 pool)
//!             └─ RedisSink  (sinks/redis.rs; supervised; DB 0 stats, DB 1 leaderboards)
//! ```
//!
//! Every message between them is in [`messages`]. A role actor is a [`lane::RoleCore`] (its
//! partition, settings and watermarks) plus one [`lane::Lane`] per sink it writes; every lane is
//! flushed by [`lane::flush_lane`], which a lane's [`lane::LaneOps`] tells where the lane lives,
//! how a batch is written and what follows.
//!
//! Exactly-once effects from at-least-once delivery: every event, stats and score write carries
//! its records' offsets and, in the same PostgreSQL transaction or Redis Lua script, skips those
//! below the partition's stored offset and moves that offset forward (the top-N write is a
//! snapshot of Redis and needs no guard). A role actor reports a record as
//! applied only when every effect of it is durable; only then is its offset stored for commit.
//! A crash at any moment therefore re-delivers records whose effects are either all there
//! (skipped) or not there at all (applied once).
//!
//! Mailboxes: sources and role actors are fed with `do_send`, which bypasses actix's mailbox
//! bound, so the bounds that hold are PARTITION_MAX_IN_FLIGHT (records a role holds in memory)
//! and PARTITION_MAX_UNCOMMITTED (records not yet durable): past either the partition is paused
//! until the sinks catch up. librdkafka's own prefetch is capped by
//! `queued.max.messages.kbytes`. Sink mailboxes are bounded at 256.

pub mod forget;
pub mod lane;
pub mod leaderboard;
pub mod logger;
pub mod messages;
pub mod sinks;
pub mod source;
pub mod stats_buffer;

use crate::config::{Config, ConsumerConfig};
use crate::metrics::Metrics;
use actix::prelude::*;
use chrono::{DateTime, Utc};
use messages::{Applied, Consumed, FlushAll, GetProgress, LiveDb, LogState, Position};
use rdkafka::consumer::{CommitMode, Consumer};
use sinks::postgres::PgSink;
use sinks::redis::RedisSink;
use sinks::SinkError;
use source::{PartitionSource, RoleConsumer, SourceContext};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The three consumer roles of the seed, each its own consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Role {
    Logger,
    Stats,
    Leaderboard,
}

impl Role {
    /// All roles, as `dev` runs them.
    pub const ALL: [Role; 3] = [Role::Logger, Role::Stats, Role::Leaderboard];

    /// The consumer group (seed section 6).
    pub fn group_id(self) -> &'static str {
        match self {
            Role::Logger => "event-logger-group",
            Role::Stats => "stats-aggregator-group",
            Role::Leaderboard => "leaderboard-manager-group",
        }
    }

    /// The service name recorded in `dlq.consumer_service` and the offset tables.
    pub fn service(self) -> &'static str {
        match self {
            Role::Logger => "event-logger",
            Role::Stats => "stats-aggregator",
            Role::Leaderboard => "leaderboard-manager",
        }
    }

    /// The stores this role's lanes write to (the `sink` label of its metrics).
    pub fn sinks(self) -> &'static [&'static str] {
        match self {
            Role::Logger => &["postgres"],
            Role::Stats | Role::Leaderboard => &["redis", "postgres"],
        }
    }
}

/// What every role actor needs besides its sinks.
#[derive(Clone)]
pub struct RoleSettings {
    pub config: Arc<ConsumerConfig>,
    pub metrics: Metrics,
    pub retry_max: Duration,
    pub scoring: Arc<HashSet<String>>,
    pub role: Role,
    /// The forgotten player ids, whose records this role drops.
    pub forgotten: forget::Forgotten,
}

impl RoleSettings {
    /// Settings from the consumer configuration.
    pub fn new(config: &ConsumerConfig, metrics: Metrics, role: Role) -> Self {
        RoleSettings {
            retry_max: Duration::from_millis(config.sink_retry_max_ms),
            scoring: Arc::new(
                config
                    .scoring_event_types
                    .iter()
                    .map(|s| s.trim().to_owned())
                    .collect(),
            ),
            config: Arc::new(config.clone()),
            metrics,
            role,
            forgotten: forget::Forgotten::default(),
        }
    }

    /// True (and counted) when a record must be dropped because it is a forgotten player's.
    pub fn drops(&self, payload: &messages::Payload) -> bool {
        self.count_dropped(self.forgotten.drops(payload))
    }

    /// [`Self::drops`] for a parsed event.
    pub fn drops_event(&self, event: &crate::domain::GameEvent) -> bool {
        self.count_dropped(self.forgotten.contains(event.player_id.as_str()))
    }

    /// Counts and logs a record a store refused for its content (it is dead-lettered).
    pub fn rejected(&self, sink: &str, offset: i64) {
        let service = self.role.service();
        self.metrics
            .consumer_rejected
            .with_label_values(&[service, sink])
            .inc();
        tracing::error!(service, sink, offset, "a store refused the record: dead-lettered");
    }

    fn count_dropped(&self, dropped: bool) -> bool {
        if dropped {
            self.metrics
                .consumer_forgotten
                .with_label_values(&[self.role.service()])
                .inc();
        }
        dropped
    }

    /// The micro-batch window for live effects.
    pub fn live_flush(&self) -> Duration {
        Duration::from_millis(self.config.live_flush_ms)
    }

    /// Records a finished sink write: its latency, size, and records skipped as already applied.
    pub fn observe_flush(&self, sink: &str, started: Instant, size: usize, applied: usize) {
        let labels = [self.role.service(), sink];
        let m = &self.metrics;
        m.consumer_flush_latency
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
        m.consumer_flush_size
            .with_label_values(&labels)
            .observe(size as f64);
        m.consumer_applied
            .with_label_values(&labels)
            .inc_by(applied as u64);
        m.consumer_duplicates
            .with_label_values(&labels)
            .inc_by(size.saturating_sub(applied) as u64);
    }

    /// Records the ingest-to-durable latency of events just written to `sink`.
    pub fn observe_latency(&self, sink: &str, ingested: impl Iterator<Item = DateTime<Utc>>) {
        let now = Utc::now();
        let h = self
            .metrics
            .consumer_e2e_latency
            .with_label_values(&[self.role.service(), sink]);
        for t in ingested {
            h.observe((now - t).num_microseconds().unwrap_or(0) as f64 / 1e6);
        }
    }
}

/// The recipients a source needs to talk to its role actor.
pub struct RoleHandle {
    pub consumed: Recipient<Consumed>,
    pub flush: Recipient<FlushAll>,
    pub progress: Recipient<GetProgress>,
}

impl RoleHandle {
    fn of<A>(addr: Addr<A>) -> Self
    where
        A: Actor<Context = Context<A>> + Handler<Consumed> + Handler<FlushAll> + Handler<GetProgress>,
    {
        RoleHandle {
            consumed: addr.clone().recipient(),
            flush: addr.clone().recipient(),
            progress: addr.recipient(),
        }
    }
}

/// Builds the role actor of a newly assigned partition.
pub struct RoleFactory {
    pub role: Role,
    pub settings: RoleSettings,
    pub pg: Addr<PgSink>,
    pub redis: Addr<RedisSink>,
}

impl RoleFactory {
    /// Starts the role actor for `position`.
    pub fn spawn(&self, position: Position, source: Recipient<Applied>) -> RoleHandle {
        let core = lane::RoleCore::new(position, self.settings.clone(), source);
        let (pg, redis) = (self.pg.clone(), self.redis.clone());
        let forget = forget::Forgetters {
            pg: pg.clone().recipient(),
            redis: redis.clone().recipient(),
        };
        match self.role {
            Role::Logger => RoleHandle::of(logger::Logger::new(core, pg.recipient(), forget).start()),
            Role::Stats => RoleHandle::of(
                stats_buffer::StatsBuffer::new(
                    core,
                    pg.recipient(),
                    redis.clone().recipient(),
                    redis.recipient(),
                    forget,
                )
                .start(),
            ),
            Role::Leaderboard => RoleHandle::of(
                leaderboard::Leaderboard::new(
                    core,
                    leaderboard::BoardSink {
                        write: pg.clone().recipient(),
                        hurry: pg.recipient(),
                    },
                    redis.clone().recipient(),
                    redis.recipient(),
                    forget,
                )
                .start(),
            ),
        }
    }

    /// Removes a forgotten player from this role's stores, as its role actor would on reading
    /// the forget record (the leaderboard's then rewrites the top N of the games that held them).
    async fn finish_forget(&self, player: String) -> Result<(), SinkError> {
        let forget = forget::Forgetters {
            pg: self.pg.clone().recipient(),
            redis: self.redis.clone().recipient(),
        };
        tracing::info!(role = self.role.service(), player_id = %player, "finishing a forget cut short");
        match self.role {
            Role::Logger => {
                self.pg
                    .send(messages::ForgetInPg {
                        player_id: player,
                        role: self.role,
                    })
                    .await??;
            }
            Role::Stats => {
                forget.remove_from_both(player, LiveDb::Stats, self.role).await?;
            }
            Role::Leaderboard => {
                let games = forget.remove_from_both(player, LiveDb::Boards, self.role).await?;
                if !games.is_empty() {
                    self.pg
                        .send(messages::WriteBoards {
                            // A snapshot of Redis: the position only labels dead letters, and
                            // this write carries none.
                            position: Position {
                                service: self.role.service(),
                                topic: "".into(),
                                log: "".into(),
                                partition: -1,
                            },
                            game_ids: games,
                            n: self.settings.config.leaderboard_top_n,
                            reader: self.redis.clone().recipient(),
                            dlq: Vec::new(),
                            urgent: true,
                        })
                        .await??;
                }
            }
        }
        Ok(())
    }

    /// Gets every store holding this role's offsets ready for `position`'s log, and answers what
    /// they hold of it: `Behind` if any store claims more than the log has, else the lowest
    /// offset every store has applied.
    pub async fn open_log(&self, position: &Position, log_end: i64) -> Result<LogState, SinkError> {
        let pg = || {
            self.pg.send(messages::OpenLogPg {
                position: position.clone(),
                log_end,
            })
        };
        let redis = |db| {
            self.redis.send(messages::OpenLogRedis {
                position: position.clone(),
                log_end,
                db,
            })
        };
        // Before the partition's first record: a forgotten player's records read again (a
        // restart, a rewind) must be dropped even before their forget record comes round.
        let forgotten = self
            .pg
            .send(messages::LoadForgotten { role: self.role })
            .await??;
        self.settings.forgotten.extend(forgotten.all);
        // A forget cut short (a crash, a revoke) whose record the stores have already passed
        // would never be read again: finish it now. Removing twice is harmless.
        for player in forgotten.pending {
            self.finish_forget(player).await?;
        }
        let states = match self.role {
            Role::Logger => vec![pg().await??],
            Role::Stats => vec![pg().await??, redis(LiveDb::Stats).await??],
            Role::Leaderboard => vec![redis(LiveDb::Boards).await??],
        };
        if let Some(behind) = states.iter().find(|s| matches!(s, LogState::Behind { .. })) {
            return Ok(*behind);
        }
        let applied = states.iter().map(|s| match s {
            LogState::Open { next_offset } => *next_offset,
            LogState::Behind { stored, .. } => *stored,
        });
        Ok(LogState::Open {
            next_offset: applied.min().unwrap_or(0),
        })
    }
}

/// The shared sinks of a process, started under supervision.
#[derive(Clone)]
pub struct Sinks {
    pub pg: Addr<PgSink>,
    pub redis: Addr<RedisSink>,
}

impl Sinks {
    /// Starts both sinks on `arbiter`. Pools connect lazily.
    pub fn start_in(config: &Config, arbiter: &ArbiterHandle) -> Result<Self, redis::RedisError> {
        let pg_pool = crate::db::pg_pool(&config.database);
        let stats = crate::db::redis_pool(&config.redis, 0)?;
        let boards = crate::db::redis_pool(&config.redis, 1)?;
        let prefix = config.redis.redis_key_prefix.clone();
        let wait = (
            config.redis.redis_wait_replicas,
            config.redis.redis_wait_timeout_ms,
        );
        let (window, buckets) = (config.consumer.dedup_window_secs, config.consumer.dedup_buckets);
        let gap = Duration::from_millis(config.consumer.leaderboard_min_flush_gap_ms);
        let pg = Supervisor::start_in_arbiter(arbiter, move |_| PgSink::new(pg_pool).with_board_gap(gap));
        let redis = Supervisor::start_in_arbiter(arbiter, move |_| {
            RedisSink::new(stats, boards, &prefix, window)
                .with_claim_buckets(buckets)
                .with_wait_for_replicas(wait.0, wait.1)
        });
        Ok(Sinks { pg, redis })
    }
}

/// Errors starting a consumer.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("Kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("Redis pool: {0}")]
    Redis(#[from] redis::RedisError),
}

/// One role's running consumer: the poll loop, its partition actors and its sinks, all on an
/// arbiter (thread) of the role's own, so the roles of a `dev` process use every core.
pub struct RoleConsumerHandle {
    role: Role,
    consumer: Arc<RoleConsumer>,
    sources: Arc<Mutex<HashMap<i32, Addr<PartitionSource>>>>,
    stop: tokio::sync::watch::Sender<bool>,
    poll_done: Option<tokio::sync::oneshot::Receiver<()>>,
    arbiter: Arbiter,
}

/// The consumers' librdkafka tuning; `KAFKA_EXTRA_CONFIG` overrides any of it.
const CONSUMER_TUNING: &[(&str, &str)] = &[
    // librdkafka prefetches up to ~1 GB per partition by default; a slow sink must not turn
    // into memory growth.
    ("queued.max.messages.kbytes", "16384"),
    // With more queued than that, librdkafka checks again after this long (1 s by default): a
    // partition resumed after backpressure sat idle for it, a backlog drained in bursts. A
    // check is a few comparisons.
    ("fetch.queue.backoff.ms", "50"),
    // A broker holds a fetch that finds no new records this long (500 ms by default), and a
    // consumer has one fetch in flight per broker: a partition resumed after backpressure
    // waited behind another partition's empty long poll, idle for up to that long each time
    // (a fifth of a backlog drain). New records still end a poll at once; the cost is at most
    // ten empty fetches a second per broker when the topic is quiet.
    ("fetch.wait.max.ms", "100"),
];

impl RoleConsumerHandle {
    /// Subscribes to the topic in the role's group and starts polling on an arbiter of its own.
    pub fn start(config: &Config, role: Role, metrics: Metrics) -> Result<Self, ConsumerError> {
        // Counters exported from 0, so the first failure or dead letter shows as an increase.
        metrics.consumer_dlq.with_label_values(&[role.service()]);
        for sink in role.sinks() {
            metrics
                .consumer_write_failures
                .with_label_values(&[role.service(), sink]);
            metrics
                .consumer_rejected
                .with_label_values(&[role.service(), sink]);
        }
        let mut cc = crate::kafka::tuned_client_config(&config.kafka, CONSUMER_TUNING)?;
        let group = format!("{}{}", config.consumer.consumer_group_prefix, role.group_id());
        cc.set("group.id", &group)
            .set("client.id", format!("gamemetrics-{}", role.service()))
            .set("auto.offset.reset", "earliest")
            // Offsets are stored by hand once effects are durable, then auto-committed.
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000");
        // Statistics feed the consumer-lag gauge.
        cc.set("statistics.interval.ms", "5000");
        let consumer: RoleConsumer = cc.create_with_context(SourceContext::new(
            role.service(),
            metrics.clone(),
            &config.consumer,
        ))?;
        consumer.subscribe(&[config.kafka.kafka_topic.as_str()])?;
        let consumer = Arc::new(consumer);
        let arbiter = Arbiter::new();
        let sinks = Sinks::start_in(config, &arbiter.handle())?;
        let factory = Arc::new(RoleFactory {
            role,
            settings: RoleSettings::new(&config.consumer, metrics, role),
            pg: sinks.pg.clone(),
            redis: sinks.redis.clone(),
        });
        let sources = Arc::new(Mutex::new(HashMap::new()));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (done, poll_done) = tokio::sync::oneshot::channel();
        let poll = source::poll_loop(consumer.clone(), factory, sources.clone(), stop_rx);
        arbiter.spawn(async move {
            poll.await;
            let _ = done.send(());
        });
        tracing::info!(role = role.service(), group = %group, topic = %config.kafka.kafka_topic, "consumer started");
        Ok(RoleConsumerHandle {
            role,
            consumer,
            sources,
            stop,
            poll_done: Some(poll_done),
            arbiter,
        })
    }

    /// The partitions this consumer currently has actors for.
    pub fn partitions(&self) -> Vec<i32> {
        let mut p: Vec<i32> = self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        p.sort_unstable();
        p
    }

    /// Every partition actor's progress, by partition.
    pub async fn progress(&self) -> Vec<(i32, messages::Progress)> {
        let actors: Vec<(i32, Addr<PartitionSource>)> = self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        let mut out = Vec::new();
        for (p, a) in actors {
            if let Ok(progress) = a.send(GetProgress).await {
                out.push((p, progress));
            }
        }
        out
    }

    /// The partitions the group currently assigns to this consumer.
    pub fn assignment(&self) -> Vec<i32> {
        let mut p: Vec<i32> = match self.consumer.assignment() {
            Ok(tpl) => tpl.elements().iter().map(|e| e.partition()).collect(),
            Err(_) => Vec::new(),
        };
        p.sort_unstable();
        p
    }

    fn addrs(&self) -> Vec<Addr<PartitionSource>> {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Asks every buffer to write what it holds as soon as its sink is free, without waiting.
    pub fn flush(&self) {
        for a in self.addrs() {
            a.do_send(FlushAll);
        }
    }

    /// Flushes every buffer now and waits until all records read so far are durable.
    /// Returns false if `budget` ran out first.
    pub async fn flush_and_wait(&self, budget: Duration) -> bool {
        let deadline = Instant::now() + budget;
        self.flush();
        loop {
            let mut settled = true;
            for a in self.addrs() {
                settled &= a.send(GetProgress).await.map(|p| p.settled()).unwrap_or(true);
            }
            if settled {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Graceful stop: stop reading, flush and wait (within `budget`), commit offsets, leave the group.
    pub async fn shutdown(mut self, budget: Duration) {
        let _ = self.stop.send(true);
        if let Some(done) = self.poll_done.take() {
            let _ = done.await;
        }
        let drained = self.flush_and_wait(budget).await;
        for a in self.addrs() {
            // Let the last Applied messages reach the sources before committing.
            let _ = a.send(GetProgress).await;
        }
        let consumer = self.consumer.clone();
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync)).await;
        tracing::info!(role = self.role.service(), drained, committed = ?committed.map(|r| r.is_ok()), "consumer stopped");
        for a in self.addrs() {
            a.do_send(source::StopPartition);
        }
        // Leave the group now rather than when the last handle is dropped, which may be after
        // the process has exited: the partitions move to the other members at once instead of
        // after the session timeout.
        self.consumer.unsubscribe();
        self.arbiter.stop();
    }
}
