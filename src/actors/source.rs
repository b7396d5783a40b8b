//! The Kafka source: one consumer per role process, polled by one loop, and one
//! `PartitionSource` actor per assigned partition that first finds which log the partition is
//! (the topic's id) and opens it in the role's stores, then parses records, hands them to the
//! role actor, stores offsets once they are durable, and pauses the partition when too much is
//! in flight.
//!
//! Why one poll loop feeding per-partition actors rather than `split_partition_queue`: split
//! queues stall or drop partitions across rebalances (rust-rdkafka #535, #738, PR #840), and
//! rebalance callbacks only run while the main queue is polled anyway. Per-partition order is
//! kept because one loop reads a partition's records in order and actix mailboxes are FIFO.

use super::messages::*;
use super::{RoleFactory, RoleHandle};
use crate::domain::GameEvent;
use crate::kafka::{describe_topic_id, KafkaContext};
use crate::metrics::Metrics;
use actix::prelude::*;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Remembers revoked partitions so the poll loop can stop their actors, and turns librdkafka's
/// statistics into the consumer-lag gauge.
pub struct SourceContext {
    revoked: Mutex<Vec<i32>>,
    /// Logs, and access problems (credentials, ACLs) for `/readyz`.
    kafka: KafkaContext,
    service: &'static str,
    metrics: Metrics,
    ready: Mutex<Readiness>,
}

/// Lag at or under this is never "not keeping up", however it moves.
const LAG_FLOOR: i64 = 10_000;

/// What a consumer's readiness follows from librdkafka's statistics (every 5 s): how long it
/// has been out of its group, and its recent total lag.
struct Readiness {
    group_grace: std::time::Duration,
    lag_window: std::time::Duration,
    out_of_group_since: Option<std::time::Instant>,
    lag: std::collections::VecDeque<(std::time::Instant, i64)>,
}

impl Readiness {
    /// The group problem, if the consumer has been out of a settled membership too long.
    fn group(
        &mut self,
        now: std::time::Instant,
        cgrp: Option<&rdkafka::statistics::ConsumerGroup>,
    ) -> Option<String> {
        match cgrp {
            Some(g) if g.state == "up" && g.join_state == "steady" => {
                self.out_of_group_since = None;
                None
            }
            other => {
                let since = *self.out_of_group_since.get_or_insert(now);
                let (state, join) =
                    other.map_or(("none", "none"), |g| (g.state.as_str(), g.join_state.as_str()));
                (now.duration_since(since) >= self.group_grace).then(|| {
                    format!(
                        "not a settled member of its consumer group for {} s (coordinator {state}, join {join})",
                        now.duration_since(since).as_secs()
                    )
                })
            }
        }
    }

    /// The lag problem, if the lag has grown without falling back for the whole window.
    fn lag(&mut self, now: std::time::Instant, total: i64) -> Option<String> {
        self.lag.push_back((now, total));
        // Keep one sample at or beyond the window's start: the baseline.
        while self.lag.len() > 2
            && self
                .lag
                .get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= self.lag_window)
        {
            self.lag.pop_front();
        }
        let (first_at, first) = *self.lag.front()?;
        let spans = now.duration_since(first_at) >= self.lag_window;
        let never_fell = self
            .lag
            .iter()
            .zip(self.lag.iter().skip(1))
            .all(|((_, a), (_, b))| b >= a);
        (spans && never_fell && total > first && total > LAG_FLOOR).then(|| {
            format!(
                "lag grew from {first} to {total} records over {} s without falling back: not keeping up",
                now.duration_since(first_at).as_secs()
            )
        })
    }
}

impl SourceContext {
    /// A context for one role's consumer, judging its readiness by `config`.
    pub fn new(service: &'static str, metrics: Metrics, config: &crate::config::ConsumerConfig) -> Self {
        SourceContext {
            revoked: Mutex::new(Vec::new()),
            kafka: KafkaContext::reporting(metrics.health.clone()),
            service,
            metrics,
            ready: Mutex::new(Readiness {
                group_grace: std::time::Duration::from_secs(config.ready_group_grace_secs),
                lag_window: std::time::Duration::from_secs(config.ready_lag_growth_secs),
                out_of_group_since: None,
                lag: std::collections::VecDeque::new(),
            }),
        }
    }

