//! The baseline for the read and ingest benchmarks: a bare actix-web handler answering a fixed
//! JSON body, on the same runtime and worker count as gamemetrics; `POST /` reads the request's
//! body first, as an ingest would. `BARE_ADDR` (default 127.0.0.1:18081).

use actix_web::{web, App, HttpResponse, HttpServer};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("BARE_ADDR").unwrap_or_else(|_| "127.0.0.1:18081".into());
    let body = r#"{"entries":[{"rank":1,"player_id":"p","score":1}]}"#;
    HttpServer::new(move || {
        App::new()
            .route(
                "/",
                web::get().to(move || async move {
                    HttpResponse::Ok().content_type("application/json").body(body)
                }),
            )
            .route(
                "/",
                web::post().to(move |_: web::Bytes| async move {
                    HttpResponse::Ok().content_type("application/json").body(body)
                }),
            )
    })
    .bind(addr)?
    .run()
    .await
}
