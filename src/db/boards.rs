//! `leaderboards`: the top N of every current board, rewritten under per-board advisory locks.

use crate::domain::leaderboard::{BoardTop, Period};
use diesel::sql_types::{Array, Int4, Int8, Text, Varchar};
use diesel::QueryResult;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

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

/// Makes the table hold exactly these top N for every board given, in two statements however
/// many boards there are. Callers hold the boards' advisory locks ([`lock`]).
pub async fn write_top(conn: &mut AsyncPgConnection, boards: &[BoardTop]) -> QueryResult<()> {
    if boards.is_empty() {
        return Ok(());
    }
    let board_games: Vec<&str> = boards.iter().map(|b| b.game_id.as_str()).collect();
    let board_periods: Vec<&str> = boards.iter().map(|b| b.period.as_str()).collect();
    let (mut games, mut periods, mut players, mut ranks, mut scores) =
        (vec![], vec![], vec![], vec![], vec![]);
    for b in boards {
        for (rank, (player, score)) in (1..).zip(&b.entries) {
            games.push(b.game_id.as_str());
            periods.push(b.period.as_str());
            players.push(player.as_str());
            ranks.push(rank);
            scores.push(*score);
        }
    }
    // Raw SQL: both statements take every board at once from `unnest` of bound arrays.
    diesel::sql_query(
        "DELETE FROM leaderboards l \
         WHERE (l.game_id, l.period) IN (SELECT g, p FROM unnest($1::varchar[], $2::varchar[]) AS b(g, p)) \
         AND NOT EXISTS (SELECT 1 FROM unnest($3::varchar[], $4::varchar[], $5::varchar[]) AS n(g, p, pl) \
                         WHERE n.g = l.game_id AND n.p = l.period AND n.pl = l.player_id)",
    )
    .bind::<Array<Varchar>, _>(&board_games)
    .bind::<Array<Varchar>, _>(&board_periods)
    .bind::<Array<Varchar>, _>(&games)
    .bind::<Array<Varchar>, _>(&periods)
    .bind::<Array<Varchar>, _>(&players)
    .execute(conn)
    .await?;
    diesel::sql_query(
        "INSERT INTO leaderboards AS l (game_id, player_id, period, rank, score, updated_at) \
         SELECT g, pl, p, r, s, now() \
         FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::int4[], $5::int8[]) AS t(g, p, pl, r, s) \
         ON CONFLICT (game_id, player_id, period) \
         DO UPDATE SET rank = EXCLUDED.rank, score = EXCLUDED.score, updated_at = now() \
         WHERE l.rank <> EXCLUDED.rank OR l.score <> EXCLUDED.score",
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
