//! The embedded broker for `gamemetrics dev` without `KAFKA_BROKERS`: librdkafka's in-process
//! mock cluster. It keeps nothing across restarts and silently drops old data past a few MiB per
//! partition, so it exists for a zero-setup demo only, never as proof of durability.

use super::TopicSpec;
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// A running mock cluster; it stops when dropped.
pub struct EmbeddedKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedKafka {
    /// Starts a three-broker mock cluster holding the topic.
    pub fn start(topic: &TopicSpec) -> Result<Self, KafkaError> {
        let cluster = MockCluster::new(3)?;
        // The mock cluster has no admin API: the topic is created through the mock interface.
        cluster.create_topic(&topic.name, topic.partitions, 3)?;
        tracing::warn!(
            bootstrap = %cluster.bootstrap_servers(),
            "EMBEDDED KAFKA: events live in this process's memory only and are lost when it stops; \
             set KAFKA_BROKERS to use a real broker"
        );
        Ok(EmbeddedKafka { cluster })
    }

    /// The bootstrap servers string clients connect to.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}
