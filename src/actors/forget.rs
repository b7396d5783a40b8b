//! Forgetting a player, as the role actors see it. `gamemetrics players forget` writes a
//! tombstone and then a forget record to the player's partition (the key is the player, so it
//! lands behind every event of theirs accepted before it). A role actor that reads it drops the
//! player's records from then on ([`Forgotten`]), waits until every record before it is durable,
//! and removes the player from its stores ([`ForgetQueue`], [`run_forgets`]); only then does its
//! offset move past it. Removing is idempotent, so a forget record read again after a crash just
//! runs again; the player's records read again are dropped, because the tombstone, written
//! before the record, is loaded when a partition opens. See docs/operations.md.

use super::lane::RoleActor;
use super::messages::{Payload, SinkError};
use actix::prelude::*;
use futures::future::LocalBoxFuture;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// Where a role actor removes a forgotten player: the sinks of its process.
#[derive(Clone)]
pub struct Forgetters {
    pub pg: Recipient<super::messages::ForgetInPg>,
    pub redis: Recipient<super::messages::ForgetInRedis>,
}

/// Times one step of a forget in Redis is sent before the forget counts as failed (and starts
/// over after its backoff): a busy Redis costs a step a retry, not the steps done before it.
const STEP_ATTEMPTS: u32 = 5;

impl Forgetters {
    /// A role's removal of `player_id` from both its stores: Redis (`db`, step by step) first,
    /// then PostgreSQL. Answers the games whose stored top N lost the player (the
    /// leaderboard's; none for stats).
    pub fn remove_from_both(
        &self,
        player_id: String,
        db: super::messages::LiveDb,
        role: super::Role,
    ) -> LocalBoxFuture<'static, Result<Vec<String>, SinkError>> {
        let (redis, pg) = (self.redis.clone(), self.pg.clone());
        Box::pin(async move {
            let mut games = Vec::new();
            let mut from = Some(crate::db::ScanCursor::default());
            while let Some(at) = from {
                let mut attempt = 1;
                let step = loop {
                    let step = redis
                        .send(super::messages::ForgetInRedis {
                            player_id: player_id.clone(),
                            db,
                            from: at.clone(),
                        })
                        .await
                        .map_err(SinkError::from)
                        .and_then(|r| r);
                    match step {
                        Err(e) if attempt < STEP_ATTEMPTS && !e.is_rejected() => {
                            tracing::warn!(player_id = %player_id, attempt, error = %e, "a step of forgetting a player in Redis failed; it will be sent again");
                            tokio::time::sleep(super::lane::backoff(
                                Duration::from_millis(200),
                                attempt,
                                Duration::MAX,
                            ))
                            .await;
                            attempt += 1;
                        }
                        step => break step?,
                    }
                };
                games.extend(step.games);
                from = step.next;
            }
            games.extend(pg.send(super::messages::ForgetInPg { player_id, role }).await??);
            games.sort_unstable();
            games.dedup();
            Ok(games)
        })
    }
}

/// The forgotten player ids, shared by every partition actor of a role process.
#[derive(Clone, Default)]
pub struct Forgotten(Arc<RwLock<HashSet<String>>>);

impl Forgotten {
    /// Whether `player` was forgotten.
    pub fn contains(&self, player: &str) -> bool {
        let set = self.0.read().unwrap_or_else(|p| p.into_inner());
        !set.is_empty() && set.contains(player)
    }

    /// Adds forgotten ids.
    pub fn extend(&self, players: impl IntoIterator<Item = String>) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).extend(players);
    }

    /// Whether a record must be dropped: an event of a forgotten player, or a record that
    /// isn't one (a dead letter to be) but names one.
    pub fn drops(&self, payload: &Payload) -> bool {
        match payload {
            Payload::Event(e) => self.contains(e.player_id.as_str()),
            Payload::Poison { original, .. } => original
                .get("player_id")
                .and_then(|p| p.as_str())
                .is_some_and(|p| self.contains(p)),
            Payload::NotForUs | Payload::Forget { .. } => false,
        }
    }
}