    fn report(&self, what: &str, problem: Option<String>) {
        let component = format!("{} {what}", self.service);
        match problem {
            Some(p) => {
                if self.metrics.health.set(&component, p.clone()) {
                    tracing::warn!(component, problem = %p, "consumer not ready");
                }
            }
            None => {
                if self.metrics.health.clear(&component) {
                    tracing::info!(component, "consumer ready again");
                }
            }
        }
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: rdkafka::Statistics) {
        let mut total = 0;
        for topic in stats.topics.values() {
            for (id, p) in &topic.partitions {
                // -1 is the internal UA partition and partitions not consumed by us.
                if *id >= 0 && p.consumer_lag >= 0 {
                    let label = [self.service, &id.to_string()];
                    self.metrics
                        .consumer_lag
                        .with_label_values(&label)
                        .set(p.consumer_lag);
                    total += p.consumer_lag;
                }
            }
        }
        let now = std::time::Instant::now();
        // A settled member got past the login and the group's ACL; a topic ACL shows in fetches.
        let settled = stats
            .cgrp
            .as_ref()
            .is_some_and(|g| g.state == "up" && g.join_state == "steady");
        if settled && self.kafka.access_code() != Some(RDKafkaErrorCode::TopicAuthorizationFailed) {
            self.kafka.access_ok();
        }
        let (group, lag) = {
            let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
            (ready.group(now, stats.cgrp.as_ref()), ready.lag(now, total))
        };
        self.report("group", group);
        self.report("lag", lag);
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.kafka.log(level, fac, message)
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.kafka.error(error, reason)
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // librdkafka keeps a partition paused across revoke and re-assign (librdkafka
            // #1849); a paused partition delivers nothing, so no new source would ever be
            // created to resume it. Everything we give up leaves unpaused.
            if let Err(e) = consumer.resume(tpl) {
                tracing::warn!(error = %e, "resuming revoked partitions failed");
            }
            for e in tpl.elements() {
                let label = [self.service, &e.partition().to_string()];
                self.metrics.consumer_paused.with_label_values(&label).set(0);
            }
            let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
            revoked.extend(tpl.elements().iter().map(|e| e.partition()));
        }
    }
}

/// The consumer type every role uses.
pub type RoleConsumer = StreamConsumer<SourceContext>;

/// A raw record from the poll loop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Incoming {
    pub offset: i64,
    pub payload: Option<Vec<u8>>,
    /// A replayed dead letter meant for other consumers ([`crate::kafka::REPLAY_FOR_HEADER`]).
    pub not_for_us: bool,
    /// A control record ([`crate::kafka::CONTROL_HEADER`]): forget a player.
    pub forget: bool,
}

/// Stop this partition's actors (it was revoked).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopPartition;

/// The source actor of one partition.
pub struct PartitionSource {
    /// Service, topic and partition; `log` is the partition's log once it is open.
    position: Position,
    consumer: Arc<RoleConsumer>,
    factory: Arc<RoleFactory>,
    /// The role actor of the open log; `None` while the log is being opened.
    role: Option<RoleHandle>,
    /// Records that arrived while the log was being opened, dispatched in order once it is.
    stash: Vec<Incoming>,
    /// After the topic's id changed without its offsets going back: the offset the new log's
    /// first record must not be above (what the stores applied of it, or its start), since
    /// librdkafka may have kept the old log's position and skipped the records below it.
    expect_from: Option<i64>,
    /// One past the last record handed to the role actor.
    dispatched_next: i64,
    /// Every record below this is durable; also what was last stored for commit.
    applied_next: i64,
    /// Every record below this has left the role's lanes that hold records' contents.
    released_next: i64,
    paused: bool,
    metrics: Metrics,
}

/// How long one topic id or watermark lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two attempts to open a partition's log.
const MAX_OPEN_WAIT: Duration = Duration::from_secs(30);
/// How long opening a partition's log may take before the partition is paused meanwhile.
const HOLD_AFTER: Duration = Duration::from_millis(250);
/// Why a partition's log is being opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// The partition was assigned to this consumer.
    Assigned,
    /// Its offsets went back under a running role actor.
    Rewound,
    /// The topic's id changed while its offsets did not go back.
    Replaced,
}

/// How often an open partition checks that its topic is still the same log.
const LOG_CHECK_INTERVAL: Duration = Duration::from_secs(10);

impl PartitionSource {
    /// A source for `position` (its `log` is found when started) that builds its role actor with
    /// `factory` once the log is open.
    pub fn new(position: Position, consumer: Arc<RoleConsumer>, factory: Arc<RoleFactory>) -> Self {
        let metrics = factory.settings.metrics.clone();
        PartitionSource {
            position,
            consumer,
            factory,
            role: None,
            stash: Vec::new(),
            expect_from: None,
            dispatched_next: -1,
            applied_next: -1,
            released_next: -1,
            paused: false,
            metrics,
        }
    }

