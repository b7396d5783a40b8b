//! Sinks: the only actors that talk to PostgreSQL and Redis. Both run under an actix
//! `Supervisor`: a sink that stops (after repeated failures) is restarted with fresh state,
//! and the role actor that was waiting re-sends its batch.
//!
//! Every write is idempotent: the event, stats and score writes carry the Kafka offsets of their
//! records and apply, in one transaction or one Lua script, only the records at or above the
//! offset stored beside the data; the top-N write is a snapshot of Redis, harmless to repeat.

pub mod postgres;
pub mod redis;

use actix::prelude::*;
use std::future::Future;
use std::time::Duration;

/// Consecutive failures after which a sink stops itself to be restarted by its supervisor.
const RESTART_AFTER_FAILURES: u32 = 5;

pub use super::messages::SinkError;

/// The longest one sink write may take before it counts as failed and is retried. Without it a
/// half-open connection during an outage would hold a partition's lane forever; the offset
/// guards make a write that still lands afterwards harmless.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a sink waits for a pooled connection before reporting a transient failure.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// `sink_actor!(Type, "Store"[, restarting: |sink| ...])`: the `Actor` (mailbox bounded at 256:
/// writes are small and concurrent per partition, and a deep mailbox only hides a stall),
/// [`Tracked`] and `Supervised` impls both sinks share, for a type with a `failures: u32` field;
/// `restarting` drops state that work cut short by a restart left behind.
macro_rules! sink_actor {
    ($t:ty, $store:literal) => {
        $crate::actors::sinks::sink_actor!($t, $store, restarting: |_: &mut $t| {});
    };
    ($t:ty, $store:literal, restarting: $hook:expr) => {
        impl Actor for $t {
            type Context = Context<Self>;
            fn started(&mut self, ctx: &mut Context<Self>) {
                ctx.set_mailbox_capacity(256);
            }
        }

        impl $crate::actors::sinks::Tracked for $t {
            const STORE: &'static str = $store;
            fn failures(&mut self) -> &mut u32 {
                &mut self.failures
            }
        }

        impl Supervised for $t {
            fn restarting(&mut self, _: &mut Context<Self>) {
                tracing::warn!(store = $store, "sink restarting");
                self.failures = 0;
                ($hook)(self);
            }
        }
    };
}
pub(crate) use sink_actor;

/// A sink that counts its consecutive failed writes.
pub trait Tracked: Actor<Context = Context<Self>> {
    /// The store's name, for logs.
    const STORE: &'static str;
    /// The counter of consecutive failures.
    fn failures(&mut self) -> &mut u32;
}

/// Runs a write as the sink's response, counting failures; after RESTART_AFTER_FAILURES in a row
/// the sink stops so its supervisor starts it afresh (dropping whatever state the failures left).
pub fn tracked<A, T>(
    sink: &A,
    write: impl Future<Output = Result<T, SinkError>> + 'static,
) -> ResponseActFuture<A, Result<T, SinkError>>
where
    A: Tracked,
    T: 'static,
{
    let write = async move {
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(res) => res,
            Err(_) => Err(SinkError::Timeout {
                store: A::STORE,
                after: WRITE_TIMEOUT,
            }),
        }
    };
    Box::pin(write.into_actor(sink).map(|res, sink, ctx| {
        match &res {
            Ok(_) => *sink.failures() = 0,
            // The store answered, and refused what it was sent: the sink is healthy.
            Err(e) if e.is_rejected() => {}
            Err(e) => {
                let failures = sink.failures();
                *failures += 1;
                let n = *failures;
                tracing::warn!(store = A::STORE, error = %e, failures = n, "sink write failed; the batch will be retried");
                if n >= RESTART_AFTER_FAILURES {
                    ctx.stop();
                }
            }
        }
        res
    }))
}
