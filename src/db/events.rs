//! `events`: the logger's batched inserts and the read API's lookups.

use crate::domain::GameEvent;
use crate::schema::events;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Jsonb, Text, Timestamptz, Uuid as SqlUuid, Varchar};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::Value;

/// Events as column arrays, for one `INSERT … SELECT FROM unnest(…)` per batch.
#[derive(Default)]
pub struct EventColumns {
    ids: Vec<uuid::Uuid>,
    types: Vec<String>,
    players: Vec<String>,
    games: Vec<String>,
    timestamps: Vec<DateTime<Utc>>,
    ingested: Vec<DateTime<Utc>>,
    data: Vec<Value>,
}

impl EventColumns {
    /// Adds one event to the batch.
    pub fn push(&mut self, e: &GameEvent) {
        self.ids.push(e.event_id);
        self.types.push(e.event_type.as_str().to_owned());
        self.players.push(e.player_id.as_str().to_owned());
        self.games.push(e.game_id.as_str().to_owned());
        self.timestamps.push(e.timestamp);
        self.ingested.push(e.ingested_at);
        self.data.push(Value::Object(e.data.clone()));
    }

    /// Inserts the batch; an event already stored (same id in the same game) is skipped.
    pub async fn insert(self, conn: &mut AsyncPgConnection) -> QueryResult<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        // Raw SQL: diesel can't express a multi-row insert from `unnest` of bound arrays, which
        // sends a batch as seven parameters instead of seven per row.
        super::Prepared(
            diesel::sql_query(
                "INSERT INTO events (event_id, event_type, player_id, game_id, event_timestamp, ingested_at, data) \
                 SELECT * FROM unnest($1::uuid[], $2::varchar[], $3::varchar[], $4::varchar[], \
                                      $5::timestamptz[], $6::timestamptz[], $7::jsonb[]) \
                 ON CONFLICT (event_id, game_id) DO NOTHING",
            )
            .bind::<Array<SqlUuid>, _>(self.ids)
            .bind::<Array<Varchar>, _>(self.types)
            .bind::<Array<Varchar>, _>(self.players)
            .bind::<Array<Varchar>, _>(self.games)
            .bind::<Array<Timestamptz>, _>(self.timestamps)
            .bind::<Array<Timestamptz>, _>(self.ingested)
            .bind::<Array<Jsonb>, _>(self.data),
        )
        .execute(conn)
        .await
        .map(drop)
    }
}

/// An `events` row as the read API answers it.
#[derive(Debug, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = crate::schema::events)]
pub struct EventRow {
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub player_id: String,
    pub game_id: String,
    pub event_timestamp: DateTime<Utc>,
    pub ingested_at: DateTime<Utc>,
    pub data: Value,
    pub created_at: DateTime<Utc>,
}

/// The events stored under `id`, oldest first: one per game that used the id.
pub async fn by_id(conn: &mut AsyncPgConnection, id: uuid::Uuid) -> QueryResult<Vec<EventRow>> {
    events::table
        .filter(events::event_id.eq(id))
        .order((events::ingested_at, events::game_id))
        .select(EventRow::as_select())
        .load(conn)
        .await
}

/// A page of `player`'s events before the cursor `(timestamp, id)`, newest first, of one game
/// or all.
pub async fn of_player(
    conn: &mut AsyncPgConnection,
    player: &str,
    before: (DateTime<Utc>, uuid::Uuid),
    game: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<EventRow>> {
    // Raw SQL: the row comparison `(a, b) < (x, y)` is what lets PostgreSQL serve the page as one
    // range scan of idx_events_player_recent; diesel has no row-value comparison, and the
    // equivalent OR form is planned as a filter.
    diesel::sql_query(
        "SELECT event_id, event_type, player_id, game_id, event_timestamp, ingested_at, data, created_at \
         FROM events WHERE player_id = $1 AND (event_timestamp, event_id) < ($2, $3) \
         AND ($5::text IS NULL OR game_id = $5) \
         ORDER BY event_timestamp DESC, event_id DESC LIMIT $4",
    )
    .bind::<Text, _>(player)
    .bind::<Timestamptz, _>(before.0)
    .bind::<SqlUuid, _>(before.1)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .bind::<diesel::sql_types::Nullable<Text>, _>(game)
    .load(conn)
    .await
}
