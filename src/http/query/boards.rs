//! `GET /games/{game_id}/leaderboard` and `GET /games/{game_id}/leaderboard/players/{player_id}`:
//! boards from Redis DB 1.

use super::{bounded, redis_unavailable, QueryState, ReadErrors, ReadKey};
use crate::domain::leaderboard::{Board, Period};
use crate::domain::{GameId, PlayerId};
use crate::http::error::{ApiError, ErrorBody};
use actix_web::{web, HttpResponse};
use futures::future::{FutureExt, LocalBoxFuture, WeakShared};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use utoipa::{IntoParams, ToSchema};

/// One row of a board.
#[derive(Debug, Serialize, ToSchema)]
pub struct RankedPlayer {
    /// 1-based; ties are ordered by player_id, descending (Redis ZREVRANGE order).
    pub rank: u64,
    pub player_id: String,
    pub score: i64,
}

/// A page of a game's board.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaderboardPage {
    pub game_id: String,
    pub period: Period,
    /// The board read: `alltime`, `daily`, `weekly`, or a past one such as `daily:2024-01-15`.
    pub board: String,
    pub offset: u64,
    pub limit: u64,
    pub entries: Vec<RankedPlayer>,
}

/// A player's place on a board, with their neighbours.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlayerRank {
    pub game_id: String,
    pub period: Period,
    pub board: String,
    pub player_id: String,
    pub rank: u64,
    /// Null only if the player left the board between the two reads.
    pub score: Option<i64>,
    /// The player and up to `around` players above and below, best first.
    pub entries: Vec<RankedPlayer>,
}

/// Which board to read (the query string of both leaderboard endpoints).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BoardParams {
    /// Default `alltime`.
    period: Option<Period>,
    /// A past day's board (with `period=daily`), while retained.
    #[param(pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", example = "2024-01-15")]
    date: Option<String>,
    /// A past ISO week's board (with `period=weekly`), while retained.
    #[param(pattern = r"^[0-9]{4}-W[0-9]{2}$", example = "2024-W03")]
    week: Option<String>,
}

/// Paging of `GET /games/{game_id}/leaderboard`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Entries per page, 1 to 1000 (default 10).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Entries to skip (default 0).
    #[param(minimum = 0, maximum = 1_000_000)]
    offset: Option<u32>,
}

/// `GET /games/{game_id}/leaderboard/players/{player_id}`'s neighbourhood size.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AroundParams {
    /// Players shown above and below, 0 to 100 (default 5).
    #[param(minimum = 0, maximum = 100)]
    around: Option<u32>,
}

/// True when `s` is ASCII digits from `range.start` to `range.end`.
fn digits(s: &str, range: std::ops::Range<usize>) -> bool {
    s.get(range)
        .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
}

impl BoardParams {
    /// The board these parameters name. Dates and weeks must be exactly the board key's form:
    /// chrono alone also takes `2026-1-5` or `+202`, which name no board.
    pub fn board(&self) -> Result<Board, ApiError> {
        let period = self.period.unwrap_or(Period::Alltime);
        match (period, &self.date, &self.week) {
            (_, None, None) => Ok(Board::Current(period)),
            (Period::Daily, Some(d), None) => {
                let ok = d.len() == 10
                    && digits(d, 0..4)
                    && digits(d, 5..7)
                    && digits(d, 8..10)
                    && chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok();
                if !ok {
                    return Err(ApiError::BadQuery(format!(
                        "date must be a date as YYYY-MM-DD, got {d}"
                    )));
                }
                Ok(Board::Dated(period, d.clone()))
            }
            (Period::Weekly, None, Some(w)) => {
                let ok = w.len() == 8
                    && w.as_bytes()[4..6] == *b"-W"
                    && digits(w, 0..4)
                    && digits(w, 6..8)
                    && match (w[..4].parse::<i32>(), w[6..].parse::<u32>()) {
                        (Ok(year), Ok(week)) => {
                            chrono::NaiveDate::from_isoywd_opt(year, week, chrono::Weekday::Mon).is_some()
                        }
                        _ => false,
                    };
                if !ok {
                    return Err(ApiError::BadQuery(format!(
                        "week must be an ISO week as YYYY-Www (W01 to W52 or W53), got {w}"
                    )));
                }
                Ok(Board::Dated(period, w.clone()))
            }
            _ => Err(ApiError::BadQuery(
                "date goes with period=daily, week with period=weekly".into(),
            )),
        }
    }
}

