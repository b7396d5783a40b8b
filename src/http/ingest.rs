//! `POST /api/v1/events` and `/api/v1/events/batch`: validate, write to Kafka, answer once the
//! events are durable. Bodies may be gzip-compressed (`Content-Encoding: gzip`); size limits
//! apply to the decompressed body.

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
    let key = authenticate(&req, &state).await?;
    require_json(&req)?;
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    let event = IngestRequest::parse(&body, &state.limits, chrono::Utc::now())?;
    tracing::Span::current().record("event_id", tracing::field::display(event.event_id));
    if let Some(key) = &key {
        if key.game_id != event.game_id.as_str() {
            state
                .metrics
                .auth_failures
                .with_label_values(&["wrong_game"])
                .inc();
            return Err(ApiError::Forbidden(format!(
                "this API key may not write events of game {}",
                event.game_id
            )));
        }
        if let Some(Err(retry_after)) = key.limiter.as_ref().map(|l| l.try_acquire()) {
            state.metrics.rate_limited.inc();
            return Err(ApiError::RateLimited { retry_after });
        }
    }

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

/// Reads the body (inflating gzip), refusing it as soon as it passes `limit`.
async fn read_body(req: &HttpRequest, payload: web::Payload, limit: usize) -> Result<Vec<u8>, ApiError> {
    let raw = read_raw(req, payload, limit).await?;
    let encoding = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    match encoding.map(|e| e.trim().to_ascii_lowercase()) {
        None => Ok(raw.to_vec()),
        Some(e) if e == "identity" => Ok(raw.to_vec()),
        Some(e) if e == "gzip" => {
            use std::io::Read;
            let mut out = Vec::new();
            // One byte past the limit is enough to know it is too large, without inflating a
            // bomb whole.
            flate2::read::GzDecoder::new(&raw[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| ApiError::BadBody(format!("gzip body could not be decompressed: {e}")))?;
            if out.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            Ok(out)
        }
        Some(other) => Err(ApiError::BadBody(format!(
            "Content-Encoding {other} is not supported; use gzip"
        ))),
    }
}

/// Reads the raw body, refusing it as soon as it passes `limit` rather than buffering it whole.
async fn read_raw(
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

/// Accepts up to BATCH_MAX_EVENTS events in one JSON array. Each is validated on its own; the
/// valid ones are written to Kafka together and the answer lists, in order, what became of each:
/// `accepted` (durable, with its `event_id`), `rejected` (with the error, never retry as is) or
/// `failed` (Kafka trouble: retry that item with its `event_id`). The status is 200 whenever the
/// batch itself was readable, because each item carries its own outcome.
pub async fn ingest_batch(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = authenticate(&req, &state).await?;
    require_json(&req)?;
    let body = read_body(&req, payload, state.batch_max_body_bytes).await?;
    let items: Vec<serde_json::Value> = match serde_json::from_slice(&body) {
        Ok(serde_json::Value::Array(items)) => items,
        Ok(_) => return Err(ApiError::BadBody("a batch must be a JSON array of events".into())),
        Err(e) => return Err(ApiError::BadBody(format!("body is not valid JSON: {e}"))),
    };
    if items.is_empty() || items.len() > state.batch_max_events {
        return Err(ApiError::BadBody(format!(
            "a batch holds 1 to {} events, got {}",
            state.batch_max_events,
            items.len()
        )));
    }
    // The key's own limit first, then the instance's: both must have room for every event.
    let n = u32::try_from(items.len()).unwrap_or(u32::MAX);
    let key_limiter = key.as_ref().and_then(|k| k.limiter.as_ref());
    if let Err(retry_after) = key_limiter
        .map_or(Ok(()), |l| l.try_acquire_n(n))
        .and_then(|()| state.limiter.try_acquire_n(n))
    {
        state.metrics.rate_limited.inc();
        return Err(ApiError::RateLimited { retry_after });
    }
    let now = chrono::Utc::now();
    let parsed: Vec<_> = items
        .into_iter()
        .map(|v| {
            let event = IngestRequest::from_value(v, &state.limits, now)?;
            match &key {
                Some(k) if k.game_id != event.game_id.as_str() => Err(crate::domain::ValidationError {
                    field: Some("game_id".into()),
                    code: "forbidden_game",
                    message: format!("this API key may not write events of game {}", event.game_id),
                }),
                _ => Ok(event),
            }
        })
        .collect();
    let producer = &state.producer;
    let sends = parsed.iter().map(|p| async move {
        match p {
            Ok(event) => Some(producer.send(event).await),
            Err(_) => None,
        }
    });
    let delivered = futures::future::join_all(sends).await;
    let mut accepted = 0;
    let results: Vec<serde_json::Value> = parsed
        .iter()
        .zip(delivered)
        .enumerate()
        .map(|(index, (p, d))| match (p, d) {
            (Ok(event), Some(Ok(_))) => {
                accepted += 1;
                json!({"index": index, "status": "accepted", "event_id": event.event_id})
            }
            (Ok(event), Some(Err(e))) => {
                json!({"index": index, "status": "failed", "event_id": event.event_id,
                "error": {"code": "kafka_unavailable", "message": e.to_string()}})
            }
            (Err(v), _) => json!({"index": index, "status": "rejected",
                "error": {"code": v.code, "field": v.field, "message": v.message}}),
            (Ok(event), None) => json!({"index": index, "status": "failed", "event_id": event.event_id}),
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"status": "success", "accepted": accepted, "results": results})))
}

/// Checks the API key when the deployment requires one; `None` when it doesn't.
async fn authenticate(
    req: &HttpRequest,
    state: &AppState,
) -> Result<Option<crate::auth::Authenticated>, ApiError> {
    let Some(keys) = &state.keys else { return Ok(None) };
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match keys.authenticate(header).await {
        Ok(k) => Ok(Some(k)),
        Err(e @ crate::auth::AuthError::Store(_)) => Err(ApiError::StoreUnavailable(e.to_string())),
        Err(e) => {
            let reason = if matches!(e, crate::auth::AuthError::Missing) {
                "missing"
            } else {
                "invalid"
            };
            state.metrics.auth_failures.with_label_values(&[reason]).inc();
            Err(ApiError::Unauthorized(e.to_string()))
        }
    }
}
