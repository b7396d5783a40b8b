//! Every Redis key gamemetrics reads or writes, built in one place. `REDIS_KEY_PREFIX` comes
//! first in each; the Lua scripts get their keys, or the prefixes and suffixes they complete
//! keys with, from here. The full list, for a single Redis and for a Redis Cluster, is in
//! docs/redis-keys.md.
//!
//! On a single Redis the seed's names are used as they are (`player_stats:p1` in DB 0,
//! `leaderboard:g1:daily` in DB 1). On a Redis Cluster ([`Layout::Cluster`]) a script may only
//! touch keys of one slot, so the seed's placeholders become hash tags, literally
//! (`player_stats:{p1}`, `leaderboard:{g1}:daily`); a batch is applied one player (stats) or
//! one game (boards) at a time, each call guarded by that player's or game's own offset, with
//! retry claims kept per player or game; keys that DB 0 and DB 1 kept apart carry the store
//! (`stats`, `boards`) instead. An id is its own hash tag, except one starting with `}` or `~`
//! (which would end the tag at once, or be mistaken for one that did): it gets a `~` in front,
//! `{~}x}`, so every key of it still shares one slot and no two ids share a key.

use super::PartitionLog;
use crate::domain::leaderboard::{Board, Period};
use std::sync::Arc;

/// Between a board's key and its dated boards' stamps.
pub const DATED_SEPARATOR: &str = ":";
/// After a current daily or weekly board's key: the key of the stamp it holds.
pub const CURRENT_MARKER_SUFFIX: &str = ":current";

/// Which kind of Redis the keys are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A single Redis: the seed's names, stats in DB 0 and boards in DB 1.
    Single,
    /// A Redis Cluster: hash-tagged names, all in DB 0.
    Cluster,
}

/// Which of the two live stores a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// Player stats (DB 0 of a single Redis).
    Stats,
    /// Leaderboards (DB 1 of a single Redis).
    Boards,
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Store::Stats => "stats",
            Store::Boards => "boards",
        }
    }
}

/// Builds keys under one prefix. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisKeys {
    prefix: Arc<str>,
    layout: Layout,
}

impl RedisKeys {
    /// Keys under `prefix` (`REDIS_KEY_PREFIX`; may be empty) for a single Redis.
    pub fn new(prefix: &str) -> Self {
        Self::with_layout(prefix, Layout::Single)
    }

    /// Keys under `prefix` for the kind of Redis `layout` says.
    pub fn with_layout(prefix: &str, layout: Layout) -> Self {
        RedisKeys {
            prefix: prefix.into(),
            layout,
        }
    }

    /// The keys the Redis configuration calls for.
    pub fn for_config(cfg: &crate::config::RedisConfig) -> Self {
        let layout = if cfg.redis_cluster {
            Layout::Cluster
        } else {
            Layout::Single
        };
        Self::with_layout(&cfg.redis_key_prefix, layout)
    }

    /// Which kind of Redis these keys are for.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// An id as it appears in its keys: itself on a single Redis, a hash tag on a cluster.
    fn id(&self, id: &str) -> String {
        let (open, close) = self.tag_marks(id);
        format!("{open}{id}{close}")
    }

    /// `player_stats:{player}`.
    pub fn player_stats(&self, player: &str) -> String {
        let (before, after) = self.player_stats_affixes(player);
        format!("{before}{player}{after}")
    }

    /// What comes before and after `player` in its stats key (for the stats script, which
    /// completes the keys of a call's players from these).
    pub fn player_stats_affixes(&self, player: &str) -> (String, &'static str) {
        let (open, close) = self.tag_marks(player);
        (format!("{}player_stats:{open}", self.prefix), close)
    }

    /// What surrounds an id in its keys: nothing on a single Redis; braces on a cluster, with
    /// a `~` first for an id that starts with `}` or `~`.
    fn tag_marks(&self, id: &str) -> (&'static str, &'static str) {
        match self.layout {
            Layout::Single => ("", ""),
            Layout::Cluster if id.starts_with(['}', '~']) => ("{~", "}"),
            Layout::Cluster => ("{", "}"),
        }
    }

    /// `leaderboard:{game}`: what a board's suffix completes (for the scores script).
    pub fn board_base(&self, game: &str) -> String {
        format!("{}leaderboard:{}", self.prefix, self.id(game))
    }

    /// A current board's suffix after [`Self::board_base`]: `:daily`, `:weekly`, `:alltime`.
    pub fn period_suffix(period: Period) -> String {
        format!("{DATED_SEPARATOR}{period}")
    }

    /// The key naming the period a game's current daily or weekly board holds.
    pub fn board_marker(&self, game: &str, period: Period) -> String {
        format!(
            "{}{CURRENT_MARKER_SUFFIX}",
            self.board(game, &Board::Current(period))
        )
    }

    /// The key of one of a game's boards.
    pub fn board(&self, game: &str, board: &Board) -> String {
        let current = format!("{}{}", self.board_base(game), Self::period_suffix(board.period()));
        match board {
            Board::Current(_) => current,
            Board::Dated(_, stamp) => format!("{current}{DATED_SEPARATOR}{stamp}"),
        }
    }

