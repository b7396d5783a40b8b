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
use crate::metrics::Health;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Routes librdkafka's logs into `tracing` at levels that match our policy: a broker that is
/// briefly unreachable is a warning (the client reconnects and retries by itself), not an error.
/// Errors that waiting won't fix (credentials, ACLs, TLS: [`access_problem`]) are an ERROR, kept
/// until access works again ([`KafkaContext::access_ok`]) and, given a [`Health`], reported to
/// `/readyz`. Clones share what they know.
#[derive(Clone, Default)]
pub struct KafkaContext {
    access: Arc<Access>,
    health: Option<Health>,
}

#[derive(Default)]
struct Access {
    /// Whether `problem` holds one: read on every delivery, so it must not take the lock.
    any: AtomicBool,
    problem: Mutex<Option<(RDKafkaErrorCode, String)>>,
}

/// The `/readyz` component of [`KafkaContext`]'s access problems.
const ACCESS: &str = "kafka access";

impl KafkaContext {
    /// A context that also reports access problems to `health`.
    pub fn reporting(health: Health) -> Self {
        KafkaContext {
            access: Arc::default(),
            health: Some(health),
        }
    }

    /// The access problem seen last, while access has not worked since.
    pub fn access_problem(&self) -> Option<String> {
        self.lock().as_ref().map(|(_, p)| p.clone())
    }

    /// The code of that problem.
    pub fn access_code(&self) -> Option<RDKafkaErrorCode> {
        self.lock().as_ref().map(|(c, _)| *c)
    }

    /// Access works (a delivery, a fetched record, a joined group): forgets the problem.
    pub fn access_ok(&self) {
        if !self.access.any.load(Ordering::Relaxed) {
            return;
        }
        let mut access = self.lock();
        self.access.any.store(false, Ordering::Relaxed);
        if access.take().is_some() {
            if let Some(h) = &self.health {
                h.clear(ACCESS);
            }
            tracing::info!(target: "librdkafka", "Kafka access works again");
        }
    }

    /// Records `error` if it is an access problem; answers whether it was.
    pub fn report(&self, error: &KafkaError, reason: &str) -> bool {
        let Some((code, problem)) = error
            .rdkafka_error_code()
            .and_then(|code| Some((code, access_problem(code, reason)?)))
        else {
            return false;
        };
        let mut access = self.lock();
        // Once per kind of problem, not on every reconnect: librdkafka retries for ever.
        if access.as_ref().map(|(c, _)| *c) != Some(code) {
            tracing::error!(target: "librdkafka", problem = %problem, "Kafka refuses this process");
        }
        if let Some(h) = &self.health {
            h.set(ACCESS, problem.clone());
        }
        *access = Some((code, problem));
        self.access.any.store(true, Ordering::Relaxed);
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(RDKafkaErrorCode, String)>> {
        self.access.problem.lock().unwrap_or_else(|p| p.into_inner())
    }
}

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
        if !self.report(&error, reason) {
            tracing::warn!(target: "librdkafka", error = %error, reason, "Kafka client error");
        }
    }
}

/// What an error code means when it is one that retrying won't fix (the broker refuses our
/// credentials, our TLS, or our ACLs), with librdkafka's `reason`; `None` for every other code.
pub fn access_problem(code: RDKafkaErrorCode, reason: &str) -> Option<String> {
    use RDKafkaErrorCode as C;
    let what = match code {
        C::Authentication | C::SaslAuthenticationFailed => {
            "Kafka refuses this process's credentials: check sasl.username and sasl.password in \
             KAFKA_EXTRA_CONFIG against the KafkaUser's Secret"
        }
        C::SSL => "TLS to Kafka failed: check ssl.ca.location in KAFKA_EXTRA_CONFIG (the CA of the cluster's listener)",
        C::TopicAuthorizationFailed => "Kafka refuses this user the topic: check the KafkaUser's ACLs",
        C::GroupAuthorizationFailed => "Kafka refuses this user the consumer group: check the KafkaUser's ACLs",
        // librdkafka's idempotent producer asks for a producer id first: allowed with Write on
        // any topic (KIP-679), so this is what a missing Write ACL looks like at start.
        C::ClusterAuthorizationFailed if reason.contains("idempotence") => {
            "Kafka refuses this user idempotent writes: check the KafkaUser's ACLs (Write on the topic)"
        }
        C::ClusterAuthorizationFailed | C::TransactionalIdAuthorizationFailed => {
            "Kafka refuses this user a cluster operation: check the KafkaUser's ACLs"
        }
        _ => return None,
    };
    Some(if reason.is_empty() {
        what.to_owned()
    } else {
        format!("{what} ({reason})")
    })
}

