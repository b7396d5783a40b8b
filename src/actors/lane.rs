//! What every role actor is made of: a [`RoleCore`] (partition, settings, watermarks) and one
//! [`Lane`] per sink it writes, each flushed by [`flush_lane`].
//!
//! A `Lane` is one ordered stream of writes from a role actor to one sink.
//! Records wait in `pending`; at most one batch is in flight, so a partition's writes reach a
//! sink in offset order (the sinks' offset guards depend on it). A batch carries at most the
//! lane's cap of records (SINK_MAX_BATCH), however many wait: a backlog is written in many
//! bounded writes, never one that can't finish. A failed batch stays in flight and is sent again
//! after a backoff: it is never dropped. A batch whose write timed out is halved first (its
//! second half goes back to the front of the queue) and the cap with it, so a write that is too
//! big to finish in time gets smaller until it does; the cap grows back slowly as writes succeed.

use super::messages::SinkError;
use actix::prelude::*;
use futures::future::LocalBoxFuture;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// Pending records for one sink and the batch currently being written.
pub struct Lane<T> {
    /// Records waiting, with their offsets, in arrival order.
    pending: VecDeque<(i64, T)>,
    /// The lowest offset in `pending`.
    pending_from: Option<i64>,
    /// The batch being written, its records' offsets, and the lowest of them (asked for on
    /// every report, so kept rather than searched for).
    in_flight: Option<(Arc<Vec<T>>, Vec<i64>, i64)>,
    sending: bool,
    failures: u32,
    /// After a failure, no resend before this instant, whatever triggers a flush meanwhile.
    retry_at: Option<Instant>,
    /// The most records the next batch may carry; halved by a timed-out write.
    cap: usize,
    /// What `cap` grows back to.
    max: usize,
    /// How many times the record in flight was replaced by its dead letter (0: it wasn't).
    dead_letters_in_flight: u8,
}

impl<T> Default for Lane<T> {
    /// A lane with no cap on its batches (tests).
    fn default() -> Self {
        Lane::new(usize::MAX)
    }
}

