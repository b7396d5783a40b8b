//! `Logger`: every record of its partition becomes a row in `events` or in `dlq`.
//!
//! Batches of up to LOGGER_FLUSH_EVENTS, or whatever arrived within LIVE_FLUSH_MS, go to the
//! PostgreSQL sink in one transaction with the partition's offset.

use super::forget::{run_forgets, ForgetQueue, Forgetters, Forgetting};
use super::lane::{arm_live, flush_lane, role_actor, send, Lane, LaneOps, RoleCore};
use super::messages::*;
use actix::prelude::*;
use futures::future::LocalBoxFuture;

/// The event-logger role for one partition.
pub struct Logger {
    core: RoleCore,
    pg: Recipient<WriteEvents>,
    forget_pg: Recipient<ForgetInPg>,
    lane: Lane<Record>,
    forgets: ForgetQueue,
    /// Armed while a micro-batch waits for LIVE_FLUSH_MS.
    timer: Option<SpawnHandle>,
}

/// Records to `events` and `dlq`.
const EVENTS: LaneOps<Logger, Record, usize> = LaneOps {
    what: "events",
    sink: "postgres",
    applied: |applied, _| *applied,
    ingested_at: Some(|r| match &r.payload {
        Payload::Event(e) => Some(e.ingested_at),
        Payload::Poison { .. } | Payload::NotForUs | Payload::Forget { .. } => None,
    }),
    lane: |act| &mut act.lane,
    write: |act, records| {
        let position = act.core.position.clone();
        send(&act.pg, WriteEvents { position, records })
    },
    done: |act, _, _, ctx| {
        act.report();
        run_forgets(act, ctx);
        act.flush(ctx);
    },
    again: |act, ctx| act.flush(ctx),
    dead_letter: Some(|_, record, reason| dead_letter(record, reason)),
};

/// A record `events` refused, as its dead letter: the event goes to `dlq` with PostgreSQL's
/// reason. A dead letter the `dlq` table refused too is let go (logged at ERROR by the lane).
fn dead_letter(record: Record, reason: String) -> Record {
    let payload = match record.payload {
        Payload::Event(e) => Payload::Poison {
            original: serde_json::to_value(&e).unwrap_or_default(),
            reason,
        },
        _ => Payload::NotForUs,
    };
    Record {
        offset: record.offset,
        payload,
    }
}

impl Logger {
    /// A logger writing through `pg`, forgetting players through `forget`.
    pub fn new(core: RoleCore, pg: Recipient<WriteEvents>, forget: Forgetters) -> Self {
        let max_batch = core.settings.config.sink_max_batch;
        Logger {
            core,
            pg,
            forget_pg: forget.pg,
            lane: Lane::new(max_batch),
            forgets: ForgetQueue::default(),
            timer: None,
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        flush_lane(self, ctx, &EVENTS);
    }

    fn report(&mut self) {
        self.core
            .report([self.lane.lowest_unapplied(), self.forgets.lowest()]);
    }
}

role_actor!(Logger);

impl Forgetting for Logger {
    fn forgets(&mut self) -> &mut ForgetQueue {
        &mut self.forgets
    }

    fn lanes_lowest(&self) -> Option<i64> {
        self.lane.lowest_unapplied()
    }

    fn remove(&mut self, player_id: String) -> LocalBoxFuture<'static, Result<Vec<String>, SinkError>> {
        send(
            &self.forget_pg,
            ForgetInPg {
                player_id,
                role: self.core.settings.role,
            },
        )
    }

    fn removed(&mut self, _: i64, _: Vec<String>, _: &mut Context<Self>) {}

    fn report_progress(&mut self) {
        self.report();
    }
}

impl Handler<Consumed> for Logger {
    type Result = ();

    fn handle(&mut self, msg: Consumed, ctx: &mut Context<Self>) {
        let offset = msg.record.offset;
        self.core.marks.seen_next = offset + 1;
        if self.core.settings.drops(&msg.record.payload) {
            self.report();
            return;
        }
        if let Payload::Forget { player_id } = msg.record.payload {
            self.core.settings.forgotten.extend([player_id.clone()]);
            self.forgets.push(offset, player_id);
            self.flush(ctx);
            run_forgets(self, ctx);
            return;
        }
        if let Payload::Poison { reason, .. } = &msg.record.payload {
            self.core
                .settings
                .metrics
                .consumer_dlq
                .with_label_values(&[self.core.position.service])
                .inc();
            tracing::warn!(partition = self.core.position.partition, offset, reason = %reason, "poison message to dlq");
        }
        self.lane.push(offset, msg.record);
        arm_live(self, ctx, |a| &mut a.lane, |a| &mut a.timer, Self::flush);
    }
}

impl Handler<FlushAll> for Logger {
    type Result = ();
    fn handle(&mut self, _: FlushAll, ctx: &mut Context<Self>) {
        self.core.marks.drain();
        self.flush(ctx);
    }
}
