//! Topic administration: `gamemetrics migrate` creates the raw topic instead of trusting
//! broker auto-creation, which would pick its own partition count and retention.

use super::KafkaContext;
use crate::config::{ConfigError, KafkaConfig};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::time::Duration;

/// What the topic should look like.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub retention_ms: u64,
}

impl TopicSpec {
    /// The raw events topic as configured.
    pub fn from_config(cfg: &KafkaConfig) -> Self {
        TopicSpec {
            name: cfg.kafka_topic.clone(),
            partitions: cfg.kafka_topic_partitions,
            retention_ms: cfg.kafka_topic_retention_ms,
        }
    }
}

/// Errors from topic administration.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot reach Kafka at {brokers}: {source}")]
    Unreachable { brokers: String, source: KafkaError },
    /// The broker answers but refuses our credentials, TLS or ACLs: retrying won't help.
    #[error("{0}")]
    Refused(String),
    #[error("creating topic {topic} failed: {code}")]
    Create { topic: String, code: RDKafkaErrorCode },
}

/// Creates the topic unless it exists; returns true when it was created now.
///
/// Replication is min(3, brokers) with `min.insync.replicas` one less (at least 1), so a
/// one-node dev broker works and a three-node cluster survives losing a broker without
/// losing an acknowledged write.
pub async fn ensure_topic(cfg: &KafkaConfig, spec: &TopicSpec) -> Result<bool, AdminError> {
    let context = KafkaContext::default();
    // librdkafka reports a refused login to the context, and the request merely times out.
    let failed = |source: KafkaError| match context.access_problem() {
        Some(problem) => AdminError::Refused(problem),
        None => AdminError::Unreachable {
            brokers: cfg.brokers().to_owned(),
            source,
        },
    };
    let admin: AdminClient<KafkaContext> = super::client_config(cfg)?
        .create_with_context(context.clone())
        .map_err(failed)?;
    let brokers = broker_count(&admin, Duration::from_secs(10)).map_err(failed)?;
    let replication = brokers.clamp(1, 3);
    let min_isr = (replication - 1).max(1).to_string();
    let retention = spec.retention_ms.to_string();
    let topic = NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(replication))
        .set("retention.ms", &retention)
        .set("min.insync.replicas", &min_isr);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics([&topic], &opts).await.map_err(failed)?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(false),
        Some(Err((topic, code))) => {
            let why = format!("creating topic {topic}: {code}");
            Err(match super::access_problem(code, &why) {
                Some(problem) => AdminError::Refused(problem),
                None => AdminError::Create { topic, code },
            })
        }
        None => Err(AdminError::Create {
            topic: spec.name.clone(),
            code: RDKafkaErrorCode::Fail,
        }),
    }
}

fn broker_count(admin: &AdminClient<KafkaContext>, timeout: Duration) -> Result<i32, KafkaError> {
    let md = admin.inner().fetch_metadata(None, timeout)?;
    Ok(i32::try_from(md.brokers().len()).unwrap_or(i32::MAX))
}
