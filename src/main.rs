//! The `gamemetrics` binary: parse the command line, load config, init telemetry, run a subcommand.

use anyhow::Context;
use clap::{Parser, Subcommand};
use gamemetrics::app::Application;
use gamemetrics::config::Config;
use gamemetrics::kafka::{self, EmbeddedKafka, EventProducer, TopicSpec};
use gamemetrics::metrics::Metrics;
use gamemetrics::{db, telemetry};
use std::time::Duration;

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
    /// Apply database migrations and create the Kafka topic; safe to run repeatedly.
    Migrate,
    /// Everything in one process, for a demo: migrations, topic and HTTP. Without KAFKA_BROKERS
    /// it starts an embedded, in-memory Kafka broker.
    Dev,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command, mut config } = Cli::parse();
    telemetry::init(&config.telemetry);
    match command {
        Command::Serve => serve(&config).await,
        Command::Migrate => migrate(&config).await,
        Command::Dev => {
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
            serve(&config).await
        }
    }
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    let metrics = Metrics::new().context("registering metrics")?;
    let producer =
        EventProducer::new(&config.kafka, metrics.clone()).context("creating the Kafka producer")?;
    let app = Application::build(config, producer.clone(), metrics)
        .with_context(|| format!("binding {}", config.http.http_addr))?;
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
    let applied = db::run_migrations(&config.database.database_url)
        .await
        .context("migrating PostgreSQL")?;
    tracing::info!(applied = ?applied, database = %config.database.database_url, "database migrated");
    Ok(())
}
