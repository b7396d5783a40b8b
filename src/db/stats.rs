//! `player_statistics`: the stats aggregator's batched upserts and the read API's fallback.

use crate::schema::player_statistics;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Int4, Jsonb, Varchar};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Adds counts to players' rows: per player, how many events and how many of each type.
pub async fn add(
    conn: &mut AsyncPgConnection,
    per_player: HashMap<&str, (i32, Map<String, Value>)>,
) -> QueryResult<()> {
    if per_player.is_empty() {
        return Ok(());
    }
    let mut players = Vec::new();
    let mut totals = Vec::new();
    let mut breakdowns = Vec::new();
    for (player, (total, breakdown)) in per_player {
        players.push(player.to_owned());
        totals.push(total);
        breakdowns.push(Value::Object(breakdown));
    }
    // Raw SQL: the breakdowns merge key by key inside PostgreSQL (jsonb_each_text), and the batch
    // comes from `unnest`; neither is in diesel's query builder.
    super::Prepared(
        diesel::sql_query(UPSERT_STATS)
            .bind::<Array<Varchar>, _>(players)
            .bind::<Array<Int4>, _>(totals)
            .bind::<Array<Jsonb>, _>(breakdowns),
    )
    .execute(conn)
    .await
    .map(drop)
}

/// Adds a batch's counts to what is stored: totals add, breakdowns add key by key. Only the
/// batch's keys (one or two per player) are summed and laid over the stored object with `||`:
/// unpacking and regrouping every stored key as well cost PostgreSQL twice the CPU per row.
const UPSERT_STATS: &str = "\
INSERT INTO player_statistics AS ps (player_id, total_events, event_breakdown, updated_at, created_at)
SELECT p, t, b, now(), now() FROM unnest($1::varchar[], $2::int4[], $3::jsonb[]) AS u(p, t, b)
ON CONFLICT (player_id) DO UPDATE SET
    total_events = ps.total_events + EXCLUDED.total_events,
    event_breakdown = ps.event_breakdown || COALESCE((
        SELECT jsonb_object_agg(key, COALESCE((ps.event_breakdown ->> key)::bigint, 0) + value::bigint)
        FROM jsonb_each_text(EXCLUDED.event_breakdown)), '{}'::jsonb),
    updated_at = now()";

/// A player's stored counts.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = crate::schema::player_statistics)]
pub struct StatsRow {
    pub total_events: i32,
    pub event_breakdown: Value,
    pub updated_at: DateTime<Utc>,
}

/// The player's row, if any.
pub async fn of_player(conn: &mut AsyncPgConnection, player: &str) -> QueryResult<Option<StatsRow>> {
    player_statistics::table
        .filter(player_statistics::player_id.eq(player))
        .select(StatsRow::as_select())
        .first(conn)
        .await
        .optional()
}
