//! `forgotten_players` and `player_forget_requests`: the tombstones of forgotten players, what
//! each consumer role removed of them, and who asked. See `crate::forget`.

use crate::schema::{forgotten_players, player_forget_requests};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Varchar};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// A forgotten player's tombstone and what each role reported removing (`None`: not yet).
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize, PartialEq, Eq)]
#[diesel(table_name = forgotten_players)]
pub struct Tombstone {
    pub player_id: String,
    pub forgotten_at: chrono::DateTime<chrono::Utc>,
    pub requested_by: String,
    pub events_removed: Option<i64>,
    pub dlq_removed: Option<i64>,
    pub logger_done_at: Option<chrono::DateTime<chrono::Utc>>,
    pub statistics_removed: Option<i64>,
    pub stats_done_at: Option<chrono::DateTime<chrono::Utc>>,
    pub leaderboard_rows_removed: Option<i64>,
    pub leaderboard_done_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Tombstone {
    /// True once all three roles have removed the player from their stores.
    pub fn complete(&self) -> bool {
        self.logger_done_at.is_some() && self.stats_done_at.is_some() && self.leaderboard_done_at.is_some()
    }
}

/// Records a request to forget `player` and makes its tombstone if there is none. Answers the
/// tombstone and whether this request made it.
pub async fn request(
    conn: &mut AsyncPgConnection,
    player: &str,
    requested_by: &str,
    via: &str,
) -> QueryResult<(Tombstone, bool)> {
    diesel::insert_into(player_forget_requests::table)
        .values((
            player_forget_requests::player_id.eq(player),
            player_forget_requests::requested_by.eq(requested_by),
            player_forget_requests::via.eq(via),
        ))
        .execute(conn)
        .await?;
    let made = diesel::insert_into(forgotten_players::table)
        .values((
            forgotten_players::player_id.eq(player),
            forgotten_players::requested_by.eq(requested_by),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    let tombstone = forgotten_players::table
        .find(player)
        .select(Tombstone::as_select())
        .first(conn)
        .await?;
    Ok((tombstone, made == 1))
}

/// The tombstone of `player`, if forgotten.
pub async fn find(conn: &mut AsyncPgConnection, player: &str) -> QueryResult<Option<Tombstone>> {
    forgotten_players::table
        .find(player)
        .select(Tombstone::as_select())
        .first(conn)
        .await
        .optional()
}

/// Every forgotten player id (the consumers drop their records).
pub async fn all_ids(conn: &mut AsyncPgConnection) -> QueryResult<Vec<String>> {
    forgotten_players::table
        .select(forgotten_players::player_id)
        .load(conn)
        .await
}

/// Forgotten players whose removal `role` hasn't reported: a forget cut short (a crash, a
/// revoke) after later records had moved the role's stores past the forget record.
pub async fn pending_ids(
    conn: &mut AsyncPgConnection,
    role: crate::actors::Role,
) -> QueryResult<Vec<String>> {
    use crate::actors::Role;
    let pending = forgotten_players::table.select(forgotten_players::player_id);
    match role {
        Role::Logger => {
            pending
                .filter(forgotten_players::logger_done_at.is_null())
                .load(conn)
                .await
        }
        Role::Stats => {
            pending
                .filter(forgotten_players::stats_done_at.is_null())
                .load(conn)
                .await
        }
        Role::Leaderboard => {
            pending
                .filter(forgotten_players::leaderboard_done_at.is_null())
                .load(conn)
                .await
        }
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Game {
    #[diesel(sql_type = Varchar)]
    game_id: String,
}

/// Runs `delete` (a DELETE with the player as `$1`) and answers how many rows it removed.
async fn delete_counted(conn: &mut AsyncPgConnection, delete: &str, player: &str) -> QueryResult<i64> {
    // Raw SQL: a DELETE whose count is selected, in one round trip.
    let counted = format!("WITH d AS ({delete} RETURNING 1) SELECT count(*) AS n FROM d");
    Ok(diesel::sql_query(counted)
        .bind::<Varchar, _>(player)
        .get_result::<Count>(conn)
        .await?
        .n)
}

/// The dead letters `role` wrote that name the player: they may land after the logger's
/// deletion (added to the tombstone's count).
async fn remove_own_dead_letters(
    conn: &mut AsyncPgConnection,
    role: crate::actors::Role,
    player: &str,
) -> QueryResult<()> {
    diesel::sql_query(
        "WITH d AS (DELETE FROM dlq WHERE consumer_service = $2 AND original_event->>'player_id' = $1 RETURNING 1) \
         UPDATE forgotten_players SET dlq_removed = COALESCE(dlq_removed, 0) + (SELECT count(*) FROM d) \
         WHERE player_id = $1",
    )
    .bind::<Varchar, _>(player)
    .bind::<Varchar, _>(role.service())
    .execute(conn)
    .await
    .map(drop)
}

/// The logger's part: every `events` row of the player and every dead letter that names it.
/// Idempotent; the counts add up over repeats.
pub async fn remove_events(conn: &mut AsyncPgConnection, player: &str) -> QueryResult<()> {
    let events = delete_counted(conn, "DELETE FROM events WHERE player_id = $1", player).await?;
    let dlq = delete_counted(
        conn,
        "DELETE FROM dlq WHERE original_event->>'player_id' = $1",
        player,
    )
    .await?;
    diesel::sql_query(
        "UPDATE forgotten_players SET events_removed = COALESCE(events_removed, 0) + $2, \
         dlq_removed = COALESCE(dlq_removed, 0) + $3, logger_done_at = now() WHERE player_id = $1",
    )
    .bind::<Varchar, _>(player)
    .bind::<BigInt, _>(events)
    .bind::<BigInt, _>(dlq)
    .execute(conn)
    .await
    .map(drop)
}

/// The stats aggregator's part: the player's `player_statistics` row.
pub async fn remove_statistics(conn: &mut AsyncPgConnection, player: &str) -> QueryResult<()> {
    use crate::schema::player_statistics;
    let n = diesel::delete(player_statistics::table.find(player))
        .execute(conn)
        .await? as i64;
    remove_own_dead_letters(conn, crate::actors::Role::Stats, player).await?;
    diesel::sql_query(
        "UPDATE forgotten_players SET statistics_removed = COALESCE(statistics_removed, 0) + $2, \
         stats_done_at = now() WHERE player_id = $1",
    )
    .bind::<Varchar, _>(player)
    .bind::<BigInt, _>(n)
    .execute(conn)
    .await
    .map(drop)
}

/// The games whose stored top N holds `player`.
pub async fn board_games(conn: &mut AsyncPgConnection, player: &str) -> QueryResult<Vec<String>> {
    use crate::schema::leaderboards;
    leaderboards::table
        .filter(leaderboards::player_id.eq(player))
        .select(leaderboards::game_id)
        .distinct()
        .order(leaderboards::game_id)
        .load(conn)
        .await
}

/// The leaderboard manager's part: the player's `leaderboards` rows. Answers the games they
/// were in, whose boards must be written again from Redis to hold a full top N.
pub async fn remove_board_rows(conn: &mut AsyncPgConnection, player: &str) -> QueryResult<Vec<String>> {
    remove_own_dead_letters(conn, crate::actors::Role::Leaderboard, player).await?;
    let games: Vec<Game> =
        diesel::sql_query("DELETE FROM leaderboards WHERE player_id = $1 RETURNING game_id")
            .bind::<Varchar, _>(player)
            .load(conn)
            .await?;
    let n = games.len() as i64;
    diesel::sql_query(
        "UPDATE forgotten_players SET leaderboard_rows_removed = COALESCE(leaderboard_rows_removed, 0) + $2, \
         leaderboard_done_at = now() WHERE player_id = $1",
    )
    .bind::<Varchar, _>(player)
    .bind::<BigInt, _>(n)
    .execute(conn)
    .await?;
    let mut games: Vec<String> = games.into_iter().map(|g| g.game_id).collect();
    games.sort_unstable();
    games.dedup();
    Ok(games)
}