    /// Records handed to the role actor and still held in its memory (what
    /// PARTITION_MAX_IN_FLIGHT bounds).
    fn in_flight(&self) -> i64 {
        self.since(self.released_next.max(self.applied_next))
    }

    /// Records handed to the role actor and not yet durable (what PARTITION_MAX_UNCOMMITTED
    /// bounds).
    fn uncommitted(&self) -> i64 {
        self.since(self.applied_next)
    }

    fn since(&self, next: i64) -> i64 {
        if self.dispatched_next < 0 {
            0
        } else {
            self.dispatched_next - next.max(0)
        }
    }

    fn report_in_flight(&self) {
        let label = [self.position.service, &self.position.partition.to_string()];
        self.metrics
            .consumer_in_flight
            .with_label_values(&label)
            .set(self.in_flight());
        self.metrics
            .consumer_uncommitted
            .with_label_values(&label)
            .set(self.uncommitted());
    }

    /// (PARTITION_MAX_IN_FLIGHT, PARTITION_MAX_UNCOMMITTED), the second at least the first.
    fn bounds(&self) -> (i64, i64) {
        let config = &self.factory.settings.config;
        let held = i64::try_from(config.partition_max_in_flight).unwrap_or(i64::MAX);
        let uncommitted = i64::try_from(config.partition_max_uncommitted).unwrap_or(i64::MAX);
        (held, uncommitted.max(held))
    }

    /// Whether the partition holds more than its bounds allow.
    fn over_bounds(&self) -> bool {
        let (held, uncommitted) = self.bounds();
        self.in_flight() > held || self.uncommitted() > uncommitted
    }

    /// Whether a paused partition may read on: it holds half of PARTITION_MAX_IN_FLIGHT or
    /// less, and as much less than PARTITION_MAX_UNCOMMITTED (which moves in the jumps of the
    /// writes that make records durable, so a smaller margin does).
    fn relieved(&self) -> bool {
        let (held, uncommitted) = self.bounds();
        self.in_flight() <= held / 2 && self.uncommitted() <= uncommitted - held / 2
    }

    /// A resume alone doesn't wake librdkafka's thread for the partition's leader: with every
    /// partition it fetches paused, that thread sleeps until its next timer (up to a second,
    /// `rd_kafka_max_block_ms`), so a backlog was read in bursts of PARTITION_MAX_IN_FLIGHT per
    /// second. A request to the leader wakes it; the watermark query is the cheapest one, and
    /// its answer is not needed.
    fn wake_fetcher(&self) {
        let (consumer, topic, partition) = (
            self.consumer.clone(),
            self.position.topic.clone(),
            self.position.partition,
        );
        tokio::task::spawn_blocking(move || {
            if let Err(e) = consumer.fetch_watermarks(&topic, partition, WAKE_TIMEOUT) {
                tracing::debug!(error = %e, partition, "waking the fetcher after a resume");
            }
        });
    }

