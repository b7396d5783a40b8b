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

use super::forget::{run_forgets, ForgetQueue, Forgetters, Forgetting};
use super::lane::{arm_live, flush_lane, role_actor, send, Lane, LaneOps, RoleCore};
use super::messages::*;
use crate::domain::leaderboard::{periods_of, score_of};
use actix::prelude::*;
use futures::future::LocalBoxFuture;
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

/// Where the top N are written: the PostgreSQL sink, shared by every partition of the process.
pub struct BoardSink {
    /// Writes a lane's batch.
    pub write: Recipient<WriteBoards>,
    /// Starts the write this partition sent, if it waits out the sink's gap.
    pub hurry: Recipient<HurryBoards>,
}

/// The leaderboard-manager role for one partition.
pub struct Leaderboard {
    core: RoleCore,
    pg: BoardSink,
    scores_sink: Recipient<ApplyScores>,
    top_sink: Recipient<ReadTop>,
    forget: Forgetters,
    forgets: ForgetQueue,
    scores: Lane<ScoreDelta>,
    boards: Lane<BoardWork>,
    /// Scoring events applied to Redis since the last board write started.
    scored_since_flush: usize,
    live_timer: Option<SpawnHandle>,
    board_timer: Option<SpawnHandle>,
    /// When the last board write started, for LEADERBOARD_MIN_FLUSH_GAP_MS.
    last_board_flush: Option<Instant>,
    /// The board write in flight was hurried (see [`HurryBoards`]).
    hurried: bool,
}

/// Scores to Redis DB 1, within LIVE_FLUSH_MS.
const SCORES: LaneOps<Leaderboard, ScoreDelta, ScoresApplied> = LaneOps {
    what: "scores to Redis",
    sink: "redis",
    applied: |done, _| done.applied,
    ingested_at: Some(|d| Some(d.ingested_at)),
    lane: |act| &mut act.scores,
    write: |act, deltas| {
        let position = act.core.position.clone();
        send(&act.scores_sink, ApplyScores { position, deltas })
    },
    done: |act, deltas, done, ctx| {
        // The scores lane forgot these offsets in this same callback: they move to the boards
        // lane without a moment in which neither holds them.
        for d in deltas.iter() {
            let work = if done.refused.contains(&d.offset) {
                act.core.settings.rejected("redis", d.offset);
                BoardWork::Dead(DlqEntry {
                    offset: d.offset,
                    // What the leaderboard kept of it; the whole event is in `events` and on
                    // the topic at the row's position.
                    original: serde_json::json!({"game_id": d.game_id, "player_id": d.player_id, "score": d.score}),
                    reason: format!(
                        "Redis refused: a board key of game {} holds data gamemetrics didn't write \
                         (another type); the score was not counted",
                        d.game_id
                    ),
                })
            } else {
                BoardWork::Touched(d.game_id.clone())
            };
            act.boards.push(d.offset, work);
        }
        act.scored_since_flush += deltas.len();
        // Released, though not yet durable: the source may read on.
        act.report();
        act.after_board_work(ctx);
        run_forgets(act, ctx);
        act.flush_scores(ctx);
    },
    again: |act, ctx| act.flush_scores(ctx),
    dead_letter: None,
};

/// The top N of touched boards, and dead letters, to PostgreSQL.
const BOARDS: LaneOps<Leaderboard, BoardWork, ()> = LaneOps {
    what: "leaderboards to PostgreSQL",
    sink: "postgres",
    // A snapshot of Redis: every item is applied, none is a redelivery to skip.
    applied: |(), size| size,
    ingested_at: None,
    lane: |act| &mut act.boards,
    write: |act, work| {
        act.scored_since_flush = 0;
        act.last_board_flush = Some(Instant::now());
        act.hurried = false;
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
        let boards = WriteBoards {
            position: act.core.position.clone(),
            game_ids: games.into_iter().collect(),
            n: act.core.settings.config.leaderboard_top_n,
            reader: act.top_sink.clone(),
            dlq,
            urgent: act.core.marks.draining()
                || act.forgets.waits_on(act.boards.lowest_unapplied())
                || act.held_back(),
        };
        send(&act.pg.write, boards)
    },
    done: |act, _, (), ctx| {
        act.report();
        run_forgets(act, ctx);
        if act.boards.pending_len() > 0 {
            act.after_board_work(ctx);
        }
    },
    again: |act, ctx| act.flush_boards(ctx),
    dead_letter: None,
};

impl Leaderboard {
    /// A leaderboard manager writing boards through `pg`, scores through `scores_sink`,
    /// reading the top N from `top_sink`, and forgetting players through `forget`.
    pub fn new(
        core: RoleCore,
        pg: BoardSink,
        scores_sink: Recipient<ApplyScores>,
        top_sink: Recipient<ReadTop>,
        forget: Forgetters,
    ) -> Self {
        let max_batch = core.settings.config.sink_max_batch;
        Leaderboard {
            core,
            pg,
            scores_sink,
            top_sink,
            forget,
            forgets: ForgetQueue::default(),
            scores: Lane::new(max_batch),
            // One board write rewrites each touched game's top N once, however many of its
            // events it carries: its cost is bounded by the games, not the items, so the lane
            // may carry many more (the cap only bounds a flood of dead letters).
            boards: Lane::new(max_batch.saturating_mul(10)),
            scored_since_flush: 0,
            live_timer: None,
            board_timer: None,
            last_board_flush: None,
            hurried: false,
        }
    }

    fn flush_scores(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.live_timer.take() {
            ctx.cancel_future(t);
        }
        flush_lane(self, ctx, &SCORES);
    }

