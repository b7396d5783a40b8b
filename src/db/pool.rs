//! The PostgreSQL connection pool: diesel-async on bb8 (Redis's are in [`super::redis_conn`]).

use super::connect::PgTarget;
use crate::config::DatabaseConfig;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::AsyncPgConnection;
use futures::FutureExt;
use std::time::Duration;

/// A pool of async PostgreSQL connections.
pub type PgPool = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;

/// Builds the PostgreSQL pool, over TLS as `DATABASE_URL`'s `sslmode` says (see
/// [`super::connect`](mod@super::connect)). Connections are opened lazily, so this succeeds while the database is
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
pub(crate) struct LogConnectErrors(pub(crate) &'static str);

impl<E: std::fmt::Display + 'static> bb8::ErrorSink<E> for LogConnectErrors {
    fn sink(&self, error: E) {
        tracing::warn!(store = self.0, error = %error, "cannot open a pooled connection");
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<E>> {
        Box::new(*self)
    }
}