    fn set_paused(&mut self, pause: bool, why: &'static str) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.position.topic, self.position.partition);
        let result = if pause {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        match result {
            Ok(()) => {
                if !pause {
                    self.wake_fetcher();
                }
                self.paused = pause;
                let label = [self.position.service, &self.position.partition.to_string()];
                self.metrics
                    .consumer_paused
                    .with_label_values(&label)
                    .set(i64::from(pause));
                tracing::info!(
                    service = self.position.service,
                    partition = self.position.partition,
                    paused = pause,
                    in_flight = self.in_flight(),
                    uncommitted = self.uncommitted(),
                    why,
                    "partition paused or resumed"
                );
            }
            Err(e) => tracing::warn!(error = %e, "pause/resume failed"),
        }
    }

    /// Finds the partition's current log and gets the role's stores ready for it (holding the
    /// partition if that takes long); the role actor starts once it is open. Never gives up:
    /// where the log can't be told, the partition stays held and says so (ERROR, `/readyz`, a
    /// metric).
    fn open(&mut self, ctx: &mut Context<Self>, why: Opening) {
        let left = self.position.log.clone();
        self.role = None;
        self.dispatched_next = -1;
        self.applied_next = -1;
        self.released_next = -1;
        // Opening normally takes a few round trips; pausing at once would make librdkafka drop
        // and re-fetch what it already has (a long-poll later). Only an open that takes longer
        // holds the partition, so records held meanwhile can't grow without bound.
        let hold = ctx.run_later(HOLD_AFTER, |act, _| {
            if act.role.is_none() && !act.paused {
                act.set_paused(true, "opening the partition's log takes long");
            }
        });
        let opening = open_log(
            self.consumer.clone(),
            self.factory.clone(),
            self.position.clone(),
            self.metrics.clone(),
        );
        ctx.spawn(
            opening
                .into_actor(self)
                .map(move |(position, resume_from), act, ctx| {
                    ctx.cancel_future(hold);
                    act.position = position;
                    if why == Opening::Rewound && act.position.log == left {
                        // The same log went back: truncated (an unclean leader election). The role actor
                        // it replaces may still land writes of records past the new end, whose offsets
                        // the log will now reuse for other records: those would be skipped.
                        let problem = format!(
                    "partition {} of log {} went back under the consumer (truncated, e.g. by an unclean \
                     leader election): not consuming rather than skip records (see docs/operations.md)",
                    act.position.partition, act.position.log
                );
                        act.block(problem);
                        return;
                    }
                    act.expect_from = (why == Opening::Replaced).then_some(resume_from);
                    act.role = Some(act.factory.spawn(act.position.clone(), ctx.address().recipient()));
                    if act.paused {
                        act.set_paused(false, "partition's log open");
                    }
                    for msg in std::mem::take(&mut act.stash) {
                        act.dispatch(msg, ctx);
                    }
                }),
        );
    }

    /// Hands one record to the role actor, or holds it while the log is being opened. A record
    /// below one already handed on means the partition's offsets went back: the topic was
    /// created again under the same name (or truncated), so the log is opened anew.
    fn dispatch(&mut self, msg: Incoming, ctx: &mut Context<Self>) {
        if self.role.is_some() && msg.offset < self.dispatched_next {
            tracing::warn!(
                service = self.position.service,
                partition = self.position.partition,
                log = %self.position.log,
                offset = msg.offset,
                expected = self.dispatched_next,
                "the partition's offsets went back: opening its log again"
            );
            self.open(ctx, Opening::Rewound);
        }
        if self.role.is_some() && self.applied_next < 0 {
            if let Some(from) = self.expect_from.take() {
                if msg.offset > from {
                    let problem = format!(
                        "topic {} changed to log {} and its first record came at offset {}, but the \
                         log was applied only up to {from}: librdkafka kept the old log's position \
                         and skipped the records between; not consuming (see docs/operations.md)",
                        self.position.topic, self.position.log, msg.offset
                    );
                    self.block(problem);
                }
            }
        }
        let Some(role) = &self.role else {
            self.stash.push(msg);
            return;
        };
        if self.applied_next < 0 {
            // Everything before the first record we are handed was committed by a predecessor,
            // or (a log opened anew) is not this log's. Store it for commit at once: after a
            // topic was created again, librdkafka would otherwise still hold the old log's
            // offset for it, and a restart before the first write would resume from there.
            self.applied_next = msg.offset;
            self.store_offset(msg.offset);
        }
        self.dispatched_next = msg.offset + 1;
        let payload = if msg.not_for_us {
            Payload::NotForUs
        } else if msg.forget {
            parse_forget(msg.payload.as_deref())
        } else {
            parse(msg.payload.as_deref())
        };
        // The consume hop of an event's trace (request → produce → consume → flush): DEBUG, as
        // the request's spans are; the flush span of its lane names the same partition.
        if let Payload::Event(e) = &payload {
            let span = tracing::debug_span!(
                "consume",
                service = self.position.service,
                partition = self.position.partition,
                offset = msg.offset,
                event_id = %e.event_id
            );
            tracing::debug!(parent: &span, "consumed");
        }
        role.consumed.do_send(Consumed {
            record: Record {
                offset: msg.offset,
                payload,
            },
        });
        self.metrics
            .consumer_records
            .with_label_values(&[self.position.service])
            .inc();
        if !self.paused && self.over_bounds() {
            self.set_paused(true, "backpressure");
        }
    }

    /// Checks that the topic still has the id the partition was opened with. A topic created
    /// again normally shows as offsets going back ([`Self::dispatch`]); when it doesn't (the new
    /// log is still empty, or librdkafka kept its fetch position because the new log had already
    /// grown past it, a FIXME in its `rd_kafka_topic_metadata_update`), the log is opened anew,
    /// and its first record tells which of the two it was.
    fn check_log(&mut self, ctx: &mut Context<Self>) {
        if self.role.is_none() {
            return;
        }
        let (consumer, topic) = (self.consumer.clone(), self.position.topic.clone());
        let asked_for = self.position.log.clone();
        let lookup =
            tokio::task::spawn_blocking(move || describe_topic_id(consumer.client(), &topic, LOOKUP_TIMEOUT));
        ctx.spawn(lookup.into_actor(self).map(move |res, act, ctx| {
            let Ok(Ok(id)) = res else { return };
            // Reopened meanwhile (offsets went back), or blocked: nothing to compare.
            if act.role.is_none() || act.position.log != asked_for || id.as_str() == &*asked_for {
                return;
            }
            tracing::warn!(service = act.position.service, partition = act.position.partition,
                old_log = %asked_for, new_log = %id, "the topic's id changed under the consumer: opening its log again");
            act.open(ctx, Opening::Replaced);
        }));
    }

    /// Stops handing on records and says why (ERROR, `/readyz`, the blocked metric); the
    /// partition stays paused until it is released.
    fn block(&mut self, problem: String) {
        self.role = None;
        if !self.paused {
            self.set_paused(true, "blocked");
        }
        let labels = [
            self.position.service.to_owned(),
            self.position.partition.to_string(),
        ];
        self.metrics.consumer_blocked.with_label_values(&labels).set(1);
        let component = Self::component(&self.position);
        self.metrics.health.set(&component, problem.clone());
        tracing::error!(component, problem, "partition blocked");
    }

    /// Stores `next` as the offset to commit for this partition.
    fn store_offset(&self, next: i64) {
        // `store_offsets` takes the next offset to read, as committed offsets are; the
        // single-partition `store_offset` would store offset + 1 (librdkafka's
        // rd_kafka_offset_store takes the last processed offset) and skip a record after every
        // restart: the crash test caught exactly that.
        let mut tpl = TopicPartitionList::new();
        let stored = tpl
            .add_partition_offset(
                &self.position.topic,
                self.position.partition,
                Offset::Offset(next),
            )
            .and_then(|()| self.consumer.store_offsets(&tpl));
        if let Err(e) = stored {
            tracing::debug!(error = %e, partition = self.position.partition, "offset not stored (partition revoked?)");
        }
    }

    /// The key this partition's problems are reported under in [`Metrics::health`].
    fn component(position: &Position) -> String {
        format!(
            "consumer {}/{}/{}",
            position.service, position.topic, position.partition
        )
    }
}

/// Looks up the topic's id and the partition's start and end, and opens that log in the role's
/// stores, retrying until it can. Answers the position with its log, and where consuming it
/// should resume: what every store applied of it, or its start, whichever is later.
async fn open_log(
    consumer: Arc<RoleConsumer>,
    factory: Arc<RoleFactory>,
    mut position: Position,
    metrics: Metrics,
) -> (Position, i64) {
    let component = PartitionSource::component(&position);
    let labels = [position.service.to_owned(), position.partition.to_string()];
    let mut wait = Duration::from_millis(250);
    let started = std::time::Instant::now();
    loop {
        let (c, topic, partition) = (consumer.clone(), position.topic.clone(), position.partition);
        let lookup = tokio::task::spawn_blocking(move || {
            let id = describe_topic_id(c.client(), &topic, LOOKUP_TIMEOUT).map_err(|e| e.to_string())?;
            let (start, end) = c
                .fetch_watermarks(&topic, partition, LOOKUP_TIMEOUT)
                .map_err(|e| format!("reading the end of partition {partition}: {e}"))?;
            Ok::<_, String>((id, start, end))
        })
        .await
        .unwrap_or_else(|e| Err(format!("log lookup failed: {e}")));
        let problem = match lookup {
            Err(problem) => problem,
            Ok((id, log_start, log_end)) => {
                position.log = id.as_str().into();
                match factory.open_log(&position, log_end).await {
                    Ok(LogState::Open { next_offset }) => {
                        metrics.consumer_blocked.with_label_values(&labels).set(0);
                        if metrics.health.clear(&component) {
                            tracing::info!(component, log = %position.log, "partition unblocked");
                        }
                        tracing::info!(service = position.service, partition = position.partition,
                            log = %position.log, next_offset, log_end, took_ms = started.elapsed().as_millis() as u64,
                            "partition's log open");
                        return (position, next_offset.max(log_start));
                    }
                    Ok(LogState::Behind { stored, log_end }) => format!(
                        "the stores hold offsets of log {} up to {stored} but the log ends at {log_end} \
                         (truncated by an unclean leader election, or stores restored from elsewhere): \
                         not consuming rather than skip records (see docs/operations.md)",
                        position.log
                    ),
                    Err(e) => {
                        // A store being down is an outage the sinks ride out, not a doubt about
                        // the log: keep trying without reporting the partition blocked.
                        tracing::warn!(component, error = %e, retry_in = ?wait, "stores not reachable to open the partition's log");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(MAX_OPEN_WAIT);
                        continue;
                    }
                }
            }
        };
        metrics.consumer_blocked.with_label_values(&labels).set(1);
        if metrics.health.set(&component, problem.clone()) {
            tracing::error!(
                component,
                problem,
                "partition blocked: can't tell which log its offsets belong to"
            );
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_OPEN_WAIT);
    }
}

impl Actor for PartitionSource {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        tracing::info!(
            service = self.position.service,
            partition = self.position.partition,
            "partition assigned"
        );
        self.open(ctx, Opening::Assigned);
        ctx.run_interval(LOG_CHECK_INTERVAL, |act, ctx| act.check_log(ctx));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        // A partition blocked here is no longer this process's to report once it is released.
        let labels = [
            self.position.service.to_owned(),
            self.position.partition.to_string(),
        ];
        self.metrics.consumer_blocked.with_label_values(&labels).set(0);
        self.metrics.health.clear(&Self::component(&self.position));
        tracing::info!(
            service = self.position.service,
            partition = self.position.partition,
            "partition released"
        );
    }
}

