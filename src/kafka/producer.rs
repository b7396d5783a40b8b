//! The event producer: one JSON message per event, acknowledged by all in-sync replicas.

use crate::config::{ConfigError, KafkaConfig};
use crate::domain::GameEvent;
use crate::metrics::Metrics;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Where the broker stored a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
}

/// Why a produce did not succeed. All but `TooLarge` are the broker's trouble, not the client's:
/// the HTTP layer answers them with 503 and `Retry-After`; `TooLarge` is a 413.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("Kafka did not acknowledge the event within {0:?}")]
    Timeout(Duration),
    #[error("the producer queue is full; Kafka is not keeping up")]
    QueueFull,
    #[error("the event is larger than the broker accepts")]
    TooLarge,
    #[error("Kafka refused the event: {0}")]
    Kafka(#[source] KafkaError),
}

impl ProduceError {
    /// A short label for the `kafka_produce_errors_total{reason}` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            ProduceError::Timeout(_) => "timeout",
            ProduceError::QueueFull => "queue_full",
            ProduceError::TooLarge => "too_large",
            ProduceError::Kafka(_) => "kafka",
        }
    }
}

/// Produces events to the raw topic. Cheap to clone: all clones share one librdkafka producer.
#[derive(Clone)]
pub struct EventProducer {
    producer: FutureProducer<super::KafkaContext>,
    /// The producer's context (clones share it): what access problem Kafka reported.
    access: super::KafkaContext,
    topic: Arc<str>,
    timeout: Duration,
    metrics: Metrics,
}

impl EventProducer {
    /// Builds the producer. Nothing is sent until the first event, so this succeeds without a broker.
    pub fn new(cfg: &KafkaConfig, metrics: Metrics) -> Result<Self, ConfigError> {
        let timeout = cfg.produce_timeout();
        let mut cc = super::client_config(cfg)?;
        cc.set("acks", "all")
            // Idempotence: librdkafka's internal retries can never write an event twice or
            // reorder a player's events within a partition.
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            // librdkafka gives up on a message at the same moment the HTTP handler stops
            // waiting, so a 503 means "not written" in all but the rarest race, and the
            // client's retry (with the same event_id) is what makes that race harmless.
            .set("message.timeout.ms", timeout.as_millis().to_string())
            .set("linger.ms", cfg.kafka_linger_ms.to_string())
            .set("compression.type", "lz4");
        let access = super::KafkaContext::reporting(metrics.health.clone());
        let producer: FutureProducer<super::KafkaContext> =
            cc.create_with_context(access.clone())
                .map_err(|e| ConfigError::Invalid {
                    var: "KAFKA_EXTRA_CONFIG",
                    reason: format!("librdkafka refused the producer configuration: {e}"),
                })?;
        Ok(EventProducer {
            producer,
            access,
            topic: cfg.kafka_topic.as_str().into(),
            timeout,
            metrics,
        })
    }

    /// Writes one event and waits until every in-sync replica has it (or the timeout passes).
    pub async fn send(&self, event: &GameEvent) -> Result<Delivery, ProduceError> {
        self.send_wire(&WireEvent::from(event)).await
    }

    /// [`Self::send`] for an event already serialized.
    pub async fn send_wire(&self, event: &WireEvent) -> Result<Delivery, ProduceError> {
        self.send_for(event, None).await
    }

    /// Writes a dead letter's event again for the named consumers only (`services`, by their
    /// service names): the others already applied it, or skipped it for good reason. See
    /// [`REPLAY_FOR_HEADER`].
    pub async fn replay(&self, event: &GameEvent, services: &[&str]) -> Result<Delivery, ProduceError> {
        self.send_for(&WireEvent::from(event), Some(&services.join(",")))
            .await
    }

    /// Writes a control record asking every consumer to forget `player`, behind every event of
    /// theirs already written (same key, same partition).
    pub async fn forget_player(&self, player: &str) -> Result<Delivery, ProduceError> {
        let value = serde_json::json!({ "player_id": player }).to_string();
        let record = FutureRecord::to(&self.topic)
            .key(player)
            .payload(value.as_bytes())
            .headers(OwnedHeaders::new_with_capacity(1).insert(Header {
                key: CONTROL_HEADER,
                value: Some(FORGET_PLAYER),
            }));
        self.deliver(record).await
    }

    /// Sends one record and waits for its delivery report.
    async fn deliver(&self, record: FutureRecord<'_, str, [u8]>) -> Result<Delivery, ProduceError> {
        // The outer timeout is a guard against a hang the delivery timeout somehow misses: the
        // API promises an answer, never a stuck connection.
        let guard = self.timeout + Duration::from_millis(500);
        match tokio::time::timeout(guard, self.producer.send(record, Timeout::After(self.timeout))).await {
            Err(_) => Err(ProduceError::Timeout(self.timeout)),
            Ok(Ok(delivery)) => {
                self.access.access_ok();
                Ok(Delivery {
                    partition: delivery.partition,
                    offset: delivery.offset,
                })
            }
            Ok(Err((err, _msg))) => {
                self.access.report(&err, "");
                Err(classify(err, self.timeout))
            }
        }
    }

