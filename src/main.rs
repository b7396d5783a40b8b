//! The `gamemetrics` binary: parse the command line, load config, init telemetry, run a subcommand.

use anyhow::Context;
use clap::{Parser, Subcommand};
use gamemetrics::actors::{Role, RoleConsumerHandle};
use gamemetrics::app::Application;
use gamemetrics::config::Config;
use gamemetrics::kafka::{self, EmbeddedKafka, EventProducer, TopicSpec};
use gamemetrics::metrics::Metrics;
use gamemetrics::{db, telemetry};
use std::time::Duration;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Real-time gaming analytics: HTTP events -> Kafka -> PostgreSQL and Redis.
///
/// Every option can also be set through the environment variable shown next to it.
#[derive(Parser)]
#[command(name = "gamemetrics", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP ingestion API.
    Serve,
    /// Run one consumer role: logger, stats or leaderboard (one consumer group each).
    Consume {
        /// Which role this process plays.
        #[arg(long, value_enum)]
        role: Role,
    },
    /// Apply database migrations and create the Kafka topic; safe to run repeatedly.
    Migrate,
    /// Manage per-game API keys for ingestion.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Inspect and replay dead letters (the `dlq` table).
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Forget a player (GDPR article 17): remove their data from every store, for good.
    Players {
        #[command(subcommand)]
        action: PlayersAction,
    },
    /// Rebuild a lost Redis from PostgreSQL.
    Rebuild {
        #[command(subcommand)]
        what: RebuildWhat,
    },
    /// Everything in one process, for a demo: migrations, topic, HTTP and all three consumer
    /// roles. Without KAFKA_BROKERS it starts an embedded, in-memory Kafka broker.
    Dev,
}

#[derive(Subcommand)]
enum RebuildWhat {
    /// Recompute the live stats and boards from `events` after a lost Redis. Stop the stats and
    /// leaderboard consumers first (the command refuses otherwise); the logger and ingestion may
    /// keep running. They resume exactly where the rebuild ends.
    Redis {
        /// Only this game's boards (lost while the rest of Redis is whole); only the
        /// leaderboard consumers need to stop.
        #[arg(long)]
        game: Option<String>,
    },
}

