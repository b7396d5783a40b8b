//! The dashboard's pipeline panel: how fast events come in, how far each consumer group is
//! behind on each partition, the DLQ, and how long events take to reach `events`. Read from the
//! stores themselves (Kafka's log ends and the groups' committed offsets, PostgreSQL), so it is
//! right whichever processes run the consumers; at most one read a second, shared by every
//! viewer of this process.

use crate::actors::Role;
use crate::config::Config;
use crate::db::PgPool;
use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Double};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a reading is served to every viewer before the stores are read again.
const FRESH_FOR: Duration = Duration::from_secs(1);
const KAFKA_TIMEOUT: Duration = Duration::from_secs(3);
/// The newest events whose ingest-to-row time the latency figures summarize.
const LATENCY_SAMPLE: i64 = 200;

/// One reading of the pipeline.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Pipeline {
    pub at: DateTime<Utc>,
    /// Events per second written to the topic since the previous reading (all partitions).
    pub ingest_per_sec: Option<f64>,
    /// Per partition: its log end and each group's lag (null: the group has committed nothing).
    pub partitions: Vec<PartitionLag>,
    pub dlq: Option<DlqCounts>,
    /// Ingest to `events` row, over the newest events.
    pub latency_ms: Option<Latency>,
    /// What could not be read this time, and why.
    pub problems: Vec<String>,
}

/// One partition's end and lag per consumer group.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub partition: i32,
    pub end: i64,
    pub lag: BTreeMap<String, Option<i64>>,
}

/// Dead letters, all and not yet replayed.
#[derive(Debug, Clone, Serialize, QueryableByName)]
pub struct DlqCounts {
    #[diesel(sql_type = BigInt)]
    pub total: i64,
    #[diesel(sql_type = BigInt)]
    pub not_replayed: i64,
}

/// Percentiles of ingest-to-row time.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub events: usize,
}

#[derive(QueryableByName)]
struct Ms {
    #[diesel(sql_type = Double)]
    ms: f64,
}

/// Reads the pipeline for the dashboard; cheap to share.
pub struct PipelineProbe {
    pg: PgPool,
    kafka: crate::config::KafkaConfig,
    /// (group as shown, the group's full id).
    groups: Vec<(String, String)>,
    /// Clients made on first use: one per group (committed offsets are asked as the group).
    clients: OnceLock<Result<Vec<BaseConsumer>, String>>,
    last: tokio::sync::Mutex<Option<(Instant, Pipeline)>>,
    /// The previous reading's total of log ends, for the ingest rate.
    ends: Mutex<Option<(Instant, i64)>>,
}

impl PipelineProbe {
    /// A probe of the configured topic, groups and database.
    pub fn new(config: &Config, pg: PgPool) -> Arc<Self> {
        let groups = Role::ALL
            .iter()
            .map(|r| {
                (
                    r.group_id().to_owned(),
                    format!("{}{}", config.consumer.consumer_group_prefix, r.group_id()),
                )
            })
            .collect();
        Arc::new(PipelineProbe {
            pg,
            kafka: config.kafka.clone(),
            groups,
            clients: OnceLock::new(),
            last: tokio::sync::Mutex::new(None),
            ends: Mutex::new(None),
        })
    }

    /// The latest reading, at most a second old.
    pub async fn read(self: &Arc<Self>) -> Pipeline {
        let mut last = self.last.lock().await;
        if let Some((at, p)) = last.as_ref() {
            if at.elapsed() < FRESH_FOR {
                return p.clone();
            }
        }
        let mut reading = Pipeline {
            at: Utc::now(),
            ..Pipeline::default()
        };
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.kafka_lag()).await {
            Ok(Ok((partitions, total))) => {
                reading.partitions = partitions;
                reading.ingest_per_sec = self.rate(total);
            }
            Ok(Err(e)) => reading.problems.push(format!("Kafka: {e}")),
            Err(e) => reading.problems.push(format!("Kafka: {e}")),
        }
        match self.pg_figures().await {
            Ok((dlq, latency)) => {
                reading.dlq = Some(dlq);
                reading.latency_ms = latency;
            }
            Err(e) => reading.problems.push(format!("PostgreSQL: {e}")),
        }
        *last = Some((Instant::now(), reading.clone()));
        reading
    }

    fn rate(&self, total: i64) -> Option<f64> {
        let mut ends = self.ends.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let rate = ends.and_then(|(then, before)| {
            let secs = now.duration_since(then).as_secs_f64();
            (secs > 0.0 && total >= before).then(|| (total - before) as f64 / secs)
        });
        *ends = Some((now, total));
        rate
    }

    fn kafka_lag(&self) -> Result<(Vec<PartitionLag>, i64), String> {
        let clients = self
            .clients
            .get_or_init(|| {
                self.groups
                    .iter()
                    .map(|(_, id)| {
                        let mut cc = crate::kafka::client_config(&self.kafka).map_err(|e| e.to_string())?;
                        cc.set("group.id", id).set("enable.auto.commit", "false");
                        cc.create::<BaseConsumer>().map_err(|e| e.to_string())
                    })
                    .collect()
            })
            .as_ref()
            .map_err(Clone::clone)?;
        let first = <[BaseConsumer]>::first(clients).ok_or("no Kafka client")?;
        let topic = &self.kafka.kafka_topic;
        let metadata = first
            .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut out = Vec::new();
        let mut total = 0;
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition(topic, *p);
        }
        let committed: Vec<BTreeMap<i32, i64>> = clients
            .iter()
            .map(|c| {
                c.committed_offsets(tpl.clone(), KAFKA_TIMEOUT)
                    .map(|list| {
                        list.elements()
                            .iter()
                            .filter_map(|e| match e.offset() {
                                Offset::Offset(o) => Some((e.partition(), o)),
                                _ => None,
                            })
                            .collect()
                    })
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        for p in partitions {
            let (_, end) = first
                .fetch_watermarks(topic, p, KAFKA_TIMEOUT)
                .map_err(|e| e.to_string())?;
            total += end;
            let lag = self
                .groups
                .iter()
                .zip(&committed)
                .map(|((shown, _), offsets)| (shown.clone(), offsets.get(&p).map(|c| (end - c).max(0))))
                .collect();
            out.push(PartitionLag {
                partition: p,
                end,
                lag,
            });
        }
        Ok((out, total))
    }

    async fn pg_figures(&self) -> Result<(DlqCounts, Option<Latency>), String> {
        let mut conn = self.pg.get().await.map_err(|e| e.to_string())?;
        let dlq: DlqCounts = diesel::sql_query(
            "SELECT count(*) AS total, count(*) FILTER (WHERE replayed_at IS NULL) AS not_replayed FROM dlq",
        )
        .get_result(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
        // The newest events by event time (an index scan), not "created in the last minute",
        // which would read the whole table.
        let mut ms: Vec<f64> = diesel::sql_query(
            "SELECT (extract(epoch FROM created_at - ingested_at) * 1000)::float8 AS ms \
             FROM events ORDER BY event_timestamp DESC LIMIT $1",
        )
        .bind::<BigInt, _>(LATENCY_SAMPLE)
        .load::<Ms>(&mut conn)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|m| m.ms)
        .collect();
        ms.sort_by(f64::total_cmp);
        let pick = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
        let latency = (!ms.is_empty()).then(|| Latency {
            p50: pick(0.5),
            p99: pick(0.99),
            events: ms.len(),
        });
        Ok((dlq, latency))
    }
}