impl Handler<Incoming> for PartitionSource {
    type Result = ();

    fn handle(&mut self, msg: Incoming, ctx: &mut Context<Self>) {
        self.dispatch(msg, ctx);
    }
}

impl Handler<Applied> for PartitionSource {
    type Result = ();

    fn handle(&mut self, msg: Applied, _: &mut Context<Self>) {
        // A role actor of a log this source has left reports offsets that mean nothing now.
        if self.role.is_none() || msg.log != self.position.log {
            return;
        }
        self.released_next = self.released_next.max(msg.released_next);
        if msg.next_offset > self.applied_next {
            self.applied_next = msg.next_offset;
            // Stored offsets are committed by librdkafka's auto-commit, and on revoke and close.
            self.store_offset(msg.next_offset);
        }
        self.report_in_flight();
        if self.paused && self.relieved() {
            self.set_paused(false, "backpressure relieved");
        }
    }
}

impl Handler<FlushAll> for PartitionSource {
    type Result = ();
    fn handle(&mut self, msg: FlushAll, _: &mut Context<Self>) {
        if let Some(role) = &self.role {
            role.flush.do_send(msg);
        }
    }
}

impl Handler<GetProgress> for PartitionSource {
    type Result = ResponseFuture<Progress>;
    fn handle(&mut self, msg: GetProgress, _: &mut Context<Self>) -> Self::Result {
        // While the log is being opened, the held records are received but none is applied.
        let from = self.stash.first().map_or(0, |m| m.offset);
        let held = Progress {
            applied_next: from,
            released_next: from,
            seen_next: self.stash.last().map_or(0, |m| m.offset + 1),
        };
        let role = self.role.as_ref().map(|r| r.progress.clone());
        Box::pin(async move {
            match role {
                Some(r) => r.send(msg).await.unwrap_or(held),
                None => held,
            }
        })
    }
}

