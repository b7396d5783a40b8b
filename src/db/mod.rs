//! PostgreSQL and Redis access: embedded migrations, connection pools, every Redis key
//! ([`redis_keys`]) and the queries the HTTP tier and the sinks run.

pub mod api_keys;
pub mod boards;
pub mod connect;
pub mod dlq;
pub mod events;
pub mod forget;
pub mod offsets;
mod pool;
mod prepared;
pub mod redis_conn;
pub mod redis_keys;
pub mod stats;
pub use pool::{pg_pool, PgPool};
pub use prepared::Prepared;
pub use redis_conn::{
    redis_client, redis_pool, redis_primary, redis_reader, RedisConn, RedisPool, RedisReader, ScanCursor,
};

use crate::config::DatabaseConfig;
use connect::PgTarget;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::AsyncPgConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

/// The SQL in `migrations/`, compiled into the binary so a deployment can't run stale files.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// One consumer's place in one partition's log: whose offsets `consumer_offsets` and the Redis
/// offset keys keep.
#[derive(Debug, Clone, Copy)]
pub struct PartitionLog<'a> {
    /// The consumer service (`event-logger`, …).
    pub service: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    /// The topic's id: offsets are kept per log.
    pub log: &'a str,
}

/// Database errors at start-up.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect {
        url: String,
        source: diesel::ConnectionError,
    },
    #[error("running migrations failed: {0}")]
    Migration(String),
    #[error("Redis {0} is too old: the retry claims need 7.0 or newer (or set DEDUP_WINDOW_SECS=0)")]
    RedisTooOld(String),
    #[error("Redis at {0}")]
    RedisRefused(String),
}

/// The major version in an `INFO server` answer (`redis_version:7.0.15`).
fn redis_major(info: &str) -> Option<(u32, &str)> {
    let version = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("redis_version:"))?;
    Some((version.split('.').next()?.parse().ok()?, version))
}

/// Refuses, at start, a Redis this process could reach but not use: one that refuses it (a
/// certificate that doesn't verify, a wrong password or ACL user) or, when the retry claims are
/// on (`claims`), one older than 7.0, whose `EXPIREAT … NX` they need. One clear error rather
/// than every write failing. A Redis that can't be reached now is no error (the sinks retry
/// until it is up); the check is then skipped, with a warning.
pub async fn check_redis(cfg: &crate::config::RedisConfig, claims: bool) -> Result<(), DbError> {
    if cfg.redis_cluster && cfg.redis_key_prefix.contains(['{', '}']) {
        return Err(DbError::RedisRefused(format!(
            "{}: REDIS_KEY_PREFIX {:?} has a brace, which would change every key's hash tag on a cluster",
            cfg.redis_url, cfg.redis_key_prefix
        )));
    }
    let answer = async { redis_conn::connect_once(cfg).await?.info_server().await };
    match tokio::time::timeout(std::time::Duration::from_secs(3), answer).await {
        Ok(Ok(info)) => match redis_major(&info) {
            Some((major, version)) if claims && major < 7 => Err(DbError::RedisTooOld(version.to_owned())),
            _ if !cfg.redis_cluster && info.contains("redis_mode:cluster") => {
                Err(DbError::RedisRefused(format!(
                    "{}: this is a Redis Cluster node; set REDIS_CLUSTER=true",
                    cfg.redis_url
                )))
            }
            _ => Ok(()),
        },
        Ok(Err(e)) if redis_refused(&e) => Err(DbError::RedisRefused(format!("{}: {e}", cfg.redis_url))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Redis not checked: Redis is not answering yet");
            Ok(())
        }
        Err(_) => {
            tracing::warn!("Redis not checked: Redis did not answer within 3 s");
            Ok(())
        }
    }
}

