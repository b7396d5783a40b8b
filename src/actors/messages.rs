//! Messages between actors. Every message has named fields; results say what the sender waits for.

use crate::domain::GameEvent;
use actix::prelude::*;
use serde_json::Value;
use std::sync::Arc;

/// Where a batch came from: the consumer service (the seed's name), topic, the topic's log and
/// partition. Sinks key their stored offsets by it.
#[derive(Debug, Clone)]
pub struct Position {
    pub service: &'static str,
    pub topic: Arc<str>,
    /// The topic's id ([`crate::kafka::TopicId`]): a topic created again under the same name is
    /// another log whose offsets start over, so every stored offset is kept per log.
    pub log: Arc<str>,
    pub partition: i32,
}

/// One Kafka record after parsing: an event, or the reason it can never be one.
#[derive(Debug, Clone)]
pub enum Payload {
    Event(GameEvent),
    Poison { original: Value, reason: String },
}

/// A parsed record and its offset.
#[derive(Debug, Clone)]
pub struct Record {
    pub offset: i64,
    pub payload: Payload,
}

/// Source → role actor: the next record of the partition, in offset order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Consumed {
    pub record: Record,
}

/// Role actor → source: every record below `next_offset` is durably applied.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Applied {
    /// The log the offset belongs to: a source that moved to a new log ignores the old one's.
    pub log: Arc<str>,
    pub next_offset: i64,
}

/// Flush every buffer now, whatever its size or timer (shutdown and tests).
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct FlushAll;

/// Asks a role actor how far it has durably applied and how far it has read.
#[derive(Message, Clone, Copy)]
#[rtype(result = "Progress")]
pub struct GetProgress;

/// The answer to [`GetProgress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub struct Progress {
    /// Every record below this offset is durable.
    pub applied_next: i64,
    /// One past the last record received.
    pub seen_next: i64,
}

impl Progress {
    /// True when everything received has been applied.
    pub fn settled(&self) -> bool {
        self.applied_next >= self.seen_next
    }
}

/// A dead-letter entry: a record that can never be applied, and why.
#[derive(Debug, Clone)]
pub struct DlqEntry {
    pub offset: i64,
    pub original: Value,
    pub reason: String,
}