/// The librdkafka settings every client of ours shares: brokers plus `KAFKA_EXTRA_CONFIG`.
pub fn client_config(cfg: &KafkaConfig) -> Result<ClientConfig, ConfigError> {
    tuned_client_config(cfg, &[])
}

/// [`client_config`] over tuning `defaults` that `KAFKA_EXTRA_CONFIG` may override; settings
/// the caller sets afterwards (correctness, not tuning) override both.
pub fn tuned_client_config(
    cfg: &KafkaConfig,
    defaults: &[(&str, &str)],
) -> Result<ClientConfig, ConfigError> {
    let mut cc = ClientConfig::new();
    for (k, v) in defaults {
        cc.set(*k, *v);
    }
    cc.set("bootstrap.servers", cfg.brokers());
    for (k, v) in cfg.extra_properties()? {
        cc.set(k, v);
    }
    Ok(cc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_config_overrides_tuning_defaults_and_leaves_the_others() {
        let cfg = KafkaConfig {
            kafka_brokers: Some("b:9092".into()),
            kafka_topic: "t".into(),
            kafka_topic_partitions: 3,
            kafka_topic_retention_ms: 1,
            produce_timeout_ms: 1,
            kafka_linger_ms: 1,
            kafka_extra_config: "fetch.wait.max.ms=7".parse().unwrap(),
        };
        let defaults = [("fetch.wait.max.ms", "100"), ("fetch.queue.backoff.ms", "50")];
        let cc = tuned_client_config(&cfg, &defaults).unwrap();
        assert_eq!(cc.get("fetch.wait.max.ms"), Some("7"));
        assert_eq!(cc.get("fetch.queue.backoff.ms"), Some("50"));
        assert_eq!(cc.get("bootstrap.servers"), Some("b:9092"));
    }

    #[test]
    fn refusals_are_named_and_everything_else_is_left_to_retry() {
        let p = access_problem(RDKafkaErrorCode::Authentication, "SASL authentication error").unwrap();
        assert!(
            p.contains("credentials") && p.ends_with("(SASL authentication error)"),
            "{p}"
        );
        let p = access_problem(RDKafkaErrorCode::GroupAuthorizationFailed, "").unwrap();
        assert!(p.contains("consumer group") && !p.contains('('), "{p}");
        let p = access_problem(
            RDKafkaErrorCode::ClusterAuthorizationFailed,
            "Failed to acquire idempotence PID",
        )
        .unwrap();
        assert!(p.contains("Write on the topic"), "{p}");
        for transient in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::NotEnoughReplicas,
        ] {
            assert_eq!(access_problem(transient, "x"), None, "{transient:?}");
        }
    }

    #[test]
    fn a_problem_is_reported_until_access_works_again() {
        let health = Health::default();
        let ctx = KafkaContext::reporting(health.clone());
        assert!(!ctx.report(&KafkaError::Global(RDKafkaErrorCode::AllBrokersDown), "down"));
        assert!(health.problems().is_empty());
        assert!(ctx.report(
            &KafkaError::MessageConsumption(RDKafkaErrorCode::TopicAuthorizationFailed),
            ""
        ));
        assert!(health.problems()[ACCESS].contains("the topic"));
        // Clones share it: the poll loop's copy clears what the client's callback reported.
        ctx.clone().access_ok();
        assert!(health.problems().is_empty());
        assert_eq!(ctx.access_problem(), None);
    }
}
