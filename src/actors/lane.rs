//! `Lane`: one ordered stream of writes from a role actor to one sink.
//!
//! Records wait in `pending`; at most one batch is in flight, so a partition's writes reach a
//! sink in offset order (the sinks' offset guards depend on it). A failed batch stays in flight
//! and is sent again, unchanged, after a backoff: it is never dropped.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Pending records for one sink and the batch currently being written.
pub struct Lane<T> {
    pending: Vec<T>,
    pending_from: Option<i64>,
    in_flight: Option<(Arc<Vec<T>>, i64)>,
    sending: bool,
    failures: u32,
    /// After a failure, no resend before this instant, whatever triggers a flush meanwhile.
    retry_at: Option<Instant>,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Lane {
            pending: Vec::new(),
            pending_from: None,
            in_flight: None,
            sending: false,
            failures: 0,
            retry_at: None,
        }
    }
}

impl<T> Lane<T> {
    /// Queues a record read at `offset`.
    pub fn push(&mut self, offset: i64, item: T) {
        // The minimum, not the first: a lane may be fed out of offset order (the leaderboard's
        // board lane gets dead letters at read time and touched boards after Redis applied).
        self.pending_from = Some(self.pending_from.map_or(offset, |f| f.min(offset)));
        self.pending.push(item);
    }

    /// Records waiting for the next batch.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The batch to send now: the failed one again (once its backoff has passed), or the
    /// pending records; `None` while a batch is being sent or when there is nothing to send.
    pub fn take(&mut self) -> Option<Arc<Vec<T>>> {
        if self.sending || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        if self.in_flight.is_none() {
            let from = self.pending_from.take()?;
            self.in_flight = Some((Arc::new(std::mem::take(&mut self.pending)), from));
        }
        self.sending = true;
        self.in_flight.as_ref().map(|(batch, _)| batch.clone())
    }

    /// The in-flight batch is durable.
    pub fn succeeded(&mut self) {
        self.in_flight = None;
        self.sending = false;
        self.failures = 0;
        self.retry_at = None;
    }

    /// The in-flight batch failed; it stays to be retried. Returns the backoff before retrying.
    pub fn failed(&mut self, max_backoff: Duration) -> Duration {
        self.sending = false;
        self.failures = self.failures.saturating_add(1);
        let exp = 50u64.saturating_mul(1u64 << self.failures.min(16));
        let wait = Duration::from_millis(exp).min(max_backoff);
        self.retry_at = Some(Instant::now() + wait);
        wait
    }

    /// The lowest offset this lane has not yet made durable, if any. Both the in-flight batch
    /// and the pending records count: a lane fed out of offset order can hold lower offsets in
    /// `pending` than in flight.
    pub fn lowest_unapplied(&self) -> Option<i64> {
        let in_flight = self.in_flight.as_ref().map(|(_, from)| *from);
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

/// Offset bookkeeping every role actor shares: what it has seen and reported as applied.
#[derive(Debug, Default)]
pub struct Watermarks {
    pub seen_next: i64,
    pub reported_next: i64,
}

impl Watermarks {
    /// The durable offset given the lanes' lowest unapplied offsets; reports it when it moved.
    pub fn advance(&mut self, lowest: impl IntoIterator<Item = Option<i64>>) -> Option<i64> {
        let durable = lowest.into_iter().flatten().min().unwrap_or(self.seen_next);
        (durable > self.reported_next).then(|| {
            self.reported_next = durable;
            durable
        })
    }
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
            reported_next: 0,
        };
        assert_eq!(w.advance([Some(12), None]), Some(12));
        assert_eq!(w.advance([Some(12)]), None);
        assert_eq!(w.advance([None, None]), Some(20));
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
