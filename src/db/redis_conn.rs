//! Connections to Redis, single or cluster: the sinks' [`RedisPool`], the read API's
//! [`RedisReader`], and [`RedisConn`], the one connection type both hand out, so the code that
//! runs scripts and reads doesn't care which kind of Redis it talks to.
//!
//! A single Redis (or a primary with replicas: ElastiCache with cluster mode off) is reached
//! through a bb8 pool of multiplexed connections per logical database. A Redis Cluster has one
//! logical database; its cluster connection is multiplexed over one connection per node and
//! follows slot moves and failovers by itself, so it is shared rather than pooled, and opened
//! on first use so that start-up doesn't wait for the cluster.

use super::pool::LogConnectErrors;
use crate::config::RedisConfig;
use redis::aio::ConnectionLike;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use std::sync::{Arc, Once};
use std::time::Duration;

/// How long a command may take before the caller treats it as failed. Longer than any
/// REDIS_WAIT_TIMEOUT_MS a deployment would choose, since `WAIT` blocks for up to that.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// rustls needs one process-wide crypto provider; ring is the one compiled in.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err only if another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn ca_bundle(cfg: &RedisConfig) -> Result<Option<Vec<u8>>, RedisError> {
    let Some(ca) = &cfg.redis_ca_file else {
        return Ok(None);
    };
    std::fs::read(ca).map(Some).map_err(|e| {
        RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "REDIS_CA_FILE is not readable",
            format!("{}: {e}", ca.display()),
        ))
    })
}

/// A client of one Redis URL: `rediss://` is TLS, checked against REDIS_CA_FILE when set (else
/// the system's trust store); a password or ACL user comes in the URL
/// (`rediss://user:token@host:6379`).
pub fn redis_client(cfg: &RedisConfig, url: &str) -> Result<redis::Client, RedisError> {
    install_crypto_provider();
    match (url.starts_with("rediss://"), ca_bundle(cfg)?) {
        (true, Some(root_cert)) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            },
        ),
        _ => redis::Client::open(url),
    }
}

/// A client of the Redis Cluster REDIS_URL names, with the same TLS and AUTH rules.
fn cluster_client(cfg: &RedisConfig) -> Result<ClusterClient, RedisError> {
    install_crypto_provider();
    let nodes = cfg.cluster_nodes();
    let tls = nodes.iter().any(|u| u.starts_with("rediss://"));
    let mut builder = ClusterClient::builder(nodes)
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT);
    if let (true, Some(root_cert)) = (tls, ca_bundle(cfg)?) {
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        });
    }
    builder.build()
}

/// A cluster connection opened on first use and shared after; a failed open is tried again
/// by the next caller.
#[derive(Clone)]
pub struct LazyCluster(Arc<(ClusterClient, tokio::sync::OnceCell<ClusterConnection>)>);

impl LazyCluster {
    fn new(client: ClusterClient) -> Self {
        LazyCluster(Arc::new((client, tokio::sync::OnceCell::new())))
    }

    async fn get(&self) -> Result<ClusterConnection, RedisError> {
        let (client, conn) = &*self.0;
        conn.get_or_try_init(|| client.get_async_connection())
            .await
            .cloned()
    }
}

/// Where the sinks get connections to one of gamemetrics' Redis databases.
#[derive(Clone)]
pub enum RedisPool {
    /// One logical database of a single Redis.
    Single(bb8::Pool<TimedClient>),
    /// The cluster (DB 0; stats and boards apart by key name).
    Cluster(LazyCluster),
}

impl RedisPool {
    /// A connection: checked out of the pool, or the shared cluster connection.
    pub async fn get(&self) -> Result<RedisConn, RedisError> {
        match self {
            RedisPool::Single(pool) => pool
                .get_owned()
                .await
                .map(RedisConn::Pooled)
                .map_err(|e| match e {
                    bb8::RunError::User(e) => e,
                    bb8::RunError::TimedOut => RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no Redis connection within 5 s",
                    )),
                }),
            RedisPool::Cluster(cluster) => cluster.get().await.map(RedisConn::Cluster),
        }
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisPool::Cluster(_))
    }
}