impl<T> Lane<T> {
    /// A lane whose batches carry at most `max` records.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Lane {
            pending: VecDeque::new(),
            pending_from: None,
            in_flight: None,
            sending: false,
            failures: 0,
            retry_at: None,
            cap: max,
            max,
            dead_letters_in_flight: 0,
        }
    }

    /// Queues a record read at `offset`.
    pub fn push(&mut self, offset: i64, item: T) {
        // The minimum, not the first: a lane may be fed out of offset order (the leaderboard's
        // board lane gets dead letters at read time and touched boards after Redis applied).
        self.pending_from = Some(self.pending_from.map_or(offset, |f| f.min(offset)));
        self.pending.push_back((offset, item));
    }

    /// Records waiting for the next batch.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The batch to send now: the failed one again (once its backoff has passed), or up to the
    /// cap of the pending records; `None` while a batch is being sent or when there is nothing
    /// to send.
    pub fn take(&mut self) -> Option<Arc<Vec<T>>> {
        if self.sending || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        if self.in_flight.is_none() {
            self.pending_from?;
            let n = self.pending.len().min(self.cap);
            let (offsets, batch): (Vec<i64>, Vec<T>) = self.pending.drain(..n).unzip();
            self.pending_from = self.pending.iter().map(|(o, _)| *o).min();
            let from = offsets.iter().copied().min().unwrap_or(i64::MAX);
            self.in_flight = Some((Arc::new(batch), offsets, from));
        }
        self.sending = true;
        self.in_flight.as_ref().map(|(batch, _, _)| batch.clone())
    }

    /// The in-flight batch is durable; the cap grows back toward its maximum, by an eighth at a
    /// time (halving on a timeout and growing slowly keeps most writes under the store's limit
    /// instead of bouncing off it every other write).
    pub fn succeeded(&mut self) {
        self.in_flight = None;
        self.dead_letters_in_flight = 0;
        self.sending = false;
        self.failures = 0;
        self.retry_at = None;
        self.cap = self.cap.saturating_add(self.cap / 8 + 1).min(self.max);
    }

    /// The in-flight batch failed; it stays to be retried. Returns the backoff before retrying.
    pub fn failed(&mut self, max_backoff: Duration) -> Duration {
        self.sending = false;
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(Duration::from_millis(50), self.failures, max_backoff);
        self.retry_at = Some(Instant::now() + wait);
        wait
    }

    /// The in-flight batch's write timed out: like [`Self::failed`], but the batch is halved
    /// first (its second half goes back to the front of the queue) and the cap with it.
    pub fn timed_out(&mut self, max_backoff: Duration) -> Duration
    where
        T: Clone,
    {
        if let Some(kept) = self.halve() {
            self.cap = kept.max(1);
        }
        self.failed(max_backoff)
    }

    /// The in-flight batch was refused for its content ([`SinkError::Rejected`]). A batch of
    /// several records is halved, its second half back to the front of the queue, to be sent
    /// again at once (the cap stays: the next batches are as big as before); `None`. A batch of
    /// one answers that record, still in flight, for [`Self::replace_in_flight`].
    pub fn rejected(&mut self) -> Option<(i64, T)>
    where
        T: Clone,
    {
        self.sending = false;
        self.retry_at = None;
        let (batch, offsets, from) = self.in_flight.as_ref()?;
        if let ([record], [offset]) = (batch.as_slice(), offsets.as_slice()) {
            debug_assert_eq!(*from, *offset);
            return Some((*offset, record.clone()));
        }
        self.halve();
        None
    }

    /// Halves the in-flight batch, its second half back to the front of the queue; answers how
    /// many records it kept.
    fn halve(&mut self) -> Option<usize>
    where
        T: Clone,
    {
        let (batch, offsets, _) = self.in_flight.take()?;
        let half = batch.len().div_ceil(2);
        let mut items: Vec<T> = Arc::try_unwrap(batch).unwrap_or_else(|shared| (*shared).clone());
        let (back_items, back_offsets) = (items.split_off(half), offsets[half..].to_vec());
        for (o, item) in back_offsets.into_iter().zip(back_items).rev() {
            self.pending_from = Some(self.pending_from.map_or(o, |f| f.min(o)));
            self.pending.push_front((o, item));
        }
        let kept = offsets[..half].to_vec();
        let from = kept.iter().copied().min().unwrap_or(i64::MAX);
        self.in_flight = Some((Arc::new(items), kept, from));
        Some(half)
    }

    /// Replaces the one record in flight (a refused record, by its dead-letter form).
    pub fn replace_in_flight(&mut self, item: T) {
        if let Some((_, offsets, from)) = self.in_flight.take() {
            self.in_flight = Some((Arc::new(vec![item]), offsets, from));
            self.dead_letters_in_flight = self.dead_letters_in_flight.saturating_add(1);
        }
    }

    /// How many times the record in flight was replaced by a dead letter (a refused dead
    /// letter gets one more: the logger's becomes a record that only moves the offset).
    pub fn dead_letters_in_flight(&self) -> u8 {
        self.dead_letters_in_flight
    }

    /// The lowest offset this lane has not yet made durable, if any. Both the in-flight batch
    /// and the pending records count: a lane fed out of offset order can hold lower offsets in
    /// `pending` than in flight.
    pub fn lowest_unapplied(&self) -> Option<i64> {
        let in_flight = self.in_flight.as_ref().map(|(_, _, from)| *from);
        match (in_flight, self.pending_from) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True while a batch is being written.
    pub fn is_sending(&self) -> bool {
        self.sending
    }
}

/// Offset bookkeeping every role actor shares: what it has seen and reported as applied and
/// released, and whether it was asked to drain.
#[derive(Debug, Default)]
pub struct Watermarks {
    pub seen_next: i64,
    pub reported_next: i64,
    /// The last `released_next` reported (see [`super::messages::Applied`]).
    reported_released: i64,
    /// Set by `FlushAll` (shutdown, tests): write whatever is pending as soon as a sink is free
    /// instead of waiting for batch sizes and timers. Ends once everything seen then is durable,
    /// so a drained actor goes back to batching as production runs it.
    drain_until: Option<i64>,
}

