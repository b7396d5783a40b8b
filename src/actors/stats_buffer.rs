//! `StatsBuffer`: per-player counts, live in Redis and batched into `player_statistics`.
//!
//! Two lanes share one stream of records: the live lane goes to Redis DB 0 within LIVE_FLUSH_MS;
//! the batch lane holds STATS_FLUSH_EVENTS events or STATS_FLUSH_INTERVAL_MS, whichever comes
//! first, then becomes one upsert. The partition's durable offset is the lower of the two.

use super::forget::{run_forgets, ForgetQueue, Forgetters, Forgetting};
use super::lane::{arm_live, flush_lane, role_actor, send, send_taken, Lane, LaneOps, RoleCore};
use super::messages::*;
use actix::prelude::*;
use chrono::SecondsFormat;
use futures::future::LocalBoxFuture;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// The stats-aggregator role for one partition.
pub struct StatsBuffer {
    core: RoleCore,
    pg: Recipient<UpsertStats>,
    redis: Recipient<ApplyStats>,
    claims: Recipient<ClaimFirst>,
    forget: Forgetters,
    live: Lane<StatDelta>,
    batch: Lane<StatRow>,
    /// Offset -> "is a retry", as the live lane's script answered: the batch lane reuses these
    /// answers (they can't differ: the claim records the first sighting's offset) and asks Redis
    /// only about offsets the live lane skipped as already applied before a restart.
    checked: BTreeMap<i64, bool>,
    /// Offset -> why Redis refused it (its player's key holds something else's data): the
    /// batch lane dead-letters these instead of counting them.
    refused: BTreeMap<i64, String>,
    /// One past the newest offset the live lane has written (and so answered for).
    live_done_next: i64,
    /// A batch taken from the batch lane, waiting for the live lane to answer for its newest
    /// records (at most LIVE_FLUSH_MS away).
    parked: Option<Arc<Vec<StatRow>>>,
    live_timer: Option<SpawnHandle>,
    batch_timer: Option<SpawnHandle>,
    forgets: ForgetQueue,
}

/// Counts to Redis DB 0, within LIVE_FLUSH_MS.
const LIVE: LaneOps<StatsBuffer, StatDelta, StatsApplied> = LaneOps {
    what: "stats to Redis",
    sink: "redis",
    applied: |done, _| done.applied,
    ingested_at: Some(|d| Some(d.ingested_at)),
    lane: |act| &mut act.live,
    write: |act, deltas| {
        let position = act.core.position.clone();
        send(&act.redis, ApplyStats { position, deltas })
    },
    done: |act, deltas, done, ctx| {
        let retries: HashSet<i64> = done.retries.into_iter().collect();
        for d in deltas.iter().filter(|d| d.offset >= done.checked_from) {
            act.checked.insert(d.offset, retries.contains(&d.offset));
        }
        for d in deltas.iter().filter(|d| done.refused.contains(&d.offset)) {
            act.core.settings.rejected("redis", d.offset);
            act.refused.insert(
                d.offset,
                format!(
                    "Redis refused: the stats key of player {} holds another type of data, which \
                     gamemetrics didn't write; the event was not counted",
                    d.player_id
                ),
            );
        }
        if let Some(newest) = deltas.iter().map(|d| d.offset).max() {
            act.live_done_next = act.live_done_next.max(newest + 1);
        }
        if let Some(batch) = act.parked.take() {
            act.send_batch(batch, ctx);
        }
        act.report();
        run_forgets(act, ctx);
        act.flush_live(ctx);
    },
    again: |act, ctx| act.flush_live(ctx),
    dead_letter: None,
};

/// Counts to `player_statistics`, every STATS_FLUSH_EVENTS or STATS_FLUSH_INTERVAL_MS.
const BATCH: LaneOps<StatsBuffer, StatRow, usize> = LaneOps {
    what: "stats to PostgreSQL",
    sink: "postgres",
    applied: |applied, _| *applied,
    ingested_at: None,
    lane: |act| &mut act.batch,
    write: |act, batch| {
        let mut rows: Vec<StatRow> = batch.iter().cloned().collect();
        let mut unchecked = Vec::new();
        for r in &mut rows {
            if r.dead.is_some() {
                // Refused by player_statistics before, and dead-lettered now: never counted.
                r.retry = true;
                continue;
            }
            if let Some(reason) = act.refused.get(&r.offset) {
                r.retry = true;
                r.dead = Some(reason.clone());
                continue;
            }
            match act.checked.get(&r.offset) {
                Some(&retry) => r.retry = retry,
                None => unchecked.push(ClaimItem {
                    offset: r.offset,
                    event_id: r.event_id,
                    player_id: r.player_id.clone(),
                }),
            }
        }
        let (pg, claims, position) = (act.pg.clone(), act.claims.clone(), act.core.position.clone());
        Box::pin(async move {
            if !unchecked.is_empty() {
                let retries = claims
                    .send(ClaimFirst {
                        position: position.clone(),
                        items: unchecked,
                    })
                    .await??;
                let retries: HashSet<i64> = retries.into_iter().collect();
                for r in rows.iter_mut().filter(|r| retries.contains(&r.offset)) {
                    r.retry = true;
                }
            }
            let rows = Arc::new(rows);
            pg.send(UpsertStats { position, rows }).await?
        })
    },
    done: |act, batch, _, ctx| {
        if let Some(last) = batch.last() {
            act.checked = act.checked.split_off(&(last.offset + 1));
            act.refused = act.refused.split_off(&(last.offset + 1));
        }
        act.report();
        run_forgets(act, ctx);
        // Whatever piled up meanwhile waits for its own trigger, as the seed's "every 100
        // events or 30 s" asks; a full buffer goes at once, and so does one a forget waits on.
        if act.core.marks.draining()
            || act.batch.pending_len() >= act.core.settings.config.stats_flush_events
            || act.forgets.waits_on(act.batch.lowest_unapplied())
        {
            act.flush_batch(ctx);
        } else {
            act.arm_batch_timer(ctx);
        }
    },
    again: |act, ctx| act.flush_batch(ctx),
    dead_letter: Some(|_, row, reason| StatRow {
        retry: true,
        dead: Some(reason),
        ..row
    }),
};