    fn after_board_work(&mut self, ctx: &mut Context<Self>) {
        let held_back = self.held_back();
        if held_back {
            self.hurry_in_flight();
        }
        let config = &self.core.settings.config;
        let gap = Duration::from_millis(config.leaderboard_min_flush_gap_ms);
        let since_last = self.last_board_flush.map_or(gap, |t| t.elapsed());
        let draining = self.core.marks.draining() || held_back;
        // Scoring events applied since the last write began, or still waiting from before it (a
        // write carries at most the lane's cap): either way, that many boards changes are due.
        let waiting = self.scored_since_flush.max(self.boards.pending_len());
        let due_now = draining
            || waiting >= config.leaderboard_flush_events
            || self.forgets.waits_on(self.boards.lowest_unapplied());
        if due_now {
            // Every 50 scoring events, but not more often than the gap allows: under load a
            // flush per 50 events would rewrite thousands of top-N rows per second.
            let wait = if draining || self.forgets.waits_on(self.boards.lowest_unapplied()) {
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

    /// Half of PARTITION_MAX_UNCOMMITTED waits for a top-N write: in a backlog the source would
    /// soon pause the partition until the write after the gap (a second by default), so the
    /// writes go as fast as PostgreSQL takes them instead. Never at a steady 10,000 events/s,
    /// where a gap holds a few thousand records per partition.
    fn held_back(&self) -> bool {
        let marks = &self.core.marks;
        let bound = self.core.settings.config.partition_max_uncommitted;
        usize::try_from(marks.seen_next - marks.reported_next).is_ok_and(|n| n >= bound / 2)
    }

    fn arm_board_timer(&mut self, wait: Duration, ctx: &mut Context<Self>) {
        self.board_timer = Some(ctx.run_later(wait, |act, ctx| {
            act.board_timer = None;
            act.flush_boards(ctx);
        }));
    }

    /// Somebody waits on the boards lane now: its write in flight may be waiting out the sink's
    /// gap (up to LEADERBOARD_MIN_FLUSH_GAP_MS), and the urgent write after it can't go first.
    fn hurry_boards(&mut self, ctx: &mut Context<Self>) {
        self.hurry_in_flight();
        self.flush_boards(ctx);
    }

    /// Tells the sink, once per write, that the write in flight is waited on.
    fn hurry_in_flight(&mut self) {
        if self.boards.is_sending() && !self.hurried {
            self.hurried = true;
            self.pg.hurry.do_send(HurryBoards);
        }
    }

    fn flush_boards(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.board_timer.take() {
            ctx.cancel_future(t);
        }
        flush_lane(self, ctx, &BOARDS);
    }

    /// Records waiting only for the top-N write hold a game id, not the event: they count for
    /// the durable offset but not against PARTITION_MAX_IN_FLIGHT, so Redis keeps scoring while
    /// PostgreSQL writes the boards (PARTITION_MAX_UNCOMMITTED bounds them).
    fn report(&mut self) {
        self.core.report_split(
            [self.scores.lowest_unapplied()],
            [self.boards.lowest_unapplied(), self.forgets.lowest()],
        );
    }
}

role_actor!(Leaderboard);

impl Forgetting for Leaderboard {
    fn forgets(&mut self) -> &mut ForgetQueue {
        &mut self.forgets
    }

    fn lanes_lowest(&self) -> Option<i64> {
        [self.scores.lowest_unapplied(), self.boards.lowest_unapplied()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Redis first, then the table: a top-N write that read Redis before the player left it
    /// and lands after the table's rows went is followed by the rewrite `removed` queues.
    fn remove(&mut self, player_id: String) -> LocalBoxFuture<'static, Result<Vec<String>, SinkError>> {
        self.forget
            .remove_from_both(player_id, LiveDb::Boards, self.core.settings.role)
    }

    /// The games that held the player get their top N written again, now without them: the
    /// next one moves up, so the table still holds exactly the top N.
    fn removed(&mut self, offset: i64, games: Vec<String>, ctx: &mut Context<Self>) {
        for game in games {
            self.boards.push(offset, BoardWork::Touched(game));
        }
        self.flush_boards(ctx);
    }

    fn report_progress(&mut self) {
        self.report();
    }
}

impl Handler<Consumed> for Leaderboard {
    type Result = ();

    fn handle(&mut self, msg: Consumed, ctx: &mut Context<Self>) {
        let offset = msg.record.offset;
        self.core.marks.seen_next = offset + 1;
        let event = match msg.record.payload {
            Payload::Event(e) if self.core.settings.drops_event(&e) => {
                self.report();
                return;
            }
            Payload::Event(e) if self.core.settings.scoring.contains(e.event_type.as_str()) => e,
            Payload::Forget { player_id } => {
                self.core.settings.forgotten.extend([player_id.clone()]);
                self.forgets.push(offset, player_id);
                self.flush_scores(ctx);
                self.hurry_boards(ctx);
                run_forgets(self, ctx);
                return;
            }
            // Not a scoring event, or poison (the logger's to dead-letter): nothing to do.
            _ => {
                self.report();
                return;
            }
        };
        match score_of(&event) {
            Ok(score) => {
                let periods = periods_of(
                    event.timestamp,
                    self.core.settings.config.leaderboard_retention_days,
                );
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
                        ingested_at: event.ingested_at,
                    },
                );
                arm_live(
                    self,
                    ctx,
                    |a| &mut a.scores,
                    |a| &mut a.live_timer,
                    Self::flush_scores,
                );
            }
            Err(reason) => {
                self.core
                    .settings
                    .metrics
                    .consumer_dlq
                    .with_label_values(&[self.core.position.service])
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
        self.core.marks.drain();
        self.flush_scores(ctx);
        self.hurry_boards(ctx);
    }
}