impl Watermarks {
    /// The durable and released offsets, given the lowest unapplied offsets of the lanes holding
    /// records' contents (`holding`) and of those holding only keys of theirs (`keyed`); both,
    /// when either moved.
    pub fn advance(
        &mut self,
        holding: impl IntoIterator<Item = Option<i64>>,
        keyed: impl IntoIterator<Item = Option<i64>>,
    ) -> Option<(i64, i64)> {
        let released = holding.into_iter().flatten().min().unwrap_or(self.seen_next);
        let durable = keyed
            .into_iter()
            .flatten()
            .min()
            .map_or(released, |k| k.min(released));
        if self.drain_until.is_some_and(|until| durable >= until) {
            self.drain_until = None;
        }
        (durable > self.reported_next || released > self.reported_released).then(|| {
            self.reported_next = self.reported_next.max(durable);
            self.reported_released = self.reported_released.max(released);
            (self.reported_next, self.reported_released)
        })
    }

    /// Drains everything seen so far.
    pub fn drain(&mut self) {
        self.drain_until = (self.seen_next > self.reported_next).then_some(self.seen_next);
    }

    /// True while draining.
    pub fn draining(&self) -> bool {
        self.drain_until.is_some()
    }

    /// The answer to [`GetProgress`](super::messages::GetProgress).
    pub fn progress(&self) -> super::messages::Progress {
        super::messages::Progress {
            applied_next: self.reported_next,
            released_next: self.reported_released.max(self.reported_next),
            seen_next: self.seen_next,
        }
    }
}

/// What every role actor has besides its lanes: its partition, settings, where it reports
/// durable offsets, and its watermarks.
pub struct RoleCore {
    pub position: super::messages::Position,
    pub settings: super::RoleSettings,
    source: Recipient<super::messages::Applied>,
    pub marks: Watermarks,
}

impl RoleCore {
    /// The core of a role actor for `position`, reporting to `source`.
    pub fn new(
        position: super::messages::Position,
        settings: super::RoleSettings,
        source: Recipient<super::messages::Applied>,
    ) -> Self {
        RoleCore {
            position,
            settings,
            source,
            marks: Watermarks::default(),
        }
    }

    /// Tells the source the durable offset, given the lanes' lowest unapplied ones, when it
    /// moved; every lane holds records' contents.
    pub fn report(&mut self, lowest: impl IntoIterator<Item = Option<i64>>) {
        self.report_split(lowest, None);
    }

    /// [`Self::report`] for a role some of whose lanes hold only keys of their records
    /// (`keyed`): those count for the durable offset but not for the released one.
    pub fn report_split(
        &mut self,
        holding: impl IntoIterator<Item = Option<i64>>,
        keyed: impl IntoIterator<Item = Option<i64>>,
    ) {
        if let Some((next, released)) = self.marks.advance(holding, keyed) {
            self.source.do_send(super::messages::Applied {
                log: self.position.log.clone(),
                next_offset: next,
                released_next: released,
            });
        }
    }
}

/// A role actor, as [`flush_lane`] and [`arm_live`] need it.
pub trait RoleActor: Actor<Context = Context<Self>> {
    /// Its [`RoleCore`].
    fn core(&self) -> &RoleCore;
}

/// `role_actor!(Type)`: the `Actor`, [`RoleActor`] and `GetProgress` impls every role actor
/// shares, for a type with a `core: RoleCore` field.
macro_rules! role_actor {
    ($t:ty) => {
        impl actix::Actor for $t {
            type Context = actix::Context<Self>;
        }

        impl $crate::actors::lane::RoleActor for $t {
            fn core(&self) -> &$crate::actors::lane::RoleCore {
                &self.core
            }
        }

        impl actix::Handler<$crate::actors::messages::GetProgress> for $t {
            type Result = $crate::actors::messages::Progress;
            fn handle(
                &mut self,
                _: $crate::actors::messages::GetProgress,
                _: &mut actix::Context<Self>,
            ) -> Self::Result {
                self.core.marks.progress()
            }
        }
    };
}
pub(crate) use role_actor;

