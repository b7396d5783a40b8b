//! `GET /dashboard`: a live console served by the binary, its assets compiled in (no CDN, works
//! offline). A game's board, a player's stats and newest events, and the pipeline, from the
//! read API and two server-sent-event streams fed by the stores: the board is pushed when it
//! changes (read from Redis every [`BOARD_POLL`], shared by every viewer of a page on this
//! worker), the pipeline every [`PIPELINE_EVERY`]. With QUERY_AUTH_REQUIRED the page asks for a
//! key: a game's key sees that game, an admin key every game and the pipeline.

pub mod pipeline;

use super::error::ApiError;
use super::query::boards::{read_page, BoardParams, PageParams};
use super::query::{QueryState, ReadKey};
use crate::domain::GameId;
use actix_web::http::header;
use actix_web::{web, HttpResponse};
use futures::Stream;
use serde::Deserialize;
use std::time::Duration;

/// How often the live board is read from Redis while a page watches it.
pub const BOARD_POLL: Duration = Duration::from_millis(200);
/// How often the pipeline panel is sent.
pub const PIPELINE_EVERY: Duration = Duration::from_secs(2);
/// A comment line this often keeps an idle stream open through proxies, and finds a closed one.
const KEEPALIVE: Duration = Duration::from_secs(15);

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// What the page may load: only itself.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// `GET /dashboard`: the live console (HTML; its script and style at `/dashboard/app.js` and
/// `/dashboard/app.css`, nothing from elsewhere).
#[utoipa::path(
    get, path = "/dashboard", tag = "dashboard",
    responses((status = 200, description = "The dashboard page", content_type = "text/html")),
)]
pub async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /dashboard/app.js`.
pub async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /dashboard/app.css`.
pub async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// Which game's board the live stream follows (with `period`, `date`, `week` and `limit`, as
/// the leaderboard endpoint takes them).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LiveBoard {
    /// The game.
    #[param(example = "game-1")]
    game: String,
}

/// A server-sent-event stream response.
fn event_stream(stream: impl Stream<Item = Result<web::Bytes, actix_web::Error>> + 'static) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // nginx (an ingress) would otherwise buffer the stream.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream)
}

/// One server-sent event.
fn sse(event: &str, data: &str) -> web::Bytes {
    web::Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// `GET /dashboard/live/board?game=G&period=…&limit=N`: the board now, then again whenever it
/// changes (`event: board`, the leaderboard endpoint's body); `event: problem` while Redis can't
/// be read.
#[utoipa::path(
    get, path = "/dashboard/live/board", tag = "dashboard",
    params(LiveBoard, BoardParams, PageParams),
    responses(
        (status = 200, description = "Server-sent events: `board` (a LeaderboardPage) whenever the page changes, `problem` while Redis can't be read", content_type = "text/event-stream"),
        (status = 403, description = "The API key belongs to another game", body = super::error::ErrorBody),
        super::query::ReadErrors
    ),
    security((), ("api_key" = []))
)]
pub async fn live_board(
    key: ReadKey,
    live: web::Query<LiveBoard>,
    which: web::Query<BoardParams>,
    page: web::Query<PageParams>,
    q: web::Data<QueryState>,
) -> Result<HttpResponse, ApiError> {
    let game = GameId::parse(live.into_inner().game)?;
    key.may_read(&game)?;
    let (board, page) = (which.board()?, page.checked()?);
    let state = (q, None::<String>, true);
    let stream = futures::stream::unfold(state, move |(q, last, first)| {
        let (game, board) = (game.clone(), board.clone());
        async move {
            if !first {
                tokio::time::sleep(BOARD_POLL).await;
            }
            // Reads until there is something to send: never an empty chunk, which chunked
            // encoding would take for the end of the body.
            let quiet_since = std::time::Instant::now();
            loop {
                match read_page(&q, &game, &board, page).await {
                    Ok(p) => {
                        let json = serde_json::to_string(&p).unwrap_or_default();
                        if last.as_deref() != Some(json.as_str()) {
                            let chunk = sse("board", &json);
                            return Some((Ok(chunk), (q, Some(json), false)));
                        }
                        if quiet_since.elapsed() >= KEEPALIVE {
                            return Some((Ok(web::Bytes::from_static(b": unchanged\n\n")), (q, last, false)));
                        }
                    }
                    Err(e) => {
                        let problem = serde_json::json!({ "error": e.to_string() }).to_string();
                        return Some((Ok(sse("problem", &problem)), (q, None, false)));
                    }
                }
                tokio::time::sleep(BOARD_POLL).await;
            }
        }
    });
    Ok(event_stream(stream))
}

/// `GET /dashboard/live/pipeline`: the pipeline panel every [`PIPELINE_EVERY`] (`event:
/// pipeline`). Admin keys only when reads need a key: it shows every game's traffic.
#[utoipa::path(
    get, path = "/dashboard/live/pipeline", tag = "dashboard",
    responses(
        (status = 200, description = "Server-sent events: `pipeline` every 2 s (ingest rate, lag per group and partition, DLQ counts, ingest-to-row latency)", content_type = "text/event-stream"),
        (status = 403, description = "Reads need a key, and this one is a game's, not an admin's", body = super::error::ErrorBody),
        super::query::ReadErrors
    ),
    security((), ("api_key" = []))
)]
pub async fn live_pipeline(
    key: ReadKey,
    probe: web::Data<std::sync::Arc<pipeline::PipelineProbe>>,
) -> Result<HttpResponse, ApiError> {
    if key.game().is_some() {
        return Err(ApiError::Forbidden(
            "the pipeline panel shows every game: it needs an admin key".into(),
        ));
    }
    let probe = probe.get_ref().clone();
    let stream = futures::stream::unfold((probe, true), |(probe, first)| async move {
        if !first {
            tokio::time::sleep(PIPELINE_EVERY).await;
        }
        let reading = probe.read().await;
        let json = serde_json::to_string(&reading).unwrap_or_default();
        Some((Ok(sse("pipeline", &json)), (probe, false)))
    });
    Ok(event_stream(stream))
}