/// `GET /games/{game_id}/leaderboard?period=daily|weekly|alltime&limit=&offset=&date=&week=`
#[utoipa::path(
    get, path = "/games/{game_id}/leaderboard", tag = "queries",
    params(("game_id" = String, Path, description = "Game", example = "game-1"), BoardParams, PageParams),
    responses(
        (status = 200, description = "A page of the board, best first (empty past its end)", body = LeaderboardPage),
        (status = 403, description = "The API key belongs to another game", body = ErrorBody),
        ReadErrors
    ),
    security((), ("api_key" = []))
)]
pub async fn leaderboard(
    key: ReadKey,
    path: web::Path<String>,
    which: web::Query<BoardParams>,
    page: web::Query<PageParams>,
    q: web::Data<QueryState>,
) -> Result<HttpResponse, ApiError> {
    let game = GameId::parse(path.into_inner())?;
    key.may_read(&game)?;
    let (board, page) = (which.board()?, page.checked()?);
    Ok(HttpResponse::Ok().json(read_page(&q, &game, &board, page).await?))
}

/// A checked page of a board: how many entries from where.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    limit: usize,
    offset: usize,
}

impl PageParams {
    /// The page asked for, checked against its bounds.
    pub fn checked(&self) -> Result<Page, ApiError> {
        Ok(Page {
            limit: bounded("limit", self.limit, 10, 1, 1000)? as usize,
            offset: bounded("offset", self.offset, 0, 0, 1_000_000)? as usize,
        })
    }
}

/// One page of one of a game's boards, from Redis (the read endpoint and the dashboard's live
/// stream).
pub async fn read_page(
    q: &QueryState,
    game: &GameId,
    board: &Board,
    page: Page,
) -> Result<LeaderboardPage, ApiError> {
    let start = isize::try_from(page.offset).unwrap_or(isize::MAX);
    let stop = start.saturating_add(isize::try_from(page.limit).unwrap_or(1000) - 1);
    let entries = board_page(q, board_key(q, game, board).await?, start, stop).await?;
    Ok(LeaderboardPage {
        game_id: game.as_str().to_owned(),
        period: board.period(),
        board: board.name(),
        offset: page.offset as u64,
        limit: page.limit as u64,
        entries: ranked(page.offset, entries.iter().cloned()),
    })
}

/// The key holding `board` now. A dated board of the period that is still current is the
/// current board until the period ends: the scores script counts the current period there
/// only, and renames it to its dated key when the period moves on (a read straddling that
/// moment may read the new period's board once).
async fn board_key(q: &QueryState, game: &GameId, board: &Board) -> Result<String, ApiError> {
    let key = q.keys.board(game.as_str(), board);
    let Board::Dated(period, stamp) = board else {
        return Ok(key);
    };
    let mut conn = q.boards.conn().await.map_err(redis_unavailable)?;
    let marker: Option<String> =
        redis::AsyncCommands::get(&mut conn, q.keys.board_marker(game.as_str(), *period))
            .await
            .map_err(redis_unavailable)?;
    Ok(if marker.as_deref() == Some(stamp.as_str()) {
        q.keys.board(game.as_str(), &Board::Current(*period))
    } else {
        key
    })
}

type Entries = Rc<Vec<(String, f64)>>;
type PageRead = LocalBoxFuture<'static, Result<Entries, String>>;

thread_local! {
    /// Board pages being read from Redis by this HTTP worker (each worker is one thread). Weak:
    /// a read whose every waiter went away (clients disconnected) is dropped, not kept to be
    /// resumed later with an old answer.
    static PAGES_IN_FLIGHT: RefCell<HashMap<(String, isize, isize), WeakShared<PageRead>>> = RefCell::default();
}

/// Removes a page read from the in-flight table when the read ends: answered, failed, or dropped
/// because every waiter went away.
struct ForgetOnDrop((String, isize, isize));

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        let _ = PAGES_IN_FLIGHT.try_with(|m| {
            if let Ok(mut m) = m.try_borrow_mut() {
                m.remove(&self.0);
            }
        });
    }
}