    async fn send_for(&self, event: &WireEvent, replay_for: Option<&str>) -> Result<Delivery, ProduceError> {
        // DEBUG for the same reason as the request's span (http::observe); the warning below
        // names the event itself.
        let span = tracing::debug_span!("produce", event_id = %event.event_id, topic = %self.topic);
        async {
            let started = Instant::now();
            let result = self.send_inner(event, replay_for).await;
            self.metrics
                .produce_latency
                .observe(started.elapsed().as_secs_f64());
            match &result {
                Ok(d) => tracing::debug!(partition = d.partition, offset = d.offset, "produced"),
                Err(e) => {
                    self.metrics.produce_errors.with_label_values(&[e.reason()]).inc();
                    tracing::warn!(event_id = %event.event_id, topic = %self.topic, error = %e, "produce failed");
                }
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn send_inner(
        &self,
        event: &WireEvent,
        replay_for: Option<&str>,
    ) -> Result<Delivery, ProduceError> {
        let event_id = event.event_id.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: "event_type",
                value: Some(event.event_type.as_str()),
            })
            .insert(Header {
                key: "event_id",
                value: Some(event_id.as_str()),
            });
        if let Some(services) = replay_for {
            headers = headers.insert(Header {
                key: REPLAY_FOR_HEADER,
                value: Some(services),
            });
        }
        let record = FutureRecord::to(&self.topic)
            .key(event.player_id.as_str())
            .payload(event.payload.as_slice())
            .headers(headers);
        self.deliver(record).await
    }

    /// Asks the cluster for the topic's metadata: the readiness check. Fails with what is wrong,
    /// saying so plainly when the broker refuses our credentials or ACLs.
    pub async fn check_ready(&self, timeout: Duration) -> Result<(), String> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        // fetch_metadata blocks its thread; keep it off the async workers.
        let answer = tokio::task::spawn_blocking(move || {
            let md = producer.client().fetch_metadata(Some(&topic), timeout)?;
            match md
                .topics()
                .first()
                .map(|t| (t.error(), t.partitions().is_empty()))
            {
                Some((None, false)) => Ok(()),
                Some((Some(e), _)) => Err(KafkaError::MetadataFetch(RDKafkaErrorCode::from(e))),
                _ => Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                )),
            }
        })
        .await
        .unwrap_or(Err(KafkaError::MetadataFetch(RDKafkaErrorCode::Fail)));
        let context = &self.access;
        match answer {
            // Metadata can be read with only Describe: a missing Write ACL shows in deliveries
            // (as the topic's refusal, or the cluster's when the idempotent producer asks for
            // its id, whichever librdkafka reports last), and stays reported until one succeeds.
            Ok(())
                if matches!(
                    context.access_code(),
                    Some(
                        RDKafkaErrorCode::TopicAuthorizationFailed
                            | RDKafkaErrorCode::ClusterAuthorizationFailed
                    )
                ) =>
            {
                Err(context.access_problem().unwrap_or_default())
            }
            Ok(()) => {
                context.access_ok();
                Ok(())
            }
            Err(e) => {
                context.report(&e, &format!("topic {}", self.topic));
                Err(context.access_problem().unwrap_or_else(|| e.to_string()))
            }
        }
    }

    /// The producer's fatal error, if it had one: it can't produce again until restarted.
    pub fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| super::access_problem(code, &reason).unwrap_or(reason))
    }

    /// Waits for queued messages to be delivered, for a clean shutdown.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(Timeout::After(timeout)) {
            tracing::warn!(error = %e, "producer flush at shutdown did not complete");
        }
    }
}

fn classify(err: KafkaError, timeout: Duration) -> ProduceError {
    match err.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => ProduceError::Timeout(timeout),
        Some(RDKafkaErrorCode::QueueFull) => ProduceError::QueueFull,
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => ProduceError::TooLarge,
        _ => ProduceError::Kafka(err),
    }
}

/// A record header marking a control record for the consumers rather than an event; its value
/// says which ([`FORGET_PLAYER`]).
pub const CONTROL_HEADER: &str = "gamemetrics-control";

/// [`CONTROL_HEADER`]'s value on a record asking every consumer to forget a player: its key is
/// the player (so it follows their events on their partition), its value `{"player_id": …}`.
pub const FORGET_PLAYER: &str = "forget-player";

/// A record header naming, comma-separated, the only consumers (by service name) that apply
/// the record: a replayed dead letter, which the other consumers applied the first time.
pub const REPLAY_FOR_HEADER: &str = "gamemetrics-replay-for";

/// An event as written to Kafka: its message value and what the key and headers need. A batch
/// keeps its events in this form, a few hundred bytes each, rather than as parsed JSON trees,
/// which can take many times the size of their text.
#[derive(Debug, Clone)]
pub struct WireEvent {
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub player_id: String,
    /// [`GameEvent::to_wire`].
    pub payload: Vec<u8>,
}

impl From<&GameEvent> for WireEvent {
    fn from(event: &GameEvent) -> Self {
        WireEvent {
            event_id: event.event_id,
            event_type: event.event_type.as_str().to_owned(),
            player_id: event.player_id.as_str().to_owned(),
            payload: event.to_wire(),
        }
    }
}