impl Handler<StopPartition> for PartitionSource {
    type Result = ();
    fn handle(&mut self, _: StopPartition, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Whether a record is a control record asking to forget a player.
fn is_forget(m: &rdkafka::message::BorrowedMessage<'_>) -> bool {
    use rdkafka::message::{Headers, Message};
    m.headers().is_some_and(|headers| {
        headers.iter().any(|h| {
            h.key == crate::kafka::CONTROL_HEADER && h.value == Some(crate::kafka::FORGET_PLAYER.as_bytes())
        })
    })
}

/// A forget record's value, `{"player_id": …}`; anything else is poison (the DLQ keeps it).
pub fn parse_forget(payload: Option<&[u8]>) -> Payload {
    let value: serde_json::Value = payload
        .and_then(|p| serde_json::from_slice(p).ok())
        .unwrap_or_default();
    match value.get("player_id").and_then(|p| p.as_str()) {
        Some(player) if crate::domain::PlayerId::try_from(player.to_owned()).is_ok() => Payload::Forget {
            player_id: player.to_owned(),
        },
        _ => Payload::Poison {
            reason: "a forget record must be {\"player_id\": <a valid player id>}".into(),
            original: serde_json::json!({ "forget": value }),
        },
    }
}

/// Whether a record is a replayed dead letter addressed to other consumers than `service`.
fn replayed_for_others(m: &rdkafka::message::BorrowedMessage<'_>, service: &str) -> bool {
    use rdkafka::message::{Headers, Message};
    let Some(headers) = m.headers() else {
        return false;
    };
    headers
        .iter()
        .find(|h| h.key == crate::kafka::REPLAY_FOR_HEADER)
        .and_then(|h| h.value)
        .is_some_and(|v| !String::from_utf8_lossy(v).split(',').any(|s| s.trim() == service))
}

/// Parses a record value. Anything that is not a valid event becomes poison with a reason
/// precise enough to fix the producer; the original is kept (as `{"raw": …}` if not JSON).
pub fn parse(payload: Option<&[u8]>) -> Payload {
    let Some(bytes) = payload else {
        return Payload::Poison {
            original: json!({ "raw": null }),
            reason: "message has no value".into(),
        };
    };
    // PostgreSQL can't store U+0000 even inside JSONB strings; JSON can only carry it escaped.
    // The text search is only a cheap filter (`"\\u0000"` is a backslash and `u0000`); the
    // decoded strings decide.
    let maybe_nul = bytes.windows(6).any(|w| w == b"\\u0000");
    if !maybe_nul {
        // The common case in one pass: straight into the event, no intermediate JSON tree.
        if let Ok(event) = serde_json::from_slice::<GameEvent>(bytes) {
            return Payload::Event(event);
        }
    }
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            let raw = String::from_utf8_lossy(bytes).replace('\0', "\u{fffd}");
            return Payload::Poison {
                original: json!({ "raw": raw }),
                reason: format!("value is not JSON: {e}"),
            };
        }
    };
    if maybe_nul && crate::domain::contains_nul(&value) {
        let cleaned = value.to_string().replace("\\u0000", "\\ufffd");
        let original = serde_json::from_str(&cleaned).unwrap_or_else(|_| json!({ "raw": cleaned }));
        return Payload::Poison {
            original,
            reason: "value contains \\u0000, which PostgreSQL cannot store".into(),
        };
    }
    // Parse again from the tree only to get serde's precise message for the poison record.
    match serde_json::from_value::<GameEvent>(value.clone()) {
        Ok(event) => Payload::Event(event),
        Err(e) => Payload::Poison {
            original: value,
            reason: format!("not a valid event: {e}"),
        },
    }
}

