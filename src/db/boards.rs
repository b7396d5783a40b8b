//! `leaderboards`: the top N of every current board, rewritten under per-board advisory locks.

use crate::domain::leaderboard::{BoardTop, Period};
use diesel::sql_types::{Array, Int4, Int8, Text, Varchar};
use diesel::QueryResult;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use std::collections::HashMap;

/// Takes the transaction-scoped advisory lock of every period's board of these games, in one
/// fixed order so two writers can't deadlock.
pub async fn lock(conn: &mut AsyncPgConnection, game_ids: &[String]) -> QueryResult<()> {
    let (mut games, mut periods) = (Vec::new(), Vec::new());
    for g in game_ids {
        for p in Period::ALL {
            games.push(g.as_str());
            periods.push(p.as_str());
        }
    }
    // Raw SQL: advisory locks are functions diesel's query builder doesn't call.
    diesel::sql_query(
        "SELECT pg_advisory_xact_lock(h) FROM \
         (SELECT DISTINCT hashtext(g || '/' || p) AS h FROM unnest($1::text[], $2::text[]) AS t(g, p) ORDER BY h) AS s",
    )
    .bind::<Array<Text>, _>(&games)
    .bind::<Array<Text>, _>(&periods)
    .execute(conn)
    .await
    .map(drop)
}

/// A row of `leaderboards` as [`write_top`] compares it.
#[derive(diesel::QueryableByName)]
struct Held {
    #[diesel(sql_type = Varchar)]
    game_id: String,
    #[diesel(sql_type = Varchar)]
    period: String,
    #[diesel(sql_type = Varchar)]
    player_id: String,
    #[diesel(sql_type = Int4)]
    rank: i32,
    #[diesel(sql_type = Int8)]
    score: i64,
}

/// Makes the table hold exactly these top N for every board given. Callers hold the boards'
/// advisory locks ([`lock`]).
///
/// It reads what the boards hold and writes only the difference: rows that left the top N are
/// deleted and rows that are new or moved are upserted, each by primary key. Every statement
/// is bounded by the touched games' rows (`game_id = ANY`, the key's first column), not by the
/// table: the former single anti-join DELETE scanned the whole table and sorted both sides
/// under the database's collation, ~340 ms for 50 games' boards in a table of 2,000 games.
pub async fn write_top(conn: &mut AsyncPgConnection, boards: &[BoardTop]) -> QueryResult<()> {
    if boards.is_empty() {
        return Ok(());
    }
    let board_games: Vec<&str> = boards.iter().map(|b| b.game_id.as_str()).collect();
    let board_periods: Vec<&str> = boards.iter().map(|b| b.period.as_str()).collect();
    // Raw SQL: `unnest` of bound arrays, which diesel's query builder doesn't write.
    let rows: Vec<Held> = diesel::sql_query(
        "SELECT l.game_id, l.period, l.player_id, l.rank, l.score FROM leaderboards l \
         WHERE l.game_id = ANY($1::varchar[]) \
         AND (l.game_id, l.period) IN (SELECT g, p FROM unnest($1::varchar[], $2::varchar[]) AS b(g, p))",
    )
    .bind::<Array<Varchar>, _>(&board_games)
    .bind::<Array<Varchar>, _>(&board_periods)
    .load(conn)
    .await?;
    let mut held: HashMap<(&str, &str, &str), (i32, i64)> = rows
        .iter()
        .map(|h| {
            (
                (h.game_id.as_str(), h.period.as_str(), h.player_id.as_str()),
                (h.rank, h.score),
            )
        })
        .collect();
    let (mut games, mut periods, mut players, mut ranks, mut scores) =
        (vec![], vec![], vec![], vec![], vec![]);
    for b in boards {
        for (rank, (player, score)) in (1..).zip(&b.entries) {
            let key = (b.game_id.as_str(), b.period.as_str(), player.as_str());
            if held.remove(&key) == Some((rank, *score)) {
                continue;
            }
            games.push(key.0);
            periods.push(key.1);
            players.push(key.2);
            ranks.push(rank);
            scores.push(*score);
        }
    }
    // What is left of `held` is no longer in its board's top N.
    if !held.is_empty() {
        let (mut games, mut periods, mut players) = (vec![], vec![], vec![]);
        for (g, p, pl) in held.into_keys() {
            games.push(g);
            periods.push(p);
            players.push(pl);
        }
        diesel::sql_query(
            "DELETE FROM leaderboards l USING unnest($1::varchar[], $2::varchar[], $3::varchar[]) AS d(g, p, pl) \
             WHERE l.game_id = ANY($1::varchar[]) \
             AND l.game_id = d.g AND l.period = d.p AND l.player_id = d.pl",
        )
        .bind::<Array<Varchar>, _>(&games)
        .bind::<Array<Varchar>, _>(&periods)
        .bind::<Array<Varchar>, _>(&players)
        .execute(conn)
        .await?;
    }
    if games.is_empty() {
        return Ok(());
    }
    diesel::sql_query(
        "INSERT INTO leaderboards AS l (game_id, player_id, period, rank, score, updated_at) \
         SELECT g, pl, p, r, s, now() \
         FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::int4[], $5::int8[]) AS t(g, p, pl, r, s) \
         ON CONFLICT (game_id, player_id, period) \
         DO UPDATE SET rank = EXCLUDED.rank, score = EXCLUDED.score, updated_at = now()",
    )
    .bind::<Array<Varchar>, _>(&games)
    .bind::<Array<Varchar>, _>(&periods)
    .bind::<Array<Varchar>, _>(&players)
    .bind::<Array<Int4>, _>(ranks)
    .bind::<Array<Int8>, _>(scores)
    .execute(conn)
    .await
    .map(drop)
}
