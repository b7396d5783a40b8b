//! `POST /api/v1/events`: validate one event, write it to Kafka, answer once it is durable.

use super::error::ApiError;
use super::AppState;
use crate::domain::IngestRequest;
use crate::kafka::ProduceError;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use serde_json::json;

/// Accepts one event. 200 only after every in-sync replica acknowledged it.
pub async fn ingest_event(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if let Err(retry_after) = state.limiter.try_acquire() {
        state.metrics.rate_limited.inc();
        return Err(ApiError::RateLimited { retry_after });
    }
    require_json(&req)?;
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    let event = IngestRequest::parse(&body, &state.limits, chrono::Utc::now())?;
    tracing::Span::current().record("event_id", tracing::field::display(event.event_id));

    state.producer.send(&event).await.map_err(|e| match e {
        // Retrying can't help an event the broker will never take: tell the client so.
        ProduceError::TooLarge => ApiError::PayloadTooLarge {
            limit: state.max_body_bytes,
        },
        e => ApiError::KafkaUnavailable {
            reason: e.to_string(),
            event_id: event.event_id,
        },
    })?;
    Ok(HttpResponse::Ok().json(json!({"status": "success", "event_id": event.event_id})))
}

/// `application/json`, with or without parameters such as `charset=utf-8`.
fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    let essence = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    match essence.as_deref() {
        Some("application/json") => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType),
    }
}

/// Reads the body, refusing it as soon as it passes `limit` rather than buffering it whole.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadBody(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
