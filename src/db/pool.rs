//! Connection pools: PostgreSQL through diesel-async on bb8, Redis through bb8-redis.

use crate::config::{DatabaseConfig, RedisConfig};
use bb8_redis::RedisConnectionManager;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::AsyncPgConnection;
use std::time::Duration;

/// A pool of async PostgreSQL connections.
pub type PgPool = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;
/// A pool of connections to one Redis logical database.
pub type RedisPool = bb8::Pool<RedisConnectionManager>;

/// Builds the PostgreSQL pool. Connections are opened lazily, so this succeeds while the
/// database is down; sinks retry until it is back.
pub fn pg_pool(cfg: &DatabaseConfig) -> PgPool {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(cfg.database_url.expose());
    bb8::Pool::builder()
        .max_size(cfg.database_pool_size)
        // A sink waiting longer than this for a connection treats it as a transient failure.
        .connection_timeout(Duration::from_secs(5))
        .build_unchecked(manager)
}

/// Builds the pool for one Redis logical database (0: stats, 1: leaderboards).
pub fn redis_pool(cfg: &RedisConfig, db: u8) -> Result<RedisPool, redis::RedisError> {
    let manager = RedisConnectionManager::new(cfg.db_url(db))?;
    Ok(bb8::Pool::builder()
        .max_size(8)
        .connection_timeout(Duration::from_secs(5))
        .build_unchecked(manager))
}

/// A self-reconnecting, multiplexed connection to one Redis logical database, for the read API:
/// one shared connection serves every request without a pool checkout (bb8 pings on each
/// checkout, a round trip per read), and it reconnects on its own after Redis restarts.
pub fn redis_reader(cfg: &RedisConfig, db: u8) -> Result<redis::aio::ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(cfg.db_url(db))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    redis::aio::ConnectionManager::new_lazy_with_config(client, config)
}
