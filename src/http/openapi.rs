//! The API contract: an OpenAPI document generated from the handlers' annotations and the
//! typed bodies they answer with, served at `/openapi.json`, and a rendered page at `/docs`.

use super::error::{ErrorBody, ErrorDetail, ErrorTag};
use super::{dashboard, health, ingest, players, query, AppState};
use crate::config::HttpApi;
use actix_web::{web, HttpResponse};
use std::sync::OnceLock;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The whole HTTP API, as OpenAPI.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "gamemetrics",
        description = "Real-time gaming analytics: player events in over HTTP (durable in Kafka \
            before the answer), per-player stats and per-game leaderboards out.",
        license(name = "Apache-2.0")
    ),
    paths(
        ingest::ingest_event,
        ingest::ingest_batch,
        query::stats::player_stats,
        query::events::player_events,
        query::boards::leaderboard,
        query::boards::player_rank,
        query::events::event,
        query::games::games,
        players::forget_player,
        dashboard::page,
        dashboard::live_board,
        dashboard::live_pipeline,
        health::healthz,
        health::readyz,
        health::metrics,
    ),
    components(schemas(ErrorBody, ErrorDetail, ErrorTag)),
    modifiers(&BearerKey),
    tags(
        (name = "ingest", description = "Send player events"),
        (name = "queries", description = "Read stats, leaderboards and events"),
        (name = "admin", description = "Admin keys only: forget a player"),
        (name = "dashboard", description = "The live console and its streams (server-sent events)"),
        (name = "operations", description = "Probes and metrics"),
    )
)]
pub struct ApiDoc;

/// Declares the `api_key` scheme: `Authorization: Bearer gmk_…` (`gamemetrics keys create`).
struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The document for the endpoints a process serves (`HTTP_API`).
pub fn document(api: HttpApi) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // By the tag each handler's annotation gives its operation, so the grouping is stated once.
    doc.paths.paths.retain(|_, item| {
        [&item.get, &item.post, &item.delete]
            .into_iter()
            .flatten()
            .flat_map(|op| op.tags.iter().flatten())
            .all(|tag| match tag.as_str() {
                "ingest" | "admin" => api.ingest(),
                "queries" | "dashboard" => api.query(),
                _ => true,
            })
    });
    doc
}

/// The JSON document and the rendered page for `api`, built once per process.
fn rendered(api: HttpApi) -> &'static (String, String) {
    static ALL: OnceLock<(String, String)> = OnceLock::new();
    static INGEST: OnceLock<(String, String)> = OnceLock::new();
    static QUERY: OnceLock<(String, String)> = OnceLock::new();
    let cell = match api {
        HttpApi::All => &ALL,
        HttpApi::Ingest => &INGEST,
        HttpApi::Query => &QUERY,
    };
    cell.get_or_init(|| {
        let doc = document(api);
        (
            doc.to_json().unwrap_or_default(),
            utoipa_scalar::Scalar::new(doc).to_html(),
        )
    })
}

/// `GET /openapi.json`: the document of what this process serves.
pub async fn openapi_json(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(rendered(state.api).0.as_str())
}

/// `GET /docs`: the document rendered by Scalar (the page embeds the document; Scalar's script
/// loads from a CDN in the reader's browser).
pub async fn docs(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(rendered(state.api).1.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INGEST: [&str; 2] = ["/api/v1/events", "/api/v1/events/batch"];
    const QUERY: [&str; 5] = [
        "/player/{player_id}/stats",
        "/player/{player_id}/events",
        "/games/{game_id}/leaderboard",
        "/games/{game_id}/leaderboard/players/{player_id}",
        "/events/{event_id}",
    ];

    fn paths(api: HttpApi) -> Vec<String> {
        document(api).paths.paths.keys().cloned().collect()
    }

    #[test]
    fn every_route_is_in_the_document_of_a_process_that_serves_it() {
        let all = paths(HttpApi::All);
        for p in INGEST
            .iter()
            .chain(&QUERY)
            .chain(&["/healthz", "/readyz", "/metrics"])
        {
            assert!(all.iter().any(|a| a == p), "{p} missing from {all:?}");
        }
        let ingest = paths(HttpApi::Ingest);
        assert!(INGEST.iter().all(|p| ingest.iter().any(|a| a == p)));
        assert!(QUERY.iter().all(|p| !ingest.iter().any(|a| a == p)));
        let query = paths(HttpApi::Query);
        assert!(QUERY.iter().all(|p| query.iter().any(|a| a == p)));
        assert!(INGEST.iter().all(|p| !query.iter().any(|a| a == p)));
        assert!(query.iter().any(|a| a == "/healthz"));
    }
}
