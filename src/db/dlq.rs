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

/// One `dlq` row, as `gamemetrics dlq list|show` print it.
#[derive(Debug, Clone, diesel::Queryable, diesel::Selectable, serde::Serialize)]
#[diesel(table_name = crate::schema::dlq)]
pub struct DlqRow {
    pub id: i32,
    pub original_event: Value,
    pub error_message: String,
    pub consumer_service: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub kafka_topic: Option<String>,
    pub kafka_partition: Option<i32>,
    pub kafka_offset: Option<i64>,
    pub replayed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub replay_count: i32,
}

/// Which dead letters to list or replay.
#[derive(Debug, Clone, Default)]
pub struct DlqFilter {
    /// Only these rows (empty: any).
    pub ids: Vec<i32>,
    /// Only those the named consumer dead-lettered.
    pub service: Option<String>,
    /// Only those written at or after this time.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub limit: i64,
}

/// Dead letters matching `filter`, oldest first.
pub async fn list(conn: &mut AsyncPgConnection, filter: &DlqFilter) -> diesel::QueryResult<Vec<DlqRow>> {
    use crate::schema::dlq::dsl;
    use diesel::{ExpressionMethods, QueryDsl, SelectableHelper};
    let mut query = dsl::dlq.select(DlqRow::as_select()).into_boxed();
    if !filter.ids.is_empty() {
        query = query.filter(dsl::id.eq_any(filter.ids.clone()));
    }
    if let Some(service) = &filter.service {
        query = query.filter(dsl::consumer_service.eq(service.clone()));
    }
    if let Some(since) = filter.since {
        query = query.filter(dsl::created_at.ge(since));
    }
    query.order(dsl::id.asc()).limit(filter.limit).load(conn).await
}

/// Locks one dead letter for a replay (its replay is then produced and recorded, or not, in
/// that transaction).
pub async fn lock(conn: &mut AsyncPgConnection, id: i32) -> diesel::QueryResult<Option<DlqRow>> {
    use crate::schema::dlq::dsl;
    use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, SelectableHelper};
    dsl::dlq
        .select(DlqRow::as_select())
        .filter(dsl::id.eq(id))
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Records that a dead letter was produced to the topic again.
pub async fn mark_replayed(conn: &mut AsyncPgConnection, id: i32) -> diesel::QueryResult<()> {
    use crate::schema::dlq::dsl;
    use diesel::{ExpressionMethods, QueryDsl};
    diesel::update(dsl::dlq.filter(dsl::id.eq(id)))
        .set((
            dsl::replayed_at.eq(diesel::dsl::now),
            dsl::replay_count.eq(dsl::replay_count + 1),
        ))
        .execute(conn)
        .await
        .map(drop)
}
