//! `Logger`: every record of its partition becomes a row in `events` or in `dlq`.
//!
//! Batches of up to LOGGER_FLUSH_EVENTS, or whatever arrived within LIVE_FLUSH_MS, go to the
//! PostgreSQL sink in one transaction with the partition's offset.

use super::lane::{arm_live, flush_lane, role_actor, send, Lane, LaneOps, RoleCore};
use super::messages::*;
use actix::prelude::*;

/// The event-logger role for one partition.
pub struct Logger {
    core: RoleCore,
    pg: Recipient<WriteEvents>,
    lane: Lane<Record>,
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
        Payload::Poison { .. } | Payload::NotForUs => None,
    }),
    lane: |act| &mut act.lane,
    write: |act, records| {
        let position = act.core.position.clone();
        send(&act.pg, WriteEvents { position, records })
    },
    done: |act, _, _, ctx| {
        act.report();
        act.flush(ctx);
    },
    again: |act, ctx| act.flush(ctx),
};

impl Logger {
    /// A logger writing through `pg`.
    pub fn new(core: RoleCore, pg: Recipient<WriteEvents>) -> Self {
        let max_batch = core.settings.config.sink_max_batch;
        Logger {
            core,
            pg,
            lane: Lane::new(max_batch),
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
        self.core.report([self.lane.lowest_unapplied()]);
    }
}

role_actor!(Logger);

impl Handler<Consumed> for Logger {
    type Result = ();

    fn handle(&mut self, msg: Consumed, ctx: &mut Context<Self>) {
        let offset = msg.record.offset;
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
        self.core.marks.seen_next = offset + 1;
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
