//! The API contract: an OpenAPI document generated from the handlers' annotations and the
//! typed bodies they answer with, served at `/openapi.json`, and a rendered page at `/docs`.

use super::error::{ErrorBody, ErrorDetail, ErrorTag};
use super::{health, ingest, query};
use actix_web::HttpResponse;
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
        query::player_stats,
        query::player_events,
        query::leaderboard,
        query::player_rank,
        query::event,
        health::healthz,
        health::readyz,
        health::metrics,
    ),
    components(schemas(ErrorBody, ErrorDetail, ErrorTag)),
    modifiers(&BearerKey),
    tags(
        (name = "ingest", description = "Send player events"),
        (name = "queries", description = "Read stats, leaderboards and events"),
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

/// `GET /openapi.json`: the document, built once.
pub async fn openapi_json() -> HttpResponse {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_default());
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.as_str())
}

/// `GET /docs`: the document rendered by Scalar (the page embeds the document; Scalar's script
/// loads from a CDN in the reader's browser).
pub async fn docs() -> HttpResponse {
    static PAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let page = PAGE.get_or_init(|| utoipa_scalar::Scalar::new(ApiDoc::openapi()).to_html());
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(page.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_document() {
        let doc: serde_json::Value =
            serde_json::from_str(&ApiDoc::openapi().to_json().expect("json")).expect("parse");
        let paths: Vec<&str> = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .map(String::as_str)
            .collect();
        for p in [
            "/api/v1/events",
            "/api/v1/events/batch",
            "/player/{player_id}/stats",
            "/player/{player_id}/events",
            "/games/{game_id}/leaderboard",
            "/games/{game_id}/leaderboard/players/{player_id}",
            "/events/{event_id}",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
    }
}