#[derive(Subcommand)]
enum PlayersAction {
    /// Remove the player's events, stats, leaderboard entries and dead letters, and drop their
    /// events from now on; prints the tombstone with what each consumer removed so far.
    Forget {
        player_id: String,
        /// Wait (up to this many seconds) until every consumer role has removed the player.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
    },
    /// Print a forgotten player's tombstone: when, by whom, what each role removed.
    Show { player_id: String },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key for one game, or an admin key, and print it (the only time it is shown).
    Create {
        /// The game whose events the key may write and read.
        #[arg(long, required_unless_present = "admin", conflicts_with = "admin")]
        game: Option<String>,
        /// A key for no game: reads every game and administers, writes no events.
        #[arg(long)]
        admin: bool,
        /// This key's own requests/s limit, on top of the instance limit.
        #[arg(long)]
        rps: Option<u32>,
    },
    /// List keys (ids, games, limits, revocation; never secrets).
    List,
    /// Revoke a key by its id (the part after `gmk_`); takes effect within 30 s.
    Revoke {
        /// The key id.
        key_id: String,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// Dead letters, oldest first, one JSON object per line.
    List {
        /// Only those this consumer wrote (event-logger, leaderboard-manager).
        #[arg(long)]
        service: Option<String>,
        /// Only those written at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// One dead letter: what failed, where on the topic, why, and its replays.
    Show {
        /// The dead letter's id.
        id: i32,
    },
    /// Produce dead letters to the topic again, as their rows now stand, for the consumers
    /// that didn't apply them; one JSON line per dead letter says what happened.
    Replay {
        /// These dead letters (or select them with --service / --since).
        ids: Vec<i32>,
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Say what would be replayed; produce nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replay rows already replayed once more (a retry claim still keeps the event from
        /// counting twice within DEDUP_WINDOW_SECS).
        #[arg(long)]
        again: bool,
    },
}

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    // One line with the cause chain, not a Debug dump with a backtrace, for whoever runs this.
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let Cli { command, mut config } = Cli::parse();
    telemetry::init(&config.telemetry);
    if matches!(command, Command::Serve | Command::Consume { .. } | Command::Dev) {
        gamemetrics::heap::spawn_trimmer(config.process.malloc_trim_every())
            .context("starting the heap trimmer")?;
    }
    match command {
        Command::Serve => serve(&config).await,
        Command::Consume { role } => {
            db::check_postgres(&config.database).await?;
            if role != Role::Logger {
                db::check_redis(&config.redis, config.consumer.dedup_window_secs > 0).await?;
            }
            let metrics = Metrics::new().context("registering metrics")?;
            let consumers = start_consumers(&config, &[role], &metrics)?;
            // Consumers have no HTTP server of their own: serve /metrics and probes beside them.
            let probes = Application::build_probes(&config, metrics, role != Role::Logger)
                .context("binding the probe port")?;
            tokio::select! {
                r = probes.run_until_stopped() => r.context("probe server failed")?,
                _ = shutdown_signal() => {}
            }
            stop_consumers(consumers).await;
            Ok(())
        }
        Command::Migrate => migrate(&config).await,
        Command::Keys { action } => keys(&config, action).await,
        Command::Dlq { action } => dead_letters(&config, action).await,
        Command::Players { action } => players(&config, action).await,
        Command::Rebuild {
            what: RebuildWhat::Redis { game },
        } => {
            let game = game.map(gamemetrics::domain::GameId::parse).transpose()?;
            let rebuilt =
                gamemetrics::rebuild::rebuild_redis(&config, game.as_ref().map(|g| g.as_str())).await?;
            println!("{}", serde_json::to_string_pretty(&rebuilt)?);
            Ok(())
        }
        Command::Dev => {
            // A local demo accepts events without a key unless told otherwise.
            config.http.auth_required.get_or_insert(false);
            // Held until the end of main: dropping it stops the embedded broker.
            let _embedded = match config.kafka.kafka_brokers {
                Some(_) => {
                    migrate(&config).await?;
                    None
                }
                None => {
                    let embedded = EmbeddedKafka::start(&TopicSpec::from_config(&config.kafka))
                        .context("starting the embedded Kafka broker")?;
                    config.kafka.kafka_brokers = Some(embedded.bootstrap_servers());
                    run_db_migrations(&config).await?;
                    Some(embedded)
                }
            };
            db::check_redis(&config.redis, config.consumer.dedup_window_secs > 0).await?;
            let metrics = Metrics::new().context("registering metrics")?;
            let consumers = start_consumers(&config, &Role::ALL, &metrics)?;
            let served = serve_with(&config, metrics).await;
            stop_consumers(consumers).await;
            served
        }
    }
}

/// How long a stopping consumer may spend flushing: well inside Kubernetes' default 30 s grace.
const DRAIN_BUDGET: Duration = Duration::from_secs(20);

fn start_consumers(
    config: &Config,
    roles: &[Role],
    metrics: &Metrics,
) -> anyhow::Result<Vec<RoleConsumerHandle>> {
    roles
        .iter()
        .map(|&role| {
            RoleConsumerHandle::start(config, role, metrics.clone())
                .with_context(|| format!("starting the {} consumer", role.service()))
        })
        .collect()
}

async fn stop_consumers(consumers: Vec<RoleConsumerHandle>) {
    futures::future::join_all(consumers.into_iter().map(|c| c.shutdown(DRAIN_BUDGET))).await;
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    serve_with(config, Metrics::new().context("registering metrics")?).await
}

async fn serve_with(config: &Config, metrics: Metrics) -> anyhow::Result<()> {
    // Ingest needs no PostgreSQL, but the read API and API keys do: a TLS or login setting
    // that can never work is refused now, not on every read.
    db::check_postgres(&config.database).await?;
    let producer =
        EventProducer::new(&config.kafka, metrics.clone()).context("creating the Kafka producer")?;
    let app = Application::build(config, producer.clone(), metrics)
        .with_context(|| format!("binding {}", config.http.http_addr))?;
    // Say now, not at the first event, when the broker refuses us: a wrong password or ACL.
    let probe = producer.clone();
    actix_web::rt::spawn(async move {
        match probe.check_ready(Duration::from_secs(10)).await {
            Ok(()) => tracing::info!("Kafka answers for the topic"),
            Err(problem) => {
                tracing::error!(%problem, "Kafka is not ready for ingest (/readyz says why until it is)")
            }
        }
    });
    tracing::info!(
        port = app.port(),
        brokers = %config.kafka.brokers(),
        topic = %config.kafka.kafka_topic,
        "gamemetrics serving"
    );
    app.run_until_stopped().await.context("HTTP server failed")?;
    // The server stopped taking requests; let anything still queued reach the broker.
    producer.flush(Duration::from_secs(5));
    tracing::info!("gamemetrics stopped");
    Ok(())
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    run_db_migrations(config).await?;
    let spec = TopicSpec::from_config(&config.kafka);
    let created = kafka::ensure_topic(&config.kafka, &spec)
        .await
        .with_context(|| format!("creating topic {}", spec.name))?;
    tracing::info!(topic = %spec.name, created, "Kafka topic ready");
    Ok(())
}

async fn run_db_migrations(config: &Config) -> anyhow::Result<()> {
    let applied = db::run_migrations(&config.database)
        .await
        .context("migrating PostgreSQL")?;
    tracing::info!(applied = ?applied, database = %config.database.database_url, "database migrated");
    Ok(())
}

async fn keys(config: &Config, action: KeysAction) -> anyhow::Result<()> {
    use gamemetrics::auth;
    let pg = db::pg_pool(&config.database);
    match action {
        KeysAction::Create { game, admin: _, rps } => {
            let game = game
                .map(gamemetrics::domain::GameId::parse)
                .transpose()
                .context("--game")?;
            let key = auth::create_key(&pg, game.as_ref().map(|g| g.as_str()), rps)
                .await
                .context("creating the key")?;
            println!("{key}");
            let what = game.map_or("An admin API key".to_owned(), |g| format!("API key for game {g}"));
            eprintln!("{what}: shown once, store it now. Use it as `Authorization: Bearer <key>`.");
        }
        KeysAction::List => {
            for k in auth::list_keys(&pg).await.context("listing keys")? {
                println!("{k}");
            }
        }
        KeysAction::Revoke { key_id } => {
            let revoked = auth::revoke_key(&pg, &key_id).await.context("revoking the key")?;
            anyhow::ensure!(revoked, "no live key with id {key_id}");
            eprintln!("revoked {key_id}");
        }
    }
    Ok(())
}

async fn players(config: &Config, action: PlayersAction) -> anyhow::Result<()> {
    use gamemetrics::db::forget;
    use gamemetrics::domain::PlayerId;
    let mut conn = db::connect(&config.database).await?;
    match action {
        PlayersAction::Forget { player_id, wait } => {
            let player = PlayerId::parse(player_id)?;
            let metrics = Metrics::new().context("registering metrics")?;
            let producer =
                EventProducer::new(&config.kafka, metrics).context("creating the Kafka producer")?;
            let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
            let mut answer = gamemetrics::forget::forget(
                &mut conn,
                &producer,
                player.as_str(),
                &format!("cli:{user}"),
                gamemetrics::forget::Via::Cli,
            )
            .await?;
            let deadline = std::time::Instant::now() + Duration::from_secs(wait.unwrap_or(0));
            while !answer.complete() && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(t) = forget::find(&mut conn, player.as_str()).await? {
                    answer.status = if t.complete() { "forgotten" } else { "forgetting" };
                    answer.tombstone = t;
                }
            }
            println!("{}", serde_json::to_string_pretty(&answer)?);
            anyhow::ensure!(
                wait.is_none() || answer.complete(),
                "not every consumer role has removed the player yet: are all three running?"
            );
        }
        PlayersAction::Show { player_id } => {
            let t = forget::find(&mut conn, &player_id)
                .await?
                .with_context(|| format!("player {player_id} was never forgotten"))?;
            println!("{}", serde_json::to_string_pretty(&t)?);
        }
    }
    Ok(())
}

async fn dead_letters(config: &Config, action: DlqAction) -> anyhow::Result<()> {
    use gamemetrics::db::dlq::{self, DlqFilter};
    match action {
        DlqAction::List {
            service,
            since,
            limit,
        } => {
            let mut conn = db::connect(&config.database).await?;
            let filter = DlqFilter {
                service,
                since,
                limit,
                ..DlqFilter::default()
            };
            for row in dlq::list(&mut conn, &filter)
                .await
                .context("listing dead letters")?
            {
                println!("{}", serde_json::to_string(&row)?);
            }
        }
        DlqAction::Show { id } => {
            let mut conn = db::connect(&config.database).await?;
            let filter = DlqFilter {
                ids: vec![id],
                limit: 1,
                ..DlqFilter::default()
            };
            let row = dlq::list(&mut conn, &filter)
                .await
                .context("reading the dead letter")?;
            let row = row.first().with_context(|| format!("no dead letter {id}"))?;
            println!("{}", serde_json::to_string_pretty(row)?);
        }
        DlqAction::Replay {
            ids,
            service,
            since,
            dry_run,
            again,
        } => {
            anyhow::ensure!(
                !ids.is_empty() || service.is_some() || since.is_some(),
                "name dead letters to replay: ids, --service or --since"
            );
            let filter = DlqFilter {
                ids,
                service,
                since,
                limit: i64::MAX,
            };
            let replays = gamemetrics::replay::replay(config, &filter, dry_run, again).await?;
            for r in &replays {
                println!("{}", serde_json::to_string(r)?);
            }
            let refused = replays
                .iter()
                .filter(|r| matches!(r.outcome, gamemetrics::replay::Outcome::Refused { .. }))
                .count();
            anyhow::ensure!(
                refused == 0,
                "{refused} dead letter(s) refused; their rows are unchanged"
            );
        }
    }
    Ok(())
}
