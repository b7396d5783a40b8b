//! `Leaderboard`: scores into Redis sorted sets as they arrive, and the top N of every touched
//! board into `leaderboards` every LEADERBOARD_FLUSH_EVENTS scoring events or
//! LEADERBOARD_FLUSH_INTERVAL_MS.
//!
//! A record is durable once its score is in Redis *and* the boards it touched were written to
//! PostgreSQL afterwards; only then does the partition's offset move past it. After a crash the
//! record is re-read: Redis skips it (offset guard), but it marks its board touched again, so the
//! table catches up.
//!
//! The score is `data.score`, an integer from 0 to 1,000,000,000. A scoring event without one, or
//! with anything else, can never score: it goes to the DLQ as `leaderboard-manager`.

use super::lane::{Lane, Watermarks};
use super::messages::*;
use super::sinks::SinkError;
use super::RoleSettings;
use crate::domain::leaderboard::{periods_of, score_of};
use actix::prelude::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Work waiting for the next write to PostgreSQL.
#[derive(Debug, Clone)]
pub enum BoardWork {
    /// A game whose boards changed in Redis.
    Touched(String),
    /// A scoring event that can never score.
    Dead(DlqEntry),
}

/// The leaderboard-manager role for one partition.
pub struct Leaderboard {
    position: Position,
    settings: RoleSettings,
    pg: Recipient<WriteBoards>,
    scores_sink: Recipient<ApplyScores>,
    top_sink: Recipient<ReadTop>,
    source: Recipient<Applied>,
    scores: Lane<ScoreDelta>,
    boards: Lane<BoardWork>,
    marks: Watermarks,
    /// Scoring events applied to Redis since the last board write started.
    scored_since_flush: usize,
    live_timer: Option<SpawnHandle>,
    board_timer: Option<SpawnHandle>,
    /// When the last board write started, for LEADERBOARD_MIN_FLUSH_GAP_MS.
    last_board_flush: Option<Instant>,
    draining: bool,
}

impl Leaderboard {
    /// A leaderboard manager for `position`, reporting durable offsets to `source`.
    pub fn new(
        position: Position,
        settings: RoleSettings,
        pg: Recipient<WriteBoards>,
        scores_sink: Recipient<ApplyScores>,
        top_sink: Recipient<ReadTop>,
        source: Recipient<Applied>,
    ) -> Self {
        Leaderboard {
            position,
            settings,
            pg,
            scores_sink,
            top_sink,
            source,
            scores: Lane::default(),
            boards: Lane::default(),
            marks: Watermarks::default(),
            scored_since_flush: 0,
            live_timer: None,
            board_timer: None,
            last_board_flush: None,
            draining: false,
        }
    }

    fn flush_scores(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.live_timer.take() {
            ctx.cancel_future(t);
        }
        let Some(deltas) = self.scores.take() else { return };
        let (started, size) = (Instant::now(), deltas.len());
        let write = self.scores_sink.send(ApplyScores {
            position: self.position.clone(),
            deltas: deltas.clone(),
        });
        ctx.spawn(write.into_actor(self).map(move |res, act, ctx| {
            match res.map_err(SinkError::from).and_then(|r| r) {
                Ok(applied) => {
                    act.settings.observe_flush("redis", started, size, applied);
                    // Same callback, no await in between: the offsets move from one lane to the
                    // other without a moment in which neither holds them.
                    act.scores.succeeded();
                    for d in deltas.iter() {
                        act.boards.push(d.offset, BoardWork::Touched(d.game_id.clone()));
                    }
                    act.scored_since_flush += size;
                    act.after_board_work(ctx);
                    act.flush_scores(ctx);
                }
                Err(e) => {
                    let wait = act.scores.failed(act.settings.retry_max);
                    tracing::warn!(error = %e, retry_in = ?wait, "scores not applied to Redis");
                    ctx.run_later(wait, |act, ctx| act.flush_scores(ctx));
                }
            }
        }));
    }

    fn after_board_work(&mut self, ctx: &mut Context<Self>) {
        let config = &self.settings.config;
        let gap = Duration::from_millis(config.leaderboard_min_flush_gap_ms);
        let since_last = self.last_board_flush.map_or(gap, |t| t.elapsed());
        let due_now = self.draining || self.scored_since_flush >= config.leaderboard_flush_events;
        if due_now {
            // Every 50 scoring events, but not more often than the gap allows: under load a
            // flush per 50 events would rewrite thousands of top-N rows per second.
            let wait = if self.draining {
                Duration::ZERO
            } else {
                gap.saturating_sub(since_last)
            };
            if wait.is_zero() {
                self.flush_boards(ctx);
                return;
            }
            if let Some(t) = self.board_timer.take() {
                ctx.cancel_future(t);
            }
            self.arm_board_timer(wait, ctx);
        } else if self.board_timer.is_none() && self.boards.pending_len() > 0 {
            self.arm_board_timer(Duration::from_millis(config.leaderboard_flush_interval_ms), ctx);
        }
    }

