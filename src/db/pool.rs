//! Connection pools: PostgreSQL through diesel-async on bb8, Redis through the redis crate's own
//! bb8 manager (bb8-redis's takes a URL only; this one takes a client built with our CA).

use super::connect::PgTarget;
use crate::config::{DatabaseConfig, RedisConfig};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::AsyncPgConnection;
use futures::FutureExt;
use std::time::Duration;

/// A pool of async PostgreSQL connections.
pub type PgPool = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;
/// A pool of connections to one Redis logical database.
pub type RedisPool = bb8::Pool<redis::Client>;

/// Builds the PostgreSQL pool, over TLS as `DATABASE_URL`'s `sslmode` says (see
/// [`super::connect`]). Connections are opened lazily, so this succeeds while the database is
/// down; sinks retry until it is back. A setting that can't work fails every connection with
/// its reason, and [`super::check_postgres`] refuses it at start.
pub fn pg_pool(cfg: &DatabaseConfig) -> PgPool {
    let target = PgTarget::from_config(cfg);
    let mut setup = ManagerConfig::default();
    setup.custom_setup = Box::new(move |_url| {
        let target = target.clone();
        async move {
            match target {
                Ok(t) => t.connect().await,
                Err(e) => Err(diesel::ConnectionError::InvalidConnectionUrl(e)),
            }
        }
        .boxed()
    });
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(cfg.database_url.expose(), setup);
    bb8::Pool::builder()
        .max_size(cfg.database_pool_size)
        // A sink waiting longer than this for a connection treats it as a transient failure.
        .connection_timeout(Duration::from_secs(5))
        // bb8 answers a checkout whose connect failed with a bare time-out; the reason (a
        // certificate that doesn't verify, a wrong password) goes to the log from here.
        .error_sink(Box::new(LogConnectErrors("PostgreSQL")))
        .build_unchecked(manager)
}

/// Logs why a pooled connection to a store (named) could not be opened: bb8 answers the
/// checkout with a bare time-out.
#[derive(Debug, Clone, Copy)]
struct LogConnectErrors(&'static str);

impl<E: std::fmt::Display + 'static> bb8::ErrorSink<E> for LogConnectErrors {
    fn sink(&self, error: E) {
        tracing::warn!(store = self.0, error = %error, "cannot open a pooled connection");
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<E>> {
        Box::new(*self)
    }
}

/// A client of one Redis URL: `rediss://` is TLS, checked against REDIS_CA_FILE when set (else
/// the system's trust store); a password or ACL user comes in the URL
/// (`rediss://user:token@host:6379`).
pub fn redis_client(cfg: &RedisConfig, url: &str) -> Result<redis::Client, redis::RedisError> {
    match (&cfg.redis_ca_file, url.starts_with("rediss://")) {
        (Some(ca), true) => {
            let root_cert = std::fs::read(ca).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "REDIS_CA_FILE is not readable",
                    format!("{}: {e}", ca.display()),
                ))
            })?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )
        }
        _ => redis::Client::open(url),
    }
}

/// Builds the pool for one Redis logical database (0: stats, 1: leaderboards).
pub fn redis_pool(cfg: &RedisConfig, db: u8) -> Result<RedisPool, redis::RedisError> {
    let client = redis_client(cfg, &cfg.db_url(db))?;
    Ok(bb8::Pool::builder()
        .max_size(8)
        .connection_timeout(Duration::from_secs(5))
        .error_sink(Box::new(LogConnectErrors("Redis")))
        .build_unchecked(client))
}

/// The read API's way to one Redis logical database: a self-reconnecting, multiplexed
/// connection per HTTP worker thread. No pool checkout (bb8 pings on each, a round trip per
/// read), it reconnects on its own after Redis restarts, and each worker's requests and the
/// connection's driver task share a thread: one connection shared by all workers made every
/// read hop threads twice.
#[derive(Clone)]
pub struct RedisReader {
    client: redis::Client,
    /// Tells this reader's connections from other readers' in the thread's table.
    id: String,
}

thread_local! {
    static READ_CONNECTIONS: std::cell::RefCell<std::collections::HashMap<String, redis::aio::ConnectionManager>> =
        std::cell::RefCell::default();
}

impl RedisReader {
    /// The current thread's connection, made (lazily: it connects on first use) if new.
    pub fn conn(&self) -> Result<redis::aio::ConnectionManager, redis::RedisError> {
        READ_CONNECTIONS.with(|table| {
            if let Some(c) = table.borrow().get(&self.id) {
                return Ok(c.clone());
            }
            let c =
                redis::aio::ConnectionManager::new_lazy_with_config(self.client.clone(), reader_config())?;
            table.borrow_mut().insert(self.id.clone(), c.clone());
            Ok(c)
        })
    }
}

/// A reader of one Redis logical database for the read API, on REDIS_READ_URL if set.
pub fn redis_reader(cfg: &RedisConfig, db: u8) -> Result<RedisReader, redis::RedisError> {
    let client = redis_client(cfg, &cfg.read_db_url(db))?;
    let reader = RedisReader {
        client,
        id: uuid::Uuid::new_v4().simple().to_string(),
    };
    // Fails now on a configuration the connection manager refuses, rather than on every read.
    redis::aio::ConnectionManager::new_lazy_with_config(reader.client.clone(), reader_config())?;
    Ok(reader)
}

fn reader_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(5)))
}
