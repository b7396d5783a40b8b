//! `Logger`: every record of its partition becomes a row in `events` or in `dlq`.
//!
//! Batches of up to LOGGER_FLUSH_EVENTS, or whatever arrived within LIVE_FLUSH_MS, go to the
//! PostgreSQL sink in one transaction with the partition's offset.

use super::lane::{Lane, Watermarks};
use super::messages::*;
use super::sinks::SinkError;
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
        let Some(records) = self.lane.take() else { return };
        let started = std::time::Instant::now();
        let size = records.len();
        let write = self.pg.send(WriteEvents {
            position: self.position.clone(),
            records: records.clone(),
        });
        ctx.spawn(write.into_actor(self).map(move |res, act, ctx| {
            match res.map_err(SinkError::from).and_then(|r| r) {
                Ok(applied) => {
                    act.settings.observe_flush("postgres", started, size, applied);
                    act.settings.observe_latency(records.iter().filter_map(|r| match &r.payload {
                        Payload::Event(e) => Some(e.ingested_at),
                        Payload::Poison { .. } => None,
                    }));
                    act.lane.succeeded();
                    act.report();
                    act.flush(ctx);
                }
                Err(e) => {
                    let wait = act.lane.failed(act.settings.retry_max);
                    tracing::warn!(error = %e, retry_in = ?wait, partition = act.position.partition, "logger batch not written");
                    ctx.run_later(wait, |act, ctx| act.flush(ctx));
                }
            }
        }));
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
        if self.lane.pending_len() >= self.settings.config.logger_flush_events {
            self.flush(ctx);
        } else if self.timer.is_none() && !self.lane.is_sending() {
            self.timer = Some(ctx.run_later(self.settings.live_flush(), |act, ctx| {
                act.timer = None;
                act.flush(ctx);
            }));
        }
    }
}

impl Handler<FlushAll> for Logger {
    type Result = ();
    fn handle(&mut self, _: FlushAll, ctx: &mut Context<Self>) {
        self.flush(ctx);
    }
}

impl Handler<GetProgress> for Logger {
    type Result = Progress;
    fn handle(&mut self, _: GetProgress, _: &mut Context<Self>) -> Progress {
        Progress {
            applied_next: self.marks.reported_next,
            seen_next: self.marks.seen_next,
        }
    }
}