    fn arm_board_timer(&mut self, wait: Duration, ctx: &mut Context<Self>) {
        self.board_timer = Some(ctx.run_later(wait, |act, ctx| {
            act.board_timer = None;
            act.flush_boards(ctx);
        }));
    }

    fn flush_boards(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.board_timer.take() {
            ctx.cancel_future(t);
        }
        let Some(work) = self.boards.take() else { return };
        self.scored_since_flush = 0;
        self.last_board_flush = Some(Instant::now());
        let mut games = BTreeSet::new();
        let mut dlq = Vec::new();
        for w in work.iter() {
            match w {
                BoardWork::Touched(g) => {
                    games.insert(g.clone());
                }
                BoardWork::Dead(d) => dlq.push(d.clone()),
            }
        }
        let (redis, pg, position) = (self.top_sink.clone(), self.pg.clone(), self.position.clone());
        let n = self.settings.config.leaderboard_top_n;
        let started = Instant::now();
        let size = work.len();
        let write = async move {
            pg.send(WriteBoards {
                position,
                game_ids: games.into_iter().collect(),
                n,
                reader: redis,
                dlq,
            })
            .await?
        };
        ctx.spawn(
            write
                .into_actor(self)
                .map(move |res: Result<(), SinkError>, act, ctx| match res {
                    Ok(()) => {
                        act.settings.observe_flush("postgres", started, size, size);
                        act.boards.succeeded();
                        act.report();
                        if act.boards.pending_len() > 0 {
                            act.after_board_work(ctx);
                        }
                    }
                    Err(e) => {
                        let wait = act.boards.failed(act.settings.retry_max);
                        tracing::warn!(error = %e, retry_in = ?wait, "leaderboards not written");
                        ctx.run_later(wait, |act, ctx| act.flush_boards(ctx));
                    }
                }),
        );
    }

    fn report(&mut self) {
        if let Some(next) = self
            .marks
            .advance([self.scores.lowest_unapplied(), self.boards.lowest_unapplied()])
        {
            self.source.do_send(Applied {
                log: self.position.log.clone(),
                next_offset: next,
            });
        }
    }
}

impl Actor for Leaderboard {
    type Context = Context<Self>;
}

impl Handler<Consumed> for Leaderboard {
    type Result = ();

    fn handle(&mut self, msg: Consumed, ctx: &mut Context<Self>) {
        let offset = msg.record.offset;
        self.marks.seen_next = offset + 1;
        let event = match msg.record.payload {
            Payload::Event(e) if self.settings.scoring.contains(e.event_type.as_str()) => e,
            // Not a scoring event, or poison (the logger's to dead-letter): nothing to do.
            _ => {
                self.report();
                return;
            }
        };
        match score_of(&event) {
            Ok(score) => {
                let periods = periods_of(event.timestamp, self.settings.config.leaderboard_retention_days);
                self.scores.push(
                    offset,
                    ScoreDelta {
                        offset,
                        event_id: event.scoped_id(),
                        game_id: event.game_id.as_str().to_owned(),
                        player_id: event.player_id.as_str().to_owned(),
                        score,
                        day: periods.day,
                        day_expires_at: periods.day_expires_at,
                        week: periods.week,
                        week_expires_at: periods.week_expires_at,
                    },
                );
                if self.scores.pending_len() >= self.settings.config.logger_flush_events {
                    self.flush_scores(ctx);
                } else if self.live_timer.is_none() && !self.scores.is_sending() {
                    self.live_timer = Some(ctx.run_later(self.settings.live_flush(), |act, ctx| {
                        act.live_timer = None;
                        act.flush_scores(ctx);
                    }));
                }
            }
            Err(reason) => {
                self.settings
                    .metrics
                    .consumer_dlq
                    .with_label_values(&[self.position.service])
                    .inc();
                let original = serde_json::to_value(&event).unwrap_or_default();
                self.boards.push(
                    offset,
                    BoardWork::Dead(DlqEntry {
                        offset,
                        original,
                        reason,
                    }),
                );
                self.scored_since_flush += 1;
                self.after_board_work(ctx);
            }
        }
    }
}

impl Handler<FlushAll> for Leaderboard {
    type Result = ();
    fn handle(&mut self, _: FlushAll, ctx: &mut Context<Self>) {
        self.draining = true;
        self.flush_scores(ctx);
        self.flush_boards(ctx);
    }
}

impl Handler<GetProgress> for Leaderboard {
    type Result = Progress;
    fn handle(&mut self, _: GetProgress, _: &mut Context<Self>) -> Progress {
        Progress {
            applied_next: self.marks.reported_next,
            seen_next: self.marks.seen_next,
        }
    }
}