/// Whether a Redis error means "there, but refusing us" (TLS, password, ACL, a bad setting)
/// rather than "not there (yet)".
pub fn redis_refused(e: &redis::RedisError) -> bool {
    if matches!(
        e.kind(),
        redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::InvalidClientConfig
    ) {
        return true;
    }
    let text = e.to_string();
    [
        "certificate",
        "handshake",
        "NOAUTH",
        "WRONGPASS",
        "NOPERM",
        "invalid username-password",
        // The cluster client's wording of a refused AUTH.
        "authentication failed",
        // REDIS_CLUSTER=true on a Redis that isn't one.
        "cluster support disabled",
    ]
    .iter()
    .any(|m| text.contains(m))
}

/// Opens one connection as the pools do (TLS per `sslmode`): for migrations, start-up checks
/// and tools.
pub async fn connect(cfg: &DatabaseConfig) -> Result<AsyncPgConnection, DbError> {
    let connect_err = |source| DbError::Connect {
        url: cfg.database_url.to_string(),
        source,
    };
    let target = PgTarget::from_config(cfg)
        .map_err(|e| connect_err(diesel::ConnectionError::InvalidConnectionUrl(e)))?;
    target.connect().await.map_err(connect_err)
}

/// What one attempt to connect to PostgreSQL found, short of a refusal.
#[derive(Debug)]
pub enum PgReach {
    Connected,
    /// Not there (yet): down, starting, or no answer in time; why, for the log.
    Unreachable(String),
}

/// Tries one connection within `within`: a PostgreSQL that answers but refuses this process (a
/// wrong CA, a certificate for another host, a wrong password: nothing waiting heals) is the
/// error; one that can't be reached is [`PgReach::Unreachable`]. The start-up check and
/// `/readyz` both ask this.
pub async fn reach_postgres(cfg: &DatabaseConfig, within: std::time::Duration) -> Result<PgReach, DbError> {
    match tokio::time::timeout(within, connect(cfg)).await {
        Ok(Ok(_)) => Ok(PgReach::Connected),
        Ok(Err(e)) if is_unreachable(&e.to_string()) => Ok(PgReach::Unreachable(e.to_string())),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(PgReach::Unreachable(format!("no answer within {within:?}"))),
    }
}

/// Refuses, at start, a PostgreSQL this process could reach but not trust or not log in to:
/// one clear error rather than every write failing. A PostgreSQL that can't be reached now is
/// no error (the sinks retry until it is up); the check is then skipped, with a warning.
pub async fn check_postgres(cfg: &DatabaseConfig) -> Result<(), DbError> {
    if let PgReach::Unreachable(why) = reach_postgres(cfg, std::time::Duration::from_secs(5)).await? {
        tracing::warn!(error = %why, "PostgreSQL not checked: not reachable yet");
    }
    Ok(())
}

/// Whether a connection error means "not there (yet)" rather than "there, but refused".
fn is_unreachable(error: &str) -> bool {
    [
        "Connection refused",
        "timed out",
        "No route to host",
        "failed to lookup address",
        "the database system is starting up",
        "the database system is shutting down",
    ]
    .iter()
    .any(|m| error.contains(m))
}

/// Applies every pending migration; returns the versions applied now (none when up to date).
pub async fn run_migrations(cfg: &DatabaseConfig) -> Result<Vec<String>, DbError> {
    let conn = connect(cfg).await?;
    // diesel's migration harness is synchronous; the wrapper drives the async connection from
    // a blocking thread so it doesn't stall the runtime.
    tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| DbError::Migration(e.to_string()))?;
        Ok(applied.into_iter().map(|v| v.to_string()).collect())
    })
    .await
    .map_err(|e| DbError::Migration(format!("migration task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    #[test]
    fn redis_major_reads_info_server() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
        assert_eq!(super::redis_major(info), Some((7, "7.0.15")));
        assert_eq!(super::redis_major("redis_version:6.2.14\n"), Some((6, "6.2.14")));
        assert_eq!(super::redis_major("nothing here"), None);
    }
}