/// Builds the sinks' way to one Redis logical database (0: stats, 1: leaderboards; a cluster
/// has DB 0 only, so both get the same connection there).
pub fn redis_pool(cfg: &RedisConfig, db: u8) -> Result<RedisPool, RedisError> {
    if cfg.redis_cluster {
        return Ok(RedisPool::Cluster(LazyCluster::new(cluster_client(cfg)?)));
    }
    let client = redis_client(cfg, &cfg.db_url(db))?;
    Ok(RedisPool::Single(
        bb8::Pool::builder()
            .max_size(8)
            .connection_timeout(CONNECT_TIMEOUT)
            // No PING before every checkout: under load it waited in Redis's queue behind the
            // scripts running there, a second wait per script call. A connection that failed
            // is marked (`Tracked::broken`) and replaced instead.
            .test_on_check_out(false)
            .error_sink(Box::new(LogConnectErrors("Redis")))
            .build_unchecked(TimedClient(client)),
    ))
}

/// A single Redis's client whose connections wait RESPONSE_TIMEOUT for a reply, not
/// redis-rs's default of 500 ms: a script call over a large batch, or a `WAIT` for a replica,
/// takes longer than that on a busy server, and a write that times out is halved and retried
/// (work done twice, batches cut for nothing).
pub struct TimedClient(redis::Client);

impl TimedClient {
    async fn open(&self) -> Result<redis::aio::MultiplexedConnection, RedisError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        self.0.get_multiplexed_async_connection_with_config(&config).await
    }
}

/// A pooled connection and whether a command on it failed in a way that leaves it unusable
/// (redis-rs's multiplexed connection can't be asked whether it is closed).
pub struct Tracked {
    conn: redis::aio::MultiplexedConnection,
    broken: bool,
}

impl Tracked {
    /// Runs `request` on the connection, marking it broken if it failed for the connection's
    /// sake (a reset, a closed socket, a timeout: a connection that stopped answering without
    /// closing would otherwise time out forever): the pool then drops it instead of handing it
    /// out again. Server errors (`BUSY`, `LOADING`, a script's) leave it as it is.
    fn run<'a, T: Send + 'a>(
        &'a mut self,
        request: impl FnOnce(&'a mut redis::aio::MultiplexedConnection) -> RedisFuture<'a, T> + 'a,
    ) -> RedisFuture<'a, T> {
        let Tracked { conn, broken } = self;
        let request = request(conn);
        Box::pin(async move {
            let result = request.await;
            if result
                .as_ref()
                .is_err_and(|e| e.is_unrecoverable_error() || e.kind() == redis::ErrorKind::Io)
            {
                *broken = true;
            }
            result
        })
    }
}

impl bb8::ManageConnection for TimedClient {
    type Connection = Tracked;
    type Error = RedisError;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        Ok(Tracked {
            conn: self.open().await?,
            broken: false,
        })
    }

    async fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        redis::cmd("PING").query_async::<()>(&mut conn.conn).await
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        conn.broken
    }
}

