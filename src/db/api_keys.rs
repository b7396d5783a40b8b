//! `api_keys`: per-game keys and admin keys, by their public id; only a SHA-256 of the secret
//! is kept.

use crate::schema::api_keys;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// A stored key.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_keys)]
pub struct KeyRow {
    pub key_id: String,
    /// The game a per-game key writes and reads; `None` for an admin key.
    pub game_id: Option<String>,
    pub secret_sha256: String,
    pub rate_limit_rps: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub is_admin: bool,
}

/// The key with this id, if any.
pub async fn find(conn: &mut AsyncPgConnection, id: &str) -> QueryResult<Option<KeyRow>> {
    api_keys::table
        .filter(api_keys::key_id.eq(id))
        .select(KeyRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Stores a new key: for one game, or (`game` `None`) an admin key.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    id: &str,
    game: Option<&str>,
    secret_sha256: &str,
    rate_limit_rps: Option<i32>,
) -> QueryResult<()> {
    diesel::insert_into(api_keys::table)
        .values((
            api_keys::key_id.eq(id),
            api_keys::game_id.eq(game),
            api_keys::is_admin.eq(game.is_none()),
            api_keys::secret_sha256.eq(secret_sha256),
            api_keys::rate_limit_rps.eq(rate_limit_rps),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// Revokes a live key now; answers whether one was.
pub async fn revoke(conn: &mut AsyncPgConnection, id: &str) -> QueryResult<bool> {
    diesel::update(
        api_keys::table
            .filter(api_keys::key_id.eq(id))
            .filter(api_keys::revoked_at.is_null()),
    )
    .set(api_keys::revoked_at.eq(diesel::dsl::now))
    .execute(conn)
    .await
    .map(|n| n > 0)
}

/// Every key, oldest first.
pub async fn all(conn: &mut AsyncPgConnection) -> QueryResult<Vec<KeyRow>> {
    api_keys::table
        .order(api_keys::created_at)
        .select(KeyRow::as_select())
        .load(conn)
        .await
}