/// Writing one batch: what a lane's write answers, once durable.
pub type Write<R> = LocalBoxFuture<'static, Result<R, SinkError>>;

/// A lane write that is one message to a sink.
pub fn send<M, R>(to: &Recipient<M>, msg: M) -> Write<R>
where
    M: actix::Message<Result = Result<R, SinkError>> + Send + 'static,
    R: Send + 'static,
{
    let request = to.send(msg);
    Box::pin(async move { request.await? })
}

/// When a lane's record was accepted by the API, if it is an event.
pub type IngestedAt<T> = fn(&T) -> Option<chrono::DateTime<chrono::Utc>>;

/// What follows a durable batch: the actor, the batch, the write's answer.
pub type Done<A, T, R> = fn(&mut A, Arc<Vec<T>>, R, &mut Context<A>);

/// One lane of a role actor: where it lives, how a batch is written, what follows.
pub struct LaneOps<A: Actor<Context = Context<A>>, T, R> {
    /// What the lane writes, for logs.
    pub what: &'static str,
    /// The store written, for the flush metrics (`postgres`, `redis`).
    pub sink: &'static str,
    /// How many records of a batch of this size the write's answer says it applied (the rest
    /// were redeliveries skipped by the offset guard).
    pub applied: fn(&R, usize) -> usize,
    /// When a record was accepted by the API, for lanes whose write is what makes an event
    /// visible in a store (the end-to-end latency metric); `None` for the others.
    pub ingested_at: Option<IngestedAt<T>>,
    /// Where the lane lives in the actor.
    pub lane: fn(&mut A) -> &mut Lane<T>,
    /// Starts writing a batch (and takes what it needs from the actor first).
    pub write: fn(&mut A, Arc<Vec<T>>) -> Write<R>,
    /// The batch is durable, the lane knows it and the flush is counted.
    pub done: Done<A, T, R>,
    /// The lane's flush entry point, called again after a failed write's backoff.
    pub again: fn(&mut A, &mut Context<A>),
    /// What a record the store refused ([`SinkError::Rejected`]) is written as instead: its
    /// dead letter, with the store's reason. `None`: the lane's store can't refuse a record
    /// alone (its writes are checked before anything is written, or are snapshots), and a
    /// refusal is retried like any failure.
    pub dead_letter: Option<fn(&mut A, T, String) -> T>,
}

/// Sends the lane's next batch (the failed one again, or what is pending): on success the lane
/// forgets it and `done` runs, in the same callback; on failure it stays in the lane and `again`
/// runs after the lane's backoff. Nothing while a batch is in flight or backing off.
pub fn flush_lane<A: RoleActor, T: Clone + 'static, R: 'static>(
    act: &mut A,
    ctx: &mut Context<A>,
    ops: &'static LaneOps<A, T, R>,
) {
    if let Some(batch) = (ops.lane)(act).take() {
        send_taken(act, ctx, ops, batch);
    }
}