    /// How many hashes one generation of `store`'s retry claims of one tag is spread over, with
    /// DEDUP_BUCKETS at `configured`: all of them on a single Redis; on a cluster one per player
    /// (a player's claims are few) and a 64th per game (a game's may be most of the traffic).
    pub fn claim_buckets(&self, store: Store, configured: u32) -> u32 {
        let configured = configured.clamp(1, 1 << 24);
        match (self.layout, store) {
            (Layout::Single, _) => configured,
            (Layout::Cluster, Store::Stats) => 1,
            (Layout::Cluster, Store::Boards) => (configured / 64).max(1),
        }
    }

    /// The bucket of a claim, from the id's first three bytes, as the scripts' `first()` picks it.
    pub fn claim_bucket(id: &uuid::Uuid, buckets: u32) -> u32 {
        let b = id.as_bytes();
        (u32::from(b[0]) * 65_536 + u32::from(b[1]) * 256 + u32::from(b[2])) % buckets.max(1)
    }

    /// The `SCAN MATCH` pattern of every key under the prefix that starts with `what`.
    pub fn pattern(&self, what: &str) -> String {
        format!("{}{what}*", glob_escape(&self.prefix))
    }

    /// The `SCAN MATCH` pattern of every board key of one game, current and dated, and its
    /// current boards' stamp markers; it also matches another game whose id continues this
    /// one's after a `:` (`g1:eu`), which [`Self::is_board_of`] tells apart.
    pub fn game_boards_pattern(&self, game: &str) -> String {
        format!("{}{DATED_SEPARATOR}*", glob_escape(&self.board_base(game)))
    }

    /// Whether `key` is one of `game`'s boards or markers: `:alltime`, `:daily`, `:weekly`,
    /// and the latter two followed by `:current` or a stamp.
    pub fn is_board_of(&self, game: &str, key: &str) -> bool {
        let Some(rest) = key
            .strip_prefix(self.board_base(game).as_str())
            .and_then(|r| r.strip_prefix(DATED_SEPARATOR))
        else {
            return false;
        };
        let (period, tail) = rest.split_once(DATED_SEPARATOR).unwrap_or((rest, ""));
        let stamp = |t: &str| t.len() >= 8 && t.bytes().all(|b| b.is_ascii_digit() || b == b'-' || b == b'W');
        match period {
            "alltime" => tail.is_empty(),
            "daily" | "weekly" => tail.is_empty() || tail == "current" || stamp(tail),
            _ => false,
        }
    }

    /// A `SCAN MATCH` pattern for every board key, current and dated (and the current boards'
    /// stamp markers, which are strings: scan with `TYPE zset`).
    pub fn board_pattern(&self) -> String {
        self.pattern("leaderboard:")
    }

    /// The game of a current board's key (`leaderboard:g1:daily` → `g1`); `None` for a dated
    /// board or any other key.
    pub fn game_of_current_board(&self, key: &str) -> Option<String> {
        let rest = key.strip_prefix(&*self.prefix)?.strip_prefix("leaderboard:")?;
        let id = Period::ALL
            .iter()
            .find_map(|p| rest.strip_suffix(&Self::period_suffix(*p)))?;
        match self.layout {
            Layout::Single => Some(id.to_owned()),
            Layout::Cluster => {
                let inner = id.strip_prefix('{')?.strip_suffix('}')?;
                let game = inner
                    .strip_prefix('~')
                    .filter(|g| g.starts_with(['}', '~']))
                    .unwrap_or(inner);
                (self.id(game) == id).then(|| game.to_owned())
            }
        }
    }

    /// What a bucket number completes into a retry-claim hash of one generation:
    /// `gamemetrics:seen:{generation}:` on a single Redis (one per DB), and
    /// `gamemetrics:seen:{store}:{tag}:{generation}:` on a cluster, where `tag` is the player
    /// (stats) or game (boards) the claims are kept with.
    pub fn claims_of(&self, store: Store, tag: &str, generation: u64) -> String {
        match self.layout {
            Layout::Single => format!("{}gamemetrics:seen:{generation}:", self.prefix),
            Layout::Cluster => format!(
                "{}gamemetrics:seen:{}:{}:{generation}:",
                self.prefix,
                store.name(),
                self.id(tag)
            ),
        }
    }

    /// On a cluster, the hash of how far a partition is applied for one player (stats) or game
    /// (boards), and its field for `o`; on a single Redis, the partition's offset key and no
    /// field (`""`).
    pub fn guard(&self, store: Store, tag: &str, o: PartitionLog<'_>) -> (String, String) {
        match self.layout {
            Layout::Single => (self.offsets(o), String::new()),
            Layout::Cluster => (
                format!(
                    "{}gamemetrics:applied:{}:{}",
                    self.prefix,
                    store.name(),
                    self.id(tag)
                ),
                format!("{}:{}:{}:{}", o.service, o.topic, o.partition, o.log),
            ),
        }
    }

    fn partition_id(&self, o: PartitionLog<'_>) -> String {
        self.id(&format!("{}:{}:{}", o.service, o.topic, o.partition))
    }