impl StatsBuffer {
    /// A stats buffer upserting through `pg`, counting live through `redis`, asking `claims`
    /// which events are retries, and forgetting players through `forget`.
    pub fn new(
        core: RoleCore,
        pg: Recipient<UpsertStats>,
        redis: Recipient<ApplyStats>,
        claims: Recipient<ClaimFirst>,
        forget: Forgetters,
    ) -> Self {
        let max_batch = core.settings.config.sink_max_batch;
        StatsBuffer {
            core,
            pg,
            redis,
            claims,
            forget,
            live: Lane::new(max_batch),
            batch: Lane::new(max_batch),
            checked: BTreeMap::new(),
            refused: BTreeMap::new(),
            live_done_next: 0,
            parked: None,
            live_timer: None,
            batch_timer: None,
            forgets: ForgetQueue::default(),
        }
    }

    fn flush_live(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.live_timer.take() {
            ctx.cancel_future(t);
        }
        flush_lane(self, ctx, &LIVE);
    }

    fn flush_batch(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.batch_timer.take() {
            ctx.cancel_future(t);
        }
        if let Some(batch) = self.batch.take() {
            self.send_batch(batch, ctx);
        }
    }

    /// Upserts a taken batch once the live lane has answered the retry question for all of it,
    /// else parks it until the live lane's next write lands (at most LIVE_FLUSH_MS away). With
    /// deduplication off there is no question, and PostgreSQL never waits on Redis.
    fn send_batch(&mut self, batch: Arc<Vec<StatRow>>, ctx: &mut Context<Self>) {
        let dedup = self.core.settings.config.dedup_window_secs > 0;
        if dedup && batch.iter().any(|r| r.offset >= self.live_done_next) {
            self.parked = Some(batch);
            return;
        }
        send_taken(self, ctx, &BATCH, batch);
    }

    fn arm_batch_timer(&mut self, ctx: &mut Context<Self>) {
        if self.batch_timer.is_none() && self.batch.pending_len() > 0 {
            let every = Duration::from_millis(self.core.settings.config.stats_flush_interval_ms);
            self.batch_timer = Some(ctx.run_later(every, |act, ctx| {
                act.batch_timer = None;
                act.flush_batch(ctx);
            }));
        }
    }

    fn report(&mut self) {
        self.core.report([
            self.live.lowest_unapplied(),
            self.batch.lowest_unapplied(),
            self.forgets.lowest(),
        ]);
    }
}

role_actor!(StatsBuffer);

impl Forgetting for StatsBuffer {
    fn forgets(&mut self) -> &mut ForgetQueue {
        &mut self.forgets
    }

    fn lanes_lowest(&self) -> Option<i64> {
        [self.live.lowest_unapplied(), self.batch.lowest_unapplied()]
            .into_iter()
            .flatten()
            .min()
    }

    fn remove(&mut self, player_id: String) -> LocalBoxFuture<'static, Result<Vec<String>, SinkError>> {
        self.forget
            .remove_from_both(player_id, LiveDb::Stats, self.core.settings.role)
    }

    fn removed(&mut self, _: i64, _: Vec<String>, _: &mut Context<Self>) {}

    fn report_progress(&mut self) {
        self.report();
    }
}

impl Handler<Consumed> for StatsBuffer {
    type Result = ();

    fn handle(&mut self, msg: Consumed, ctx: &mut Context<Self>) {
        let offset = msg.record.offset;
        self.core.marks.seen_next = offset + 1;
        let event = match msg.record.payload {
            Payload::Event(event) if !self.core.settings.drops_event(&event) => event,
            Payload::Forget { player_id } => {
                self.core.settings.forgotten.extend([player_id.clone()]);
                self.forgets.push(offset, player_id);
                self.flush_live(ctx);
                self.flush_batch(ctx);
                run_forgets(self, ctx);
                return;
            }
            // Poison messages are the logger's to dead-letter; they count for nothing here.
            _ => {
                self.report();
                return;
            }
        };
        let scoped = event.scoped_id();
        self.live.push(
            offset,
            StatDelta {
                offset,
                event_id: scoped,
                player_id: event.player_id.as_str().to_owned(),
                event_type: event.event_type.as_str().to_owned(),
                timestamp: event.timestamp.to_rfc3339_opts(SecondsFormat::Micros, true),
                ingested_at: event.ingested_at,
            },
        );
        self.batch.push(
            offset,
            StatRow {
                offset,
                event_id: scoped,
                player_id: event.player_id.as_str().to_owned(),
                event_type: event.event_type.as_str().to_owned(),
                retry: false,
                dead: None,
            },
        );
        if self.batch.pending_len() >= self.core.settings.config.stats_flush_events {
            self.flush_batch(ctx);
        } else {
            self.arm_batch_timer(ctx);
        }
        arm_live(
            self,
            ctx,
            |a| &mut a.live,
            |a| &mut a.live_timer,
            Self::flush_live,
        );
    }
}

impl Handler<FlushAll> for StatsBuffer {
    type Result = ();
    fn handle(&mut self, _: FlushAll, ctx: &mut Context<Self>) {
        self.core.marks.drain();
        self.flush_live(ctx);
        self.flush_batch(ctx);
    }
}
