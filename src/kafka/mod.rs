//! Kafka: client configuration, the event producer, topic administration (and topic ids, which
//! tell one log from another) and the embedded broker.
//!
//! Partitioning: messages are keyed by `player_id` and placed with `murmur2_random`, librdkafka's
//! name for the Java client's default partitioner, so every Kafka client agrees on a player's
//! partition. The seed's "hash(player_id) % 3" is this: `(murmur2(key) & 0x7fffffff) % partitions`.

mod admin;
mod embedded;
mod producer;
mod topic_id;

pub use admin::{ensure_topic, TopicSpec};
pub use embedded::EmbeddedKafka;
pub use producer::{
    Delivery, EventProducer, ProduceError, WireEvent, CONTROL_HEADER, FORGET_PLAYER, REPLAY_FOR_HEADER,
};
pub use topic_id::{describe_topic_id, TopicId, TopicIdError};

use crate::config::{ConfigError, KafkaConfig};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;

/// Routes librdkafka's logs into `tracing` at levels that match our policy: a broker that is
/// briefly unreachable is a warning (the client reconnects and retries by itself), not an error.
#[derive(Clone, Copy, Default)]
pub struct KafkaContext;

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(target: "librdkafka", facility = fac, "{message}")
            }
            RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility = fac, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility = fac, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility = fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", error = %error, reason, "Kafka client error");
    }
}

/// The librdkafka settings every client of ours shares: brokers plus `KAFKA_EXTRA_CONFIG`.
pub fn client_config(cfg: &KafkaConfig) -> Result<ClientConfig, ConfigError> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", cfg.brokers());
    for (k, v) in cfg.extra_properties()? {
        cc.set(k, v);
    }
    Ok(cc)
}