    /// A partition's offsets before they were kept per log; the key of a log's own is this,
    /// `:` and the log.
    pub fn legacy_offsets(&self, o: PartitionLog<'_>) -> String {
        format!("{}gamemetrics:offsets:{}", self.prefix, self.partition_id(o))
    }

    /// The offset a consumer has applied up to in one log of one partition.
    pub fn offsets(&self, o: PartitionLog<'_>) -> String {
        format!("{}:{}", self.legacy_offsets(o), o.log)
    }

    /// Set while `gamemetrics rebuild redis` rebuilds `store`: the role writing it doesn't open
    /// a partition then.
    pub fn rebuilding(&self, store: Store) -> String {
        format!("{}gamemetrics:rebuilding:{}", self.prefix, store.name())
    }

    /// The log a partition was last opened on.
    pub fn last_log(&self, o: PartitionLog<'_>) -> String {
        format!("{}gamemetrics:log:{}", self.prefix, self.partition_id(o))
    }
}

/// `s` with the characters `SCAN MATCH` treats as a pattern escaped.
fn glob_escape(s: &str) -> String {
    let mut escaped = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_current_boards_key_names_its_game_and_a_dated_one_none() {
        for layout in [Layout::Single, Layout::Cluster] {
            let keys = RedisKeys::with_layout("p*:", layout);
            for game in ["g1", "a:daily", "}x", "~y", "{z}"] {
                for period in Period::ALL {
                    let current = keys.board(game, &Board::Current(period));
                    assert_eq!(
                        keys.game_of_current_board(&current).as_deref(),
                        Some(game),
                        "{current}"
                    );
                }
                let dated = keys.board(game, &Board::Dated(Period::Daily, "2024-01-15".into()));
                assert_eq!(keys.game_of_current_board(&dated), None, "{dated}");
            }
            assert_eq!(keys.board_pattern(), "p\\*:leaderboard:*");
            let own = keys.board("g1", &Board::Dated(Period::Weekly, "2024-W03".into()));
            let other = keys.board("g1:eu", &Board::Current(Period::Daily));
            assert!(
                keys.is_board_of("g1", &own) && !keys.is_board_of("g1", &other),
                "{other}"
            );
        }
    }

    /// Log `L` of partition `partition` of topic `t`, as service `s` reads it.
    fn log(partition: i32) -> PartitionLog<'static> {
        PartitionLog {
            service: "s",
            topic: "t",
            partition,
            log: "L",
        }
    }

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
        let o = log(2);
        assert_eq!(k.offsets(o), "t:gamemetrics:offsets:s:t:2:L");
        assert_eq!(k.guard(Store::Stats, "p1", o), (k.offsets(o), String::new()));
    }

    #[test]
    fn cluster_keys_tag_the_seeds_placeholders() {
        let k = RedisKeys::with_layout("t:", Layout::Cluster);
        assert_eq!(k.player_stats("p1"), "t:player_stats:{p1}");
        assert_eq!(
            k.board("g", &Board::Dated(Period::Daily, "2024-01-15".into())),
            "t:leaderboard:{g}:daily:2024-01-15"
        );
        let o = log(2);
        assert_eq!(k.offsets(o), "t:gamemetrics:offsets:{s:t:2}:L");
        assert_eq!(k.last_log(o), "t:gamemetrics:log:{s:t:2}");
        assert_eq!(
            k.guard(Store::Boards, "g", o),
            ("t:gamemetrics:applied:boards:{g}".into(), "s:t:2:L".into())
        );
        assert_eq!(
            k.claims_of(Store::Stats, "p1", 9),
            "t:gamemetrics:seen:stats:{p1}:9:"
        );
    }

    /// Redis's rule: the tag is what lies between the first `{` and the next `}`, if not empty.
    fn tag(key: &str) -> &str {
        key.find('{')
            .and_then(|open| {
                let rest = &key[open + 1..];
                rest.find('}')
                    .filter(|&close| close > 0)
                    .map(|close| &rest[..close])
            })
            .unwrap_or(key)
    }

    #[test]
    fn every_key_of_an_id_shares_its_slot_and_ids_never_share_a_key() {
        let k = RedisKeys::with_layout("", Layout::Cluster);
        let o = log(0);
        let ids = ["p1", "}p", "~}p", "~p", "a}b", "{x}", "{", "}", "~"];
        let mut stats_keys = std::collections::HashSet::new();
        for id in ids {
            let stats = k.player_stats(id);
            assert!(
                !tag(&stats).is_empty() && tag(&stats) != stats,
                "{stats} has a tag"
            );
            assert_eq!(tag(&stats), tag(&k.guard(Store::Stats, id, o).0), "{id}");
            assert_eq!(tag(&stats), tag(&k.claims_of(Store::Stats, id, 1)), "{id}");
            assert_eq!(
                tag(&k.board_base(id)),
                tag(&k.guard(Store::Boards, id, o).0),
                "{id}"
            );
            assert!(stats_keys.insert(stats), "{id}'s key is its own");
        }
    }
}