/// A connection to Redis, whichever kind: run commands, pipelines and scripts on it.
pub enum RedisConn {
    Direct(redis::aio::MultiplexedConnection),
    Pooled(bb8::PooledConnection<'static, TimedClient>),
    Managed(redis::aio::ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Direct(c) => c.req_packed_command(cmd),
            RedisConn::Pooled(c) => c.run(|conn| conn.req_packed_command(cmd)),
            RedisConn::Managed(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Direct(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Pooled(c) => c.run(move |conn| conn.req_packed_commands(pipeline, offset, count)),
            RedisConn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Direct(c) => c.get_db(),
            RedisConn::Pooled(c) => c.conn.get_db(),
            RedisConn::Managed(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Keys a scan asks each `SCAN` round trip to visit: about a millisecond of Redis's time, so
/// other clients wait little behind one.
const SCAN_COUNT: usize = 1000;

/// Where a paged key scan stands: the node (the cluster's primaries, in address order, as of
/// the scan's first page; none on a single Redis) and that node's `SCAN` cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanCursor {
    nodes: Vec<(String, u16)>,
    node: usize,
    /// Empty at a node's start.
    cursor: String,
}

impl ScanCursor {
    /// The start of a scan of `nodes`.
    fn on(nodes: Vec<(String, u16)>) -> Self {
        ScanCursor {
            nodes,
            ..ScanCursor::default()
        }
    }

    /// The cursor to send: `0` at a node's start.
    fn cursor(&self) -> &str {
        if self.cursor.is_empty() {
            "0"
        } else {
            &self.cursor
        }
    }
}

impl RedisConn {
    /// Every key matching `pattern` whose type is `kind` (`SCAN … MATCH … TYPE …`): on a
    /// cluster, of every primary. Meant for rare operations run outside the sinks (a rebuild);
    /// the sinks scan page by page ([`RedisConn::scan_page`]).
    pub async fn scan_keys(&mut self, pattern: &str, kind: &str) -> Result<Vec<String>, RedisError> {
        let mut keys = Vec::new();
        let mut at = ScanCursor::default();
        loop {
            let (page, next) = self.scan_page(&at, pattern, kind, SCAN_COUNT).await?;
            keys.extend(page);
            match next {
                Some(next) => at = next,
                None => break,
            }
        }
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }

    /// One `SCAN … COUNT count` round trip from `at`: the keys it found (possibly none, possibly
    /// one seen before) and where the scan goes on, `None` once every key (on a cluster, of
    /// every primary) was visited. A cluster's primaries are those of the scan's first page; if
    /// they differ later (a failover, a node added) the scan starts over on the new ones, since
    /// a cursor means nothing to another node.
    pub async fn scan_page(
        &mut self,
        at: &ScanCursor,
        pattern: &str,
        kind: &str,
        count: usize,
    ) -> Result<(Vec<String>, Option<ScanCursor>), RedisError> {
        let scan = |cursor: &str| {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(count)
                .arg("TYPE")
                .arg(kind);
            cmd
        };
        match self {
            RedisConn::Cluster(c) => {
                let primaries = cluster_primaries(c).await?;
                let at = if at.nodes == primaries {
                    at.clone()
                } else {
                    ScanCursor::on(primaries)
                };
                let Some((host, port)) = at.nodes.get(at.node).cloned() else {
                    return Ok((Vec::new(), None));
                };
                let routing = redis::cluster_routing::RoutingInfo::SingleNode(
                    redis::cluster_routing::SingleNodeRoutingInfo::ByAddress { host, port },
                );
                let (next, keys): (String, Vec<String>) =
                    redis::from_redis_value(c.route_command(scan(at.cursor()), routing).await?)?;
                let next = if next != "0" {
                    Some(ScanCursor { cursor: next, ..at })
                } else if at.node + 1 < at.nodes.len() {
                    Some(ScanCursor {
                        node: at.node + 1,
                        cursor: String::new(),
                        nodes: at.nodes,
                    })
                } else {
                    None
                };
                Ok((keys, next))
            }
            other => {
                let (next, keys): (String, Vec<String>) = scan(at.cursor()).query_async(other).await?;
                let next = (next != "0").then(|| ScanCursor {
                    cursor: next,
                    ..at.clone()
                });
                Ok((keys, next))
            }
        }
    }

    /// `INFO server` of one node (any node of a cluster: they run one version).
    pub async fn info_server(&mut self) -> Result<String, RedisError> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("server");
        match self {
            RedisConn::Cluster(c) => {
                let routing = redis::cluster_routing::RoutingInfo::SingleNode(
                    redis::cluster_routing::SingleNodeRoutingInfo::Random,
                );
                let value = c.route_command(cmd, routing).await?;
                Ok(redis::from_redis_value(value)?)
            }
            other => cmd.query_async(other).await,
        }
    }
}

/// The primaries of a cluster, as `CLUSTER SLOTS` names them (the addresses the cluster
/// connection routes by).
async fn cluster_primaries(c: &mut ClusterConnection) -> Result<Vec<(String, u16)>, RedisError> {
    let slots: Vec<Vec<Value>> = redis::cmd("CLUSTER").arg("SLOTS").query_async(c).await?;
    let mut primaries = Vec::new();
    for range in slots {
        // [first slot, last slot, [host, port, id, …] of the primary, replicas…]
        let Some(Value::Array(node)) = range.get(2) else {
            continue;
        };
        if let (Some(host), Some(port)) = (node.first(), node.get(1)) {
            let host: String = redis::from_redis_value(host.clone())?;
            let port: u16 = redis::from_redis_value(port.clone())?;
            primaries.push((host, port));
        }
    }
    primaries.sort_unstable();
    primaries.dedup();
    Ok(primaries)
}

/// The read API's way to one Redis logical database: a self-reconnecting, multiplexed
/// connection per HTTP worker thread (a cluster connection per thread on a cluster). No pool
/// checkout (bb8 pings on each, a round trip per read), it reconnects on its own after Redis
/// restarts, and each worker's requests and the connection's driver task share a thread: one
/// connection shared by all workers made every read hop threads twice.
#[derive(Clone)]
pub struct RedisReader {
    target: ReadTarget,
    /// Tells this reader's connections from other readers' in the thread's table.
    id: String,
}

#[derive(Clone)]
enum ReadTarget {
    Single(Box<redis::Client>),
    Cluster(Box<ClusterClient>),
}

#[derive(Clone)]
enum ThreadConn {
    Managed(redis::aio::ConnectionManager),
    Cluster(LazyCluster),
}

thread_local! {
    static READ_CONNECTIONS: std::cell::RefCell<std::collections::HashMap<String, ThreadConn>> =
        std::cell::RefCell::default();
}

impl RedisReader {
    /// The current thread's connection, made (lazily: it connects on first use) if new.
    pub async fn conn(&self) -> Result<RedisConn, RedisError> {
        let conn = READ_CONNECTIONS.with(|table| -> Result<ThreadConn, RedisError> {
            if let Some(c) = table.borrow().get(&self.id) {
                return Ok(c.clone());
            }
            let c = match &self.target {
                ReadTarget::Single(client) => ThreadConn::Managed(
                    redis::aio::ConnectionManager::new_lazy_with_config((**client).clone(), reader_config())?,
                ),
                ReadTarget::Cluster(client) => ThreadConn::Cluster(LazyCluster::new((**client).clone())),
            };
            table.borrow_mut().insert(self.id.clone(), c.clone());
            Ok(c)
        })?;
        match conn {
            ThreadConn::Managed(c) => Ok(RedisConn::Managed(c)),
            ThreadConn::Cluster(c) => c.get().await.map(RedisConn::Cluster),
        }
    }

    fn of(target: ReadTarget) -> Result<Self, RedisError> {
        if let ReadTarget::Single(client) = &target {
            // Fails now on a configuration the connection manager refuses, rather than on
            // every read.
            redis::aio::ConnectionManager::new_lazy_with_config((**client).clone(), reader_config())?;
        }
        Ok(RedisReader {
            target,
            id: uuid::Uuid::new_v4().simple().to_string(),
        })
    }
}

/// A reader of one Redis logical database for the read API, on REDIS_READ_URL if set.
pub fn redis_reader(cfg: &RedisConfig, db: u8) -> Result<RedisReader, RedisError> {
    reader_at(cfg, &cfg.read_db_url(db))
}

/// A reader of one logical database on the primary (REDIS_URL), for tests and tools.
pub fn redis_primary(cfg: &RedisConfig, db: u8) -> Result<RedisReader, RedisError> {
    reader_at(cfg, &cfg.db_url(db))
}

/// A reader of `url` on a single Redis; of the cluster REDIS_URL names on a cluster.
fn reader_at(cfg: &RedisConfig, url: &str) -> Result<RedisReader, RedisError> {
    let target = if cfg.redis_cluster {
        ReadTarget::Cluster(Box::new(cluster_client(cfg)?))
    } else {
        ReadTarget::Single(Box::new(redis_client(cfg, url)?))
    };
    RedisReader::of(target)
}

/// One connection to DB 0 of REDIS_URL, opened now and not retried: what it fails with is
/// why this Redis can't be used (for start-up checks).
pub async fn connect_once(cfg: &RedisConfig) -> Result<RedisConn, RedisError> {
    if cfg.redis_cluster {
        return cluster_client(cfg)?
            .get_async_connection()
            .await
            .map(RedisConn::Cluster);
    }
    connect_db(cfg, 0).await.map(RedisConn::Direct)
}

/// One connection to logical database `db` of a single Redis (REDIS_URL, TLS as configured),
/// with the sinks' connect and reply timeouts.
pub async fn connect_db(cfg: &RedisConfig, db: u8) -> Result<redis::aio::MultiplexedConnection, RedisError> {
    TimedClient(redis_client(cfg, &cfg.db_url(db))?).open().await
}

fn reader_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
}
