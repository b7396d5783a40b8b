//! PostgreSQL and Redis access: embedded migrations and connection pools.

mod pool;
pub use pool::{pg_pool, redis_pool, redis_reader, PgPool, RedisPool, RedisReader};

use crate::config::SecretUrl;
use diesel::Connection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::AsyncPgConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

/// The SQL in `migrations/`, compiled into the binary so a deployment can't run stale files.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

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
}

/// Applies every pending migration; returns the versions applied now (none when up to date).
pub async fn run_migrations(url: &SecretUrl) -> Result<Vec<String>, DbError> {
    let url = url.clone();
    // diesel's migration harness is synchronous; the wrapper drives the async connection from
    // a blocking thread so it doesn't stall the runtime.
    tokio::task::spawn_blocking(move || {
        let mut conn =
            AsyncConnectionWrapper::<AsyncPgConnection>::establish(url.expose()).map_err(|source| {
                DbError::Connect {
                    url: url.to_string(),
                    source,
                }
            })?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| DbError::Migration(e.to_string()))?;
        Ok(applied.into_iter().map(|v| v.to_string()).collect())
    })
    .await
    .map_err(|e| DbError::Migration(format!("migration task failed: {e}")))?
}
