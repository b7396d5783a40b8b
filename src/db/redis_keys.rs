//! Every Redis key gamemetrics reads or writes, built in one place. `REDIS_KEY_PREFIX` comes
//! first in each; the Lua scripts get their keys, or the prefixes and suffixes they complete
//! keys with, from here.
//!
//! | key | DB | holds |
//! |---|---|---|
//! | `player_stats:{player}` | 0 | the seed's per-player hash |
//! | `leaderboard:{game}:{daily\|weekly\|alltime}` | 1 | a current board |
//! | `leaderboard:{game}:{daily\|weekly}:{stamp}` | 1 | a dated board (`2024-01-15`, `2024-W03`) |
//! | `leaderboard:{game}:{daily\|weekly}:current` | 1 | the stamp the current board holds |
//! | `gamemetrics:seen:{generation}:{bucket}` | 0 and 1 | retry claims: a hash from event id (16 bytes) to where it was first seen |
//! | `gamemetrics:offsets:{service}:{topic}:{partition}:{log}` | 0 or 1 | a partition's applied offset |
//! | `gamemetrics:log:{service}:{topic}:{partition}` | 0 or 1 | the log last opened |

use super::PartitionLog;
use crate::domain::leaderboard::{Board, Period};
use std::sync::Arc;

/// Between a board's key and its dated boards' stamps.
pub const DATED_SEPARATOR: &str = ":";
/// After a current daily or weekly board's key: the key of the stamp it holds.
pub const CURRENT_MARKER_SUFFIX: &str = ":current";

/// Builds keys under one prefix. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisKeys {
    prefix: Arc<str>,
}

impl RedisKeys {
    /// Keys under `prefix` (`REDIS_KEY_PREFIX`; may be empty).
    pub fn new(prefix: &str) -> Self {
        RedisKeys {
            prefix: prefix.into(),
        }
    }

    /// `player_stats:{player}`.
    pub fn player_stats(&self, player: &str) -> String {
        format!("{}{player}", self.player_stats_prefix())
    }

    /// What a player id completes into its stats key (for the stats script).
    pub fn player_stats_prefix(&self) -> String {
        format!("{}player_stats:", self.prefix)
    }

    /// `leaderboard:{game}`: what a board's suffix completes (for the scores script).
    pub fn board_base(&self, game: &str) -> String {
        format!("{}leaderboard:{game}", self.prefix)
    }

    /// A current board's suffix after [`Self::board_base`]: `:daily`, `:weekly`, `:alltime`.
    pub fn period_suffix(period: Period) -> String {
        format!("{DATED_SEPARATOR}{period}")
    }

    /// The key of one of a game's boards.
    pub fn board(&self, game: &str, board: &Board) -> String {
        let current = format!("{}{}", self.board_base(game), Self::period_suffix(board.period()));
        match board {
            Board::Current(_) => current,
            Board::Dated(_, stamp) => format!("{current}{DATED_SEPARATOR}{stamp}"),
        }
    }

    /// What a bucket number completes into a retry-claim hash of one generation:
    /// `gamemetrics:seen:{generation}:`.
    pub fn claims_of(&self, generation: u64) -> String {
        format!("{}gamemetrics:seen:{generation}:", self.prefix)
    }

    /// A partition's offsets before they were kept per log; the key of a log's own is this,
    /// `:` and the log.
    pub fn legacy_offsets(&self, o: PartitionLog<'_>) -> String {
        format!(
            "{}gamemetrics:offsets:{}:{}:{}",
            self.prefix, o.service, o.topic, o.partition
        )
    }

    /// The offset a consumer has applied up to in one log of one partition.
    pub fn offsets(&self, o: PartitionLog<'_>) -> String {
        format!("{}:{}", self.legacy_offsets(o), o.log)
    }

    /// The log a partition was last opened on.
    pub fn last_log(&self, o: PartitionLog<'_>) -> String {
        format!(
            "{}gamemetrics:log:{}:{}:{}",
            self.prefix, o.service, o.topic, o.partition
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_seeds_names_under_the_prefix() {
        let k = RedisKeys::new("t:");
        assert_eq!(k.player_stats("p1"), "t:player_stats:p1");
        assert_eq!(
            k.board("g", &Board::Current(Period::Alltime)),
            "t:leaderboard:g:alltime"
        );
        assert_eq!(
            k.board("g", &Board::Dated(Period::Daily, "2024-01-15".into())),
            "t:leaderboard:g:daily:2024-01-15"
        );
        let o = PartitionLog {
            service: "s",
            topic: "t",
            partition: 2,
            log: "L",
        };
        assert_eq!(k.offsets(o), "t:gamemetrics:offsets:s:t:2:L");
    }
}
