//! `Logger`: every record of its partition becomes a row in `events` or in `dlq`.
//!
//! Batches of up to LOGGER_FLUSH_EVENTS, or whatever arrived within LIVE_FLUSH_MS, go to the
//! PostgreSQL sink in one transaction with the partition's offset.

use super::lane::{flush_lane, flush_or_arm, Lane, LaneOps, RoleActor, Watermarks};
use super::messages::*;
use super::RoleSettings;
use actix::prelude::*;

/// The event-logger role for one partition.
pub struct Logger {
    position: Position,
    settings: RoleSettings,
    pg: Recipient<WriteEvents>,
    source: Recipient<Applied>,
    lane: Lane<Record>,
    marks: Watermarks,
    /// Armed while a micro-batch waits for LIVE_FLUSH_MS.
    timer: Option<SpawnHandle>,
}

/// Records to `events` and `dlq`.
const EVENTS: LaneOps<Logger, Record, usize> = LaneOps {
    what: "events",
    lane: |act| &mut act.lane,
    write: |act, records| {
        let write = act.pg.send(WriteEvents {
            position: act.position.clone(),
            records,
        });
        Box::pin(async move { write.await? })
    },
    done: |act, records, applied, started, ctx| {
        act.settings
            .observe_flush("postgres", started, records.len(), applied);
        act.settings
            .observe_latency(records.iter().filter_map(|r| match &r.payload {
                Payload::Event(e) => Some(e.ingested_at),
                Payload::Poison { .. } => None,
            }));
        act.report();
        act.flush(ctx);
    },
    again: |act, ctx| act.flush(ctx),
};

impl Logger {
    /// A logger for `position`, reporting durable offsets to `source`.
    pub fn new(
        position: Position,
        settings: RoleSettings,
        pg: Recipient<WriteEvents>,
        source: Recipient<Applied>,
    ) -> Self {
        Logger {
            position,
            settings,
            pg,
            source,
            lane: Lane::default(),
            marks: Watermarks::default(),
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
        if let Some(next) = self.marks.advance([self.lane.lowest_unapplied()]) {
            self.source.do_send(Applied {
                log: self.position.log.clone(),
                next_offset: next,
            });
        }
    }
}

impl RoleActor for Logger {
    fn retry_max(&self) -> std::time::Duration {
        self.settings.retry_max
    }
    fn partition(&self) -> i32 {
        self.position.partition
    }
}

impl Actor for Logger {
    type Context = Context<Self>;
}

impl Handler<Consumed> for Logger {
    type Result = ();

    fn handle(&mut self, msg: Consumed, ctx: &mut Context<Self>) {
        let offset = msg.record.offset;
        if let Payload::Poison { reason, .. } = &msg.record.payload {
            self.settings
                .metrics
                .consumer_dlq
                .with_label_values(&[self.position.service])
                .inc();
            tracing::warn!(partition = self.position.partition, offset, reason = %reason, "poison message to dlq");
        }
        self.lane.push(offset, msg.record);
        self.marks.seen_next = offset + 1;
        let state = (
            self.lane.pending_len(),
            self.settings.config.logger_flush_events,
            self.lane.is_sending(),
        );
        flush_or_arm(
            self,
            ctx,
            state,
            self.settings.live_flush(),
            |a| &mut a.timer,
            Self::flush,
        );
    }
}

impl Handler<FlushAll> for Logger {
    type Result = ();
    fn handle(&mut self, _: FlushAll, ctx: &mut Context<Self>) {
        self.marks.drain();
        self.flush(ctx);
    }
}

impl Handler<GetProgress> for Logger {
    type Result = Progress;
    fn handle(&mut self, _: GetProgress, _: &mut Context<Self>) -> Progress {
        self.marks.progress()
    }
}