/// How long the request that wakes the fetcher after a resume may take: past it, librdkafka's
/// own timer has woken the fetcher anyway.
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Records the poll loop hands to the sources between two yields: how far past
/// PARTITION_MAX_IN_FLIGHT a partition can get.
const HANDOFF: u32 = 64;

/// Reads the subscribed topic and routes each record to its partition's source actor.
/// Returns when `stop` fires; the actors keep running for the drain that follows.
pub async fn poll_loop(
    consumer: Arc<RoleConsumer>,
    factory: Arc<RoleFactory>,
    sources: Arc<Mutex<HashMap<i32, Addr<PartitionSource>>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut handed: u32 = 0;
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => break,
            m = consumer.recv() => m,
        };
        let revoked: Vec<i32> = {
            let mut r = consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *r)
        };
        let failed = {
            let mut map = sources.lock().unwrap_or_else(|p| p.into_inner());
            for p in revoked {
                if let Some(addr) = map.remove(&p) {
                    addr.do_send(StopPartition);
                }
            }
            match msg {
                Ok(m) => {
                    consumer.context().kafka.access_ok();
                    let partition = m.partition();
                    let addr = map.entry(partition).or_insert_with(|| {
                        let position = Position {
                            service: factory.role.service(),
                            topic: m.topic().into(),
                            // Found by the source before its first record is handed on.
                            log: "".into(),
                            partition,
                        };
                        PartitionSource::new(position, consumer.clone(), factory.clone()).start()
                    });
                    addr.do_send(Incoming {
                        offset: m.offset(),
                        payload: m.payload().map(<[u8]>::to_vec),
                        not_for_us: replayed_for_others(&m, factory.role.service()),
                        forget: is_forget(&m),
                    });
                    None
                }
                Err(e) => Some(e),
            }
        };
        // The sources run on this arbiter too. While librdkafka has records queued, `recv` is
        // ready at once and this loop would move its whole queue into the sources' mailboxes
        // before any source counted them: PARTITION_MAX_IN_FLIGHT pauses a partition when a
        // source hands records on, so everything already in its mailbox went past the bound
        // (a soak held 70,000 records of one partition against a bound of 10,000, and RSS rose
        // with them). Yielding lets the sources take their records, and pause, in step; every
        // HANDOFF records rather than every record, since each yield is a pass of the scheduler
        // and its I/O poll.
        handed = handed.wrapping_add(1);
        if handed.is_multiple_of(HANDOFF) {
            tokio::task::yield_now().await;
        }
        if let Some(e) = failed {
            // An ACL the broker refuses is logged (once) and kept for /readyz by the context;
            // the consumer goes on asking, so an ACL added later takes effect without a restart.
            if consumer.context().kafka.report(&e, "") {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            } else {
                tracing::warn!(error = %e, "consume error");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poison_keeps_the_original_and_says_why() {
        let Payload::Poison { original, reason } = parse(Some(b"\xffnot json")) else {
            panic!()
        };
        assert!(original["raw"].as_str().unwrap().contains("not json"));
        assert!(reason.starts_with("value is not JSON"), "{reason}");

        let Payload::Poison { original, reason } = parse(Some(br#"{"event_type":"a"}"#)) else {
            panic!()
        };
        assert_eq!(original["event_type"], "a");
        assert!(reason.contains("missing field"), "{reason}");

        let Payload::Poison { reason, .. } = parse(Some(br#"{"x":"a\u0000b"}"#)) else {
            panic!()
        };
        assert!(reason.contains("\\u0000"));
        // A backslash followed by `u0000` is six ordinary characters, not a NUL.
        let escaped = br#"{"event_id":"9b2d1c4e-0000-4000-8000-000000000001","event_type":"t","player_id":"p","game_id":"g","timestamp":"2024-01-15T10:00:00.000000Z","ingested_at":"2024-01-15T10:00:00.000000Z","data":{"s":"\\u0000"}}"#;
        assert!(matches!(parse(Some(escaped)), Payload::Event(_)));
        assert!(matches!(parse(None), Payload::Poison { .. }));
    }

    fn readiness() -> Readiness {
        Readiness {
            group_grace: Duration::from_secs(30),
            lag_window: Duration::from_secs(300),
            out_of_group_since: None,
            lag: std::collections::VecDeque::new(),
        }
    }

    fn group(state: &str, join: &str) -> rdkafka::statistics::ConsumerGroup {
        rdkafka::statistics::ConsumerGroup {
            state: state.into(),
            stateage: 0,
            join_state: join.into(),
            rebalance_age: 0,
            rebalance_cnt: 0,
            rebalance_reason: String::new(),
            assignment_size: 0,
        }
    }

    #[test]
    fn out_of_its_group_past_the_grace_a_consumer_is_not_ready_until_it_settles_again() {
        let mut r = readiness();
        let t0 = std::time::Instant::now();
        let steady = group("up", "steady");
        let lost = group("query-coord", "init");
        assert_eq!(r.group(t0, Some(&steady)), None);
        assert_eq!(
            r.group(t0, Some(&lost)),
            None,
            "within the grace: a rebalance is normal"
        );
        assert_eq!(r.group(t0 + Duration::from_secs(29), Some(&lost)), None);
        let problem = r
            .group(t0 + Duration::from_secs(30), Some(&lost))
            .expect("a problem");
        assert!(problem.contains("coordinator query-coord"), "{problem}");
        assert_eq!(r.group(t0 + Duration::from_secs(31), Some(&steady)), None);
        assert!(
            r.group(t0 + Duration::from_secs(40), None).is_none(),
            "the grace starts again"
        );
    }

    #[test]
    fn lag_that_grows_without_falling_back_for_the_window_makes_a_consumer_not_ready() {
        let mut r = readiness();
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Growing, but not yet for the whole window.
        for (i, s) in (0..300).step_by(5).enumerate() {
            assert_eq!(r.lag(at(s), 20_000 + i as i64 * 100), None, "{s}");
        }
        assert!(
            r.lag(at(300), 27_000).is_some(),
            "five minutes of growth over the floor"
        );
        // One step back: it is catching up, so the window starts over.
        assert_eq!(r.lag(at(305), 26_000), None);
        assert_eq!(r.lag(at(400), 30_000), None);
        // Under the floor, growth is not a problem.
        let mut small = readiness();
        for s in (0..=600).step_by(5) {
            assert_eq!(small.lag(at(s), s as i64), None);
        }
    }
}