/// [`flush_lane`] for a batch already taken from the lane (and held back for a while).
pub fn send_taken<A: RoleActor, T: Clone + 'static, R: 'static>(
    act: &mut A,
    ctx: &mut Context<A>,
    ops: &'static LaneOps<A, T, R>,
    batch: Arc<Vec<T>>,
) {
    let started = std::time::Instant::now();
    // The flush hop of the trace (DEBUG): one span a batch, after the consume spans of the
    // events it holds, which name the same partition.
    let span = tracing::debug_span!(
        "flush",
        service = act.core().position.service,
        partition = act.core().position.partition,
        lane = ops.what,
        sink = ops.sink,
        records = batch.len()
    );
    let write = (ops.write)(act, batch.clone()).instrument(span.clone());
    ctx.spawn(write.into_actor(act).map(move |res, act, ctx| match res {
        Ok(r) => {
            (ops.lane)(act).succeeded();
            let size = batch.len();
            let applied = (ops.applied)(&r, size);
            tracing::debug!(parent: &span, applied, "flushed");
            let settings = &act.core().settings;
            settings.observe_flush(ops.sink, started, size, applied);
            if let Some(ingested_at) = ops.ingested_at {
                settings.observe_latency(ops.sink, batch.iter().filter_map(ingested_at));
            }
            (ops.done)(act, batch, r, ctx);
        }
        // A dead letter refused in turn gets one more replacement (the logger's: a record that
        // only moves the offset); refused once more, it is retried with backoff like any
        // failure, rather than in a tight loop.
        Err(e) if e.is_rejected() && ops.dead_letter.is_some() && (ops.lane)(act).dead_letters_in_flight() < 2 => {
            let (service, partition) = (act.core().position.service, act.core().position.partition);
            // Halved until the refused record is alone, then written as its dead letter: the
            // partition keeps moving, and only that record is left out.
            if let Some((offset, record)) = (ops.lane)(act).rejected() {
                act.core()
                    .settings
                    .metrics
                    .consumer_rejected
                    .with_label_values(&[service, ops.sink])
                    .inc();
                tracing::error!(service, partition, offset, lane = ops.what, error = %e, "a store refused the record: dead-lettered");
                let dead = ops.dead_letter.map(|d| d(act, record.clone(), e.to_string()));
                (ops.lane)(act).replace_in_flight(dead.unwrap_or(record));
            }
            (ops.again)(act, ctx);
        }
        Err(e) => {
            let (max, partition) = (act.core().settings.retry_max, act.core().position.partition);
            act.core()
                .settings
                .metrics
                .consumer_write_failures
                .with_label_values(&[act.core().position.service, ops.sink])
                .inc();
            let lane = (ops.lane)(act);
            let wait = if e.is_timeout() {
                lane.timed_out(max)
            } else {
                lane.failed(max)
            };
            tracing::warn!(error = %e, retry_in = ?wait, partition, lane = ops.what, "batch not written; it will be retried");
            ctx.run_later(wait, move |act, ctx| (ops.again)(act, ctx));
        }
    }));
}

/// After a record joined a live lane: flush now if it holds LOGGER_FLUSH_EVENTS records, else
/// make sure a LIVE_FLUSH_MS timer is armed (unless a batch is in flight, whose end flushes
/// again).
pub fn arm_live<A: RoleActor, T>(
    act: &mut A,
    ctx: &mut Context<A>,
    lane: fn(&mut A) -> &mut Lane<T>,
    timer: fn(&mut A) -> &mut Option<SpawnHandle>,
    flush: fn(&mut A, &mut Context<A>),
) {
    let (cap, window) = {
        let settings = &act.core().settings;
        (settings.config.logger_flush_events, settings.live_flush())
    };
    let (pending, sending) = {
        let lane = lane(act);
        (lane.pending_len(), lane.is_sending())
    };
    if pending >= cap {
        flush(act, ctx);
    } else if timer(act).is_none() && !sending {
        let handle = ctx.run_later(window, move |act, ctx| {
            *timer(act) = None;
            flush(act, ctx);
        });
        *timer(act) = Some(handle);
    }
}

