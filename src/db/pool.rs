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
