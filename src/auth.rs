//! API keys: per-game keys (write and read one game) and admin keys (read every game and
//! administer; write no events).
//!
//! A key reads `gmk_<key_id>_<secret>`. The `key_id` finds the row; only SHA-256 of the secret
//! is stored and it is compared in constant time. The key itself is printed once, by
//! `gamemetrics keys create`, and never logged.

use crate::db::{self, PgPool};
use crate::rate_limit::RateLimiter;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a looked-up key is trusted before it is read again: the most a revocation waits.
pub const CACHE_TTL: Duration = Duration::from_secs(30);

/// Why a request was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization: Bearer <api key>")]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
    #[error("the API key store is unavailable: {0}")]
    Store(String),
    /// Too many requests that failed authentication or needed a key looked up.
    #[error("too many unauthenticated requests")]
    Throttled(Duration),
}

/// What a key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyScope {
    /// Write and read this game's events.
    Game(String),
    /// Read every game and administer; no writes of events.
    Admin,
}

impl KeyScope {
    /// The one game this key is for; `None` for an admin key.
    pub fn game(&self) -> Option<&str> {
        match self {
            KeyScope::Game(g) => Some(g),
            KeyScope::Admin => None,
        }
    }

    /// Whether the key may read `game`'s data.
    pub fn may_read(&self, game: &str) -> bool {
        self.game().is_none_or(|g| g == game)
    }

    /// Why the key may not write an event of `game`, if it may not.
    pub fn write_refusal(&self, game: &str) -> Option<String> {
        match self {
            KeyScope::Game(g) if g == game => None,
            KeyScope::Game(_) => Some(format!("this API key may not write events of game {game}")),
            KeyScope::Admin => Some("an admin key writes no events: use the game's own key".into()),
        }
    }
}

/// A key that authenticated: what it may do, and its own rate limiter.
#[derive(Clone)]
pub struct Authenticated {
    pub key_id: String,
    pub scope: KeyScope,
    pub limiter: Option<Arc<RateLimiter>>,
}

#[derive(Clone)]
struct CachedKey {
    scope: KeyScope,
    secret_sha256: String,
    revoked: bool,
    limiter: Option<Arc<RateLimiter>>,
    fetched: Instant,
}

/// Looks keys up in PostgreSQL, with a short cache so ingestion doesn't query per request.
pub struct KeyStore {
    pg: PgPool,
    cache: Mutex<HashMap<String, CachedKey>>,
    /// Key ids looked up and not found, and when: a client retrying a wrong key (or anyone
    /// sending made-up ones) costs one query per id per CACHE_TTL, not one per request.
    unknown: Mutex<HashMap<String, Instant>>,
    /// UNAUTH_RATE_LIMIT_RPS for requests that fail authentication without a lookup (no key,
    /// a malformed one, a wrong secret, an id known not to exist): keyless traffic costs at most
    /// this, and never spends what keyed clients share.
    unauthenticated: RateLimiter,
    /// The same rate for PostgreSQL lookups of key ids not in the cache, spent before the query
    /// (a made-up id is only known to be one afterwards). A bucket of its own, so keyless floods
    /// can't hold up real keys' lookups; a key already seen rides out a flood of made-up ids on
    /// its cached entry (see `STALE_LIMIT`).
    lookups: RateLimiter,
}

/// How long past CACHE_TTL a known key is still trusted while lookups are throttled: the most
/// a revocation can be delayed by someone flooding made-up key ids.
const STALE_LIMIT: Duration = Duration::from_secs(300);

/// Most unknown key ids remembered; past it the table starts over, so made-up ids can't grow it.
const MAX_UNKNOWN: usize = 10_000;

impl KeyStore {
    /// A store reading from `pg` that answers at most `unauth_rps` failing requests and key
    /// lookups per second (0: no limit).
    pub fn new(pg: PgPool, unauth_rps: u32) -> Self {
        KeyStore {
            pg,
            cache: Mutex::new(HashMap::new()),
            unknown: Mutex::new(HashMap::new()),
            unauthenticated: RateLimiter::new(unauth_rps, unauth_rps),
            lookups: RateLimiter::new(unauth_rps, unauth_rps),
        }
    }

    /// Checks an `Authorization` header value (`Bearer <key>`, the scheme in any case).
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Authenticated, AuthError> {
        let mut looked_up = false;
        let result = self.check(header, &mut looked_up).await;
        match result {
            // A lookup already paid for itself.
            Err(AuthError::Missing | AuthError::Invalid) if !looked_up => {
                self.spend_unauthenticated().and(result)
            }
            _ => result,
        }
    }

    fn spend_unauthenticated(&self) -> Result<(), AuthError> {
        self.unauthenticated.try_acquire().map_err(AuthError::Throttled)
    }

