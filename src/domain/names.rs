//! Bounded identifiers: player, game and event type names.

use super::ValidationError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest name any of these may be: the `VARCHAR(100)` columns that store them.
pub const MAX_NAME_CHARS: usize = 100;

/// Checks the one rule all names share. Control characters are refused because PostgreSQL
/// cannot store NUL in text, and the rest only ever arrive by mistake or malice.
fn check_name(field: &str, value: &str) -> Result<(), ValidationError> {
    let invalid = |why: &str| {
        ValidationError::field(
            field,
            "invalid_field",
            format!("{field} must be a non-empty string of at most {MAX_NAME_CHARS} characters{why}"),
        )
    };
    if value.trim().is_empty() {
        return Err(invalid(", and is empty"));
    }
    let chars = value.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(invalid(&format!(", and has {chars}")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(", without control characters"));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Accepts a non-empty name of at most 100 characters with no control characters.
            pub fn parse(value: impl Into<String>) -> Result<Self, ValidationError> {
                let value = value.into();
                check_name($field, &value)?;
                Ok(Self(value))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A player's id, as the game knows it; also the Kafka message key.
    PlayerId,
    "player_id"
);
name_type!(
    /// A game's id; leaderboards are per game.
    GameId,
    "game_id"
);
name_type!(
    /// What happened, e.g. `player_score` or `quest_completed`.
    EventType,
    "event_type"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_the_boundaries_and_refuse_past_them() {
        assert!(PlayerId::parse("p").is_ok());
        assert!(
            PlayerId::parse("é".repeat(100)).is_ok(),
            "100 characters, 200 bytes"
        );
        let err = PlayerId::parse("x".repeat(101)).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("player_id"));
        assert!(err.message.contains("has 101"));
        assert!(GameId::parse("").is_err());
        assert!(GameId::parse("   ").is_err());
        assert!(EventType::parse("a\0b").is_err());
    }
}
