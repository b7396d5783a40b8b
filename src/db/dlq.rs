//! `dlq`: records that can never be applied, with the reason and where they sit on the topic.

use super::PartitionLog;
use diesel::sql_types::{Array, Int4, Int8, Jsonb, Text, Varchar};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::Value;

/// One dead letter.
#[derive(Debug, Clone)]
pub struct DlqEntry {
    pub offset: i64,
    /// The record as read (`{"raw": …}` when it wasn't JSON).
    pub original: Value,
    pub reason: String,
}

/// Writes dead letters of one partition's log; one already written (a record re-read after a
/// crash) is skipped.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    p: PartitionLog<'_>,
    letters: &[DlqEntry],
) -> diesel::QueryResult<()> {
    if letters.is_empty() {
        return Ok(());
    }
    let originals: Vec<&Value> = letters.iter().map(|e| &e.original).collect();
    let reasons: Vec<&str> = letters.iter().map(|e| e.reason.as_str()).collect();
    let offsets: Vec<i64> = letters.iter().map(|e| e.offset).collect();
    // Raw SQL: a batch from `unnest` of bound arrays (see `events::EventColumns::insert`).
    diesel::sql_query(
        "INSERT INTO dlq (original_event, error_message, consumer_service, kafka_topic, kafka_partition, \
                          kafka_offset, kafka_topic_id) \
         SELECT o, m, $3, $4, $5, off, $7 FROM unnest($1::jsonb[], $2::text[], $6::bigint[]) AS t(o, m, off) \
         ON CONFLICT (consumer_service, kafka_topic, kafka_topic_id, kafka_partition, kafka_offset) DO NOTHING",
    )
    .bind::<Array<Jsonb>, _>(originals)
    .bind::<Array<Text>, _>(reasons)
    .bind::<Varchar, _>(p.service)
    .bind::<Varchar, _>(p.topic)
    .bind::<Int4, _>(p.partition)
    .bind::<Array<Int8>, _>(offsets)
    .bind::<Varchar, _>(p.log)
    .execute(conn)
    .await
    .map(drop)
}