/// Forget records of one partition waiting for the records before them to be durable, oldest
/// first; the front one may be running.
#[derive(Default)]
pub struct ForgetQueue {
    queue: VecDeque<(i64, String)>,
    running: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

impl ForgetQueue {
    /// Queues the forget record read at `offset`.
    pub fn push(&mut self, offset: i64, player: String) {
        self.queue.push_back((offset, player));
    }

    /// The offset of the oldest forget not yet done: the partition is durable only below it.
    pub fn lowest(&self) -> Option<i64> {
        self.queue.front().map(|(o, _)| *o)
    }

    /// True when a lane whose lowest unapplied offset is `lowest` holds records a waiting
    /// forget must see durable first: that lane should write now, not at its next timer.
    pub fn waits_on(&self, lowest: Option<i64>) -> bool {
        matches!((self.lowest(), lowest), (Some(f), Some(l)) if l < f)
    }

    /// The forget to run now: the oldest, once nothing below it is unapplied (`lanes_lowest`,
    /// the lanes' lowest unapplied offset) and no run or backoff is under way.
    fn ready(&mut self, lanes_lowest: Option<i64>) -> Option<(i64, String)> {
        if self.running || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        let (offset, player) = self.queue.front()?;
        if lanes_lowest.is_some_and(|l| l < *offset) {
            return None;
        }
        self.running = true;
        Some((*offset, player.clone()))
    }
}

/// What a role actor does to forget a player.
pub trait Forgetting: RoleActor {
    /// Its queue of forget records.
    fn forgets(&mut self) -> &mut ForgetQueue;
    /// The lowest offset its lanes have not made durable.
    fn lanes_lowest(&self) -> Option<i64>;
    /// Removes `player` from the role's stores; answers the games whose top N must be written
    /// again (the leaderboard's).
    fn remove(&mut self, player: String) -> LocalBoxFuture<'static, Result<Vec<String>, SinkError>>;
    /// The removal of the forget record at `offset` is durable: queue what follows from it.
    fn removed(&mut self, offset: i64, games: Vec<String>, ctx: &mut Context<Self>);
    /// Reports the durable offset (the forget queue is part of it).
    fn report_progress(&mut self);
}

/// Runs the oldest waiting forget if its turn has come; on success the next one, on failure
/// again after a backoff.
pub fn run_forgets<A: Forgetting>(act: &mut A, ctx: &mut Context<A>) {
    let lanes_lowest = act.lanes_lowest();
    let Some((offset, player)) = act.forgets().ready(lanes_lowest) else {
        return;
    };
    let (service, partition) = (act.core().position.service, act.core().position.partition);
    tracing::info!(service, partition, offset, player_id = %player, "forgetting a player");
    let removal = act.remove(player);
    ctx.spawn(removal.into_actor(act).map(move |res, act, ctx| {
        let retry_max = act.core().settings.retry_max;
        let queue = act.forgets();
        queue.running = false;
        match res {
            Ok(games) => {
                queue.failures = 0;
                queue.retry_at = None;
                // Whatever the removal queued is in the lanes before the forget leaves the
                // queue: the durable offset never passes it in between.
                act.removed(offset, games, ctx);
                act.forgets().queue.pop_front();
                act.report_progress();
                run_forgets(act, ctx);
            }
            Err(e) => {
                queue.failures = queue.failures.saturating_add(1);
                let wait = super::lane::backoff(Duration::from_millis(100), queue.failures.min(10), retry_max);
                queue.retry_at = Some(Instant::now() + wait);
                tracing::warn!(service, partition, offset, error = %e, retry_in = ?wait, "forgetting a player failed; it will be retried");
                ctx.run_later(wait, run_forgets);
            }
        }
    }));
}