/// `base` doubled per failure (`failures` ≥ 1 gives twice `base`), at most `max`: the wait
/// before a failed write is sent again.
pub fn backoff(base: Duration, failures: u32, max: Duration) -> Duration {
    base.saturating_mul(1u32 << failures.min(16)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failed_batch_is_resent_unchanged_after_its_backoff_and_new_records_wait_behind_it() {
        let mut lane = Lane::default();
        lane.push(10, "a");
        lane.push(11, "b");
        let first = lane.take().unwrap();
        assert!(lane.take().is_none(), "one batch in flight");
        lane.push(12, "c");
        let wait = lane.failed(Duration::from_secs(1));
        assert_eq!(lane.lowest_unapplied(), Some(10));
        assert!(lane.take().is_none(), "no resend before the backoff");
        tokio::time::advance(wait).await;
        let retry = lane.take().unwrap();
        assert!(Arc::ptr_eq(&first, &retry));
        lane.succeeded();
        assert_eq!(lane.lowest_unapplied(), Some(12));
        assert_eq!(*lane.take().unwrap(), vec!["c"]);
        lane.succeeded();
        assert_eq!(lane.lowest_unapplied(), None);
    }

    #[test]
    fn a_refused_batch_is_halved_until_one_record_is_left_then_replaced_by_its_dead_letter() {
        let mut lane = Lane::new(8);
        for o in 0..4 {
            lane.push(o, o);
        }
        assert_eq!(*lane.take().unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(lane.rejected(), None, "halved");
        assert_eq!(*lane.take().unwrap(), vec![0, 1], "at once: no backoff");
        assert_eq!(lane.rejected(), None);
        assert_eq!(*lane.take().unwrap(), vec![0]);
        assert_eq!(lane.rejected(), Some((0, 0)), "alone: the refused record");
        lane.replace_in_flight(-1);
        assert_eq!(lane.dead_letters_in_flight(), 1);
        assert_eq!(*lane.take().unwrap(), vec![-1]);
        lane.succeeded();
        assert_eq!(lane.dead_letters_in_flight(), 0);
        assert_eq!(lane.lowest_unapplied(), Some(1));
        assert_eq!(
            *lane.take().unwrap(),
            vec![1, 2, 3],
            "the rest, as big as the cap allows"
        );
    }

    #[test]
    fn pending_records_below_the_in_flight_batch_count_as_unapplied() {
        let mut lane = Lane::default();
        lane.push(25, "dead letter");
        lane.take().unwrap();
        lane.push(10, "board touched by offset 10");
        assert_eq!(lane.lowest_unapplied(), Some(10));
    }

    #[test]
    fn watermarks_report_the_lowest_unapplied_offset_once() {
        let mut w = Watermarks {
            seen_next: 20,
            ..Watermarks::default()
        };
        assert_eq!(w.advance([Some(12), None], None), Some((12, 12)));
        assert_eq!(w.advance([Some(12)], None), None);
        assert_eq!(w.advance([None, None], None), Some((20, 20)));
    }

    #[test]
    fn records_waiting_only_in_keyed_lanes_are_released_but_not_durable() {
        let mut w = Watermarks {
            seen_next: 30,
            ..Watermarks::default()
        };
        assert_eq!(w.advance([Some(25)], [Some(10)]), Some((10, 25)));
        assert_eq!(
            w.advance([None], [Some(10)]),
            Some((10, 30)),
            "released moved alone"
        );
        assert_eq!(w.advance([None], [Some(10)]), None);
        assert_eq!(w.advance([None], [Some(28)]), Some((28, 30)));
        assert_eq!(w.progress().released_next, 30);
    }

    #[test]
    fn draining_ends_once_what_was_seen_is_durable() {
        let mut w = Watermarks {
            seen_next: 10,
            ..Watermarks::default()
        };
        w.drain();
        assert!(w.draining());
        w.advance([Some(5)], None);
        assert!(w.draining());
        w.seen_next = 12;
        w.advance([None], [Some(9)]);
        assert!(w.draining(), "released is not durable");
        w.advance([Some(11)], None);
        assert!(!w.draining(), "everything seen when asked is durable");
        w.drain();
        w.advance([None], None);
        assert!(!w.draining());
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_and_is_capped() {
        let mut lane: Lane<()> = Lane::default();
        lane.push(0, ());
        lane.take();
        let a = lane.failed(Duration::from_secs(5));
        tokio::time::advance(a).await;
        lane.take();
        let b = lane.failed(Duration::from_secs(5));
        assert!(b > a);
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(5)).await;
            assert!(lane.take().is_some());
            assert!(lane.failed(Duration::from_secs(5)) <= Duration::from_secs(5));
        }
    }
}