/// ZREVRANGE … WITHSCORES of one page, shared by identical requests that arrive while it is in
/// flight on this worker: a top-10 that many clients poll at once costs one Redis round trip, and
/// no answer is older than that round trip (no cache: nothing is kept once it lands).
async fn board_page(q: &QueryState, key: String, start: isize, stop: isize) -> Result<Entries, ApiError> {
    let id = (key, start, stop);
    let pending = PAGES_IN_FLIGHT.with(|m| m.borrow().get(&id).and_then(WeakShared::upgrade));
    let pending = match pending {
        Some(p) => p,
        None => {
            let mut conn = q.boards.conn().await.map_err(redis_unavailable)?;
            let forget = ForgetOnDrop(id.clone());
            let read = async move {
                let (key, start, stop) = &forget.0;
                let r: Result<Vec<(String, f64)>, _> =
                    redis::AsyncCommands::zrevrange_withscores(&mut conn, key, *start, *stop).await;
                drop(forget);
                r.map(Rc::new).map_err(|e| e.to_string())
            }
            .boxed_local()
            .shared();
            if let Some(weak) = read.downgrade() {
                PAGES_IN_FLIGHT.with(|m| m.borrow_mut().insert(id, weak));
            }
            read
        }
    };
    pending.await.map_err(redis_unavailable)
}

/// Board entries from ZREVRANGE, the first at 0-based position `first`.
fn ranked(first: usize, entries: impl IntoIterator<Item = (String, f64)>) -> Vec<RankedPlayer> {
    (first as u64 + 1..)
        .zip(entries)
        .map(|(rank, (player_id, score))| RankedPlayer {
            rank,
            player_id,
            // Sorted-set scores are doubles; ours are integer sums well inside 2^53.
            score: score as i64,
        })
        .collect()
}

/// `GET /games/{game_id}/leaderboard/players/{player_id}?period=…&around=N`: the player's rank
/// and score, and the N players above and below.
#[utoipa::path(
    get, path = "/games/{game_id}/leaderboard/players/{player_id}", tag = "queries",
    params(
        ("game_id" = String, Path, description = "Game", example = "game-1"),
        ("player_id" = String, Path, description = "Player", example = "player-1"),
        BoardParams, AroundParams
    ),
    responses(
        (status = 200, description = "The player's rank and neighbours", body = PlayerRank),
        (status = 403, description = "The API key belongs to another game", body = ErrorBody),
        (status = 404, description = "The player is not on this board", body = ErrorBody),
        ReadErrors
    ),
    security((), ("api_key" = []))
)]
pub async fn player_rank(
    key: ReadKey,
    path: web::Path<(String, String)>,
    which: web::Query<BoardParams>,
    near: web::Query<AroundParams>,
    q: web::Data<QueryState>,
) -> Result<HttpResponse, ApiError> {
    let (game, player) = path.into_inner();
    let (game, player) = (GameId::parse(game)?, PlayerId::parse(player)?);
    key.may_read(&game)?;
    let board = which.board()?;
    let around = bounded("around", near.around, 5, 0, 100)? as usize;
    let board_key = board_key(&q, &game, &board).await?;
    let mut conn = q.boards.conn().await.map_err(redis_unavailable)?;
    let rank: Option<usize> = redis::AsyncCommands::zrevrank(&mut conn, &board_key, player.as_str())
        .await
        .map_err(redis_unavailable)?;
    let Some(rank) = rank else {
        return Err(ApiError::NotFound(format!(
            "player {player} is not on the {} board of {game}",
            board.name()
        )));
    };
    let start = rank.saturating_sub(around);
    let entries: Vec<(String, f64)> = redis::AsyncCommands::zrevrange_withscores(
        &mut conn,
        &board_key,
        isize::try_from(start).unwrap_or(isize::MAX),
        isize::try_from(rank + around).unwrap_or(isize::MAX),
    )
    .await
    .map_err(redis_unavailable)?;
    let entries = ranked(start, entries);
    let score = entries
        .iter()
        .find(|e| e.player_id == player.as_str())
        .map(|e| e.score);
    Ok(HttpResponse::Ok().json(PlayerRank {
        game_id: game.as_str().to_owned(),
        period: board.period(),
        board: board.name(),
        player_id: player.as_str().to_owned(),
        rank: rank as u64 + 1,
        score,
        entries,
    }))
}