    async fn check(&self, header: Option<&str>, looked_up: &mut bool) -> Result<Authenticated, AuthError> {
        let token = header
            .and_then(|h| h.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(AuthError::Missing)?;
        let (key_id, secret) = split_key(token).ok_or(AuthError::Invalid)?;
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key_id)
            .cloned();
        let key = match cached {
            Some(k) if k.fetched.elapsed() < CACHE_TTL => k,
            cached => {
                let known_unknown = self
                    .unknown
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(key_id)
                    .is_some_and(|at| at.elapsed() < CACHE_TTL);
                if known_unknown {
                    return Err(AuthError::Invalid);
                }
                // A lookup costs a query: paid for before it is made (a made-up key id is only
                // known to be one afterwards). While lookups are throttled, a key seen recently
                // enough keeps working on what was read.
                if let Err(wait) = self.lookups.try_acquire() {
                    match cached {
                        Some(k) if k.fetched.elapsed() < CACHE_TTL + STALE_LIMIT => k,
                        _ => return Err(AuthError::Throttled(wait)),
                    }
                } else {
                    *looked_up = true;
                    let Some(fresh) = self.fetch(key_id).await? else {
                        let mut unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
                        if unknown.len() >= MAX_UNKNOWN {
                            unknown.clear();
                        }
                        unknown.insert(key_id.to_owned(), Instant::now());
                        return Err(AuthError::Invalid);
                    };
                    self.cache
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key_id.to_owned(), fresh.clone());
                    fresh
                }
            }
        };
        if key.revoked || !constant_time_eq(sha256_hex(secret).as_bytes(), key.secret_sha256.as_bytes()) {
            return Err(AuthError::Invalid);
        }
        Ok(Authenticated {
            key_id: key_id.to_owned(),
            scope: key.scope,
            limiter: key.limiter,
        })
    }

    async fn fetch(&self, key_id: &str) -> Result<Option<CachedKey>, AuthError> {
        let mut conn = self.pg.get().await.map_err(store_err)?;
        let row = db::api_keys::find(&mut conn, key_id).await.map_err(store_err)?;
        Ok(row.map(|r| CachedKey {
            scope: match (r.is_admin, r.game_id) {
                (false, Some(game)) => KeyScope::Game(game),
                // The table's CHECK allows no other row; a key for no game can't write any.
                _ => KeyScope::Admin,
            },
            secret_sha256: r.secret_sha256,
            revoked: r.revoked_at.is_some(),
            limiter: r
                .rate_limit_rps
                .and_then(|n| u32::try_from(n).ok())
                .map(|n| Arc::new(RateLimiter::new(n, n))),
            fetched: Instant::now(),
        }))
    }
}

fn store_err(e: impl std::fmt::Display) -> AuthError {
    AuthError::Store(e.to_string())
}

fn split_key(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("gmk_")?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Equality whose time doesn't depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Creates a key for `game_id` (`None`: an admin key); answers the full key, the only time it
/// exists in clear.
pub async fn create_key(
    pg: &PgPool,
    game_id: Option<&str>,
    rate_limit_rps: Option<u32>,
) -> Result<String, AuthError> {
    let key_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    // Two v4 UUIDs: 244 random bits from the OS generator.
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut conn = pg.get().await.map_err(store_err)?;
    let rps = rate_limit_rps.and_then(|n| i32::try_from(n).ok());
    db::api_keys::insert(&mut conn, &key_id, game_id, &sha256_hex(&secret), rps)
        .await
        .map_err(store_err)?;
    Ok(format!("gmk_{key_id}_{secret}"))
}

/// Revokes a key by id; answers whether a live key was revoked.
pub async fn revoke_key(pg: &PgPool, key_id: &str) -> Result<bool, AuthError> {
    let mut conn = pg.get().await.map_err(store_err)?;
    db::api_keys::revoke(&mut conn, key_id).await.map_err(store_err)
}

/// Lists keys (never secrets): id, game (or admin), rate limit, created, revoked.
pub async fn list_keys(pg: &PgPool) -> Result<Vec<serde_json::Value>, AuthError> {
    let mut conn = pg.get().await.map_err(store_err)?;
    let rows = db::api_keys::all(&mut conn).await.map_err(store_err)?;
    Ok(rows
        .into_iter()
        .map(|r| {
            serde_json::json!({"key_id": r.key_id, "game_id": r.game_id, "admin": r.is_admin,
                               "rate_limit_rps": r.rate_limit_rps, "created_at": r.created_at,
                               "revoked_at": r.revoked_at})
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_and_compare() {
        assert_eq!(split_key("gmk_abc_def"), Some(("abc", "def")));
        assert_eq!(split_key("abc_def"), None);
        assert_eq!(split_key("gmk__def"), None);
        assert!(constant_time_eq(b"same", b"same"));
        assert!(!constant_time_eq(b"same", b"sane"));
        assert!(!constant_time_eq(b"same", b"samey"));
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
