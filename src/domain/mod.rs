//! The domain: a `GameEvent` and the small types it is made of, each parsed once at the edge.
//!
//! Handlers and actors only ever hold a `GameEvent` that passed `IngestRequest::parse` (HTTP) or
//! `GameEvent::from_wire` (Kafka), so nothing downstream re-checks a field.

mod event;
pub mod leaderboard;
mod names;

pub use event::{contains_nul, EventLimits, GameEvent, IngestRequest, ALLOWED_FIELDS};
pub use names::{EventType, GameId, PlayerId, MAX_NAME_CHARS};

/// Why an incoming event was refused: which field, which rule, in words a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    /// The offending top-level field, or `None` when the body as a whole is wrong.
    pub field: Option<String>,
    /// A stable machine-readable code, e.g. `invalid_field`, `unknown_field`, `too_large`.
    pub code: &'static str,
    /// What was wrong, for a person.
    pub message: String,
}

impl ValidationError {
    pub(crate) fn field(field: &str, code: &'static str, message: impl Into<String>) -> Self {
        ValidationError {
            field: Some(field.to_owned()),
            code,
            message: message.into(),
        }
    }

    pub(crate) fn body(code: &'static str, message: impl Into<String>) -> Self {
        ValidationError {
            field: None,
            code,
            message: message.into(),
        }
    }
}
