//! `POST /api/v1/events` and `/api/v1/events/batch`: validate, write to Kafka, answer once the
//! events are durable. Bodies may be gzip-compressed (`Content-Encoding: gzip`); size limits
//! apply to the decompressed body.

use super::error::{ApiError, ErrorBody, ErrorDetail};
use super::AppState;
use crate::domain::IngestRequest;
use crate::kafka::ProduceError;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// An event as a client sends it (OpenAPI only: bodies are validated field by field, so each
/// error can name its field). Unknown fields are refused.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct EventRequest {
    /// Choose it (a UUID, not the nil one) to make retries safe: an id is stored and counted once.
    /// Generated when absent.
    event_id: Option<Uuid>,
    /// At most 100 characters, no control characters, like the two ids below.
    #[schema(example = "player_score", min_length = 1, max_length = 100)]
    event_type: String,
    #[schema(example = "player-1", min_length = 1, max_length = 100)]
    player_id: String,
    #[schema(example = "game-1", min_length = 1, max_length = 100)]
    game_id: String,
    /// When it happened (RFC 3339); at most MAX_FUTURE_SKEW_SECS ahead of the server. Default: now.
    #[schema(example = "2024-01-15T10:30:00Z")]
    timestamp: Option<chrono::DateTime<chrono::Utc>>,
    /// Game-defined; scoring events carry an integer `score`. At most MAX_DATA_BYTES serialized.
    #[schema(value_type = Option<Object>, example = json!({"score": 1500}))]
    data: Option<serde_json::Value>,
}

/// Always `success`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SuccessTag {
    Success,
}

/// The answer to an accepted event: it is durable in Kafka.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub status: SuccessTag,
    pub event_id: Uuid,
}

/// What became of one item of a batch.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    /// Durable in Kafka.
    Accepted,
    /// Invalid: never retry it as it is.
    Rejected,
    /// Kafka trouble: retry this item with its `event_id`.
    Failed,
}

/// One item's outcome, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItem {
    pub index: usize,
    pub status: ItemStatus,
    /// Present unless the item was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    /// Present unless the item was accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// The answer to a readable batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAnswer {
    pub status: SuccessTag,
    /// How many items are durable in Kafka.
    pub accepted: usize,
    pub results: Vec<BatchItem>,
}

/// The error answers both ingest endpoints can give (OpenAPI only).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum IngestErrors {
    /// Not a valid event (the body names the field), or an unreadable body.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// AUTH_REQUIRED is on and no valid API key was given.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The API key belongs to another game.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// The body (after gzip) or the event's `data` is too large.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Content-Type is not application/json.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// Over the instance's or the key's rate limit; see Retry-After.
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// Kafka did not acknowledge in time; retry with the same event_id (see Retry-After).
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Accepts one event. 200 only after every in-sync replica acknowledged it.
#[utoipa::path(
    post, path = "/api/v1/events", tag = "ingest",
    request_body(content = EventRequest, content_type = "application/json",
                 description = "One event; may be gzip-compressed (Content-Encoding: gzip)"),
    responses(
        (status = 200, description = "Durable in Kafka (acks=all)", body = Accepted),
        IngestErrors
    ),
    security((), ("api_key" = []))
)]
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
    Ok(HttpResponse::Ok().json(Accepted {
        status: SuccessTag::Success,
        event_id: event.event_id,
    }))
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
#[utoipa::path(
    post, path = "/api/v1/events/batch", tag = "ingest",
    request_body(content = Vec<EventRequest>, content_type = "application/json",
                 description = "1 to BATCH_MAX_EVENTS (1000) events; may be gzip-compressed"),
    responses(
        (status = 200, description = "Each item's outcome, in order", body = BatchAnswer),
        IngestErrors
    ),
    security((), ("api_key" = []))
)]
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
    let results: Vec<BatchItem> = parsed
        .iter()
        .zip(delivered)
        .enumerate()
        .map(|(index, (p, d))| {
            let (status, event_id, error) = match (p, d) {
                (Ok(event), Some(Ok(_))) => (ItemStatus::Accepted, Some(event.event_id), None),
                (Ok(event), Some(Err(e))) => (
                    ItemStatus::Failed,
                    Some(event.event_id),
                    Some(ErrorDetail {
                        code: "kafka_unavailable".into(),
                        message: e.to_string(),
                        field: None,
                        event_id: None,
                    }),
                ),
                (Err(v), _) => (ItemStatus::Rejected, None, Some(ErrorDetail::from(v))),
                // Not sent: unreachable, as every valid item is sent; answer it as retryable.
                (Ok(event), None) => (ItemStatus::Failed, Some(event.event_id), None),
            };
            BatchItem {
                index,
                status,
                event_id,
                error,
            }
        })
        .collect();
    let accepted = results
        .iter()
        .filter(|r| matches!(r.status, ItemStatus::Accepted))
        .count();
    Ok(HttpResponse::Ok().json(BatchAnswer {
        status: SuccessTag::Success,
        accepted,
        results,
    }))
}

/// Checks the API key when the deployment requires one; `None` when it doesn't.
async fn authenticate(
    req: &HttpRequest,
    state: &AppState,
) -> Result<Option<crate::auth::Authenticated>, ApiError> {
    match &state.keys {
        None => Ok(None),
        Some(keys) => super::authenticate(req, keys, &state.metrics).await.map(Some),
    }
}
