//! `POST /api/v1/events` and `/api/v1/events/batch`: validate, write to Kafka, answer once the
//! events are durable. Bodies may be gzip-compressed (`Content-Encoding: gzip`); size limits
//! apply to the decompressed body.

use super::error::{ApiError, ErrorBody, ErrorDetail};
use super::AppState;
use crate::domain::IngestRequest;
use crate::kafka::ProduceError;
use crate::rate_limit::Refusal;
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
    /// The body did not arrive within BODY_READ_TIMEOUT_MS (the connection is closed).
    #[response(status = 408)]
    RequestTimeout(ErrorBody),
    /// The body (after gzip) or the event's `data` is too large.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Content-Type is not application/json.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// Over the instance's or the key's rate limit (see Retry-After), a batch larger than the
    /// key's limit allows at once, or too many failed authentications.
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
    // Authentication first: a request that fails it spends the separate unauthenticated budget
    // (UNAUTH_RATE_LIMIT_RPS), never the one keyed clients share.
    let key = authenticate(&req, &state).await?;
    take_tokens(&state, key.as_ref(), 1)?;
    require_json(&req)?;
    let body = read_body(&req, payload, state.body_read_timeout, state.max_body_bytes).await?;
    let event = IngestRequest::parse(&body, &state.limits, chrono::Utc::now())?;
    tracing::Span::current().record("event_id", tracing::field::display(event.event_id));
    if let Some(key) = &key {
        if let Some(refusal) = key.scope.write_refusal(event.game_id.as_str()) {
            state
                .metrics
                .auth_failures
                .with_label_values(&["wrong_game"])
                .inc();
            return Err(ApiError::Forbidden(refusal));
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

/// Reads the body (inflating gzip), refusing it as soon as it passes `limit` or when it hasn't
/// all arrived within `timeout` (a client that announces a length and sends less would otherwise
/// hold its connection forever).
async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    timeout: std::time::Duration,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let read = read_raw(req, payload, limit);
    tokio::pin!(read);
    // A small body has usually arrived with the headers: it needs no timer.
    let raw = match futures::FutureExt::now_or_never(&mut read) {
        Some(raw) => raw?,
        None => tokio::time::timeout(timeout, read).await.map_err(|_| {
            ApiError::RequestTimeout(format!(
                "the request body did not arrive within {} ms (BODY_READ_TIMEOUT_MS)",
                timeout.as_millis()
            ))
        })??,
    };
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
    let body = read_body(&req, payload, state.body_read_timeout, state.batch_max_body_bytes).await?;
    // Items stay slices of the body until each is parsed on its own, and the array is counted
    // as it is read: a small body of deeply nested or tiny values can't become a large tree.
    let items = bounded_items(&body, state.batch_max_events)?;
    take_tokens(
        &state,
        key.as_ref(),
        u32::try_from(items.len()).unwrap_or(u32::MAX),
    )?;
    let now = chrono::Utc::now();
    let parsed: Vec<Result<crate::kafka::WireEvent, crate::domain::ValidationError>> = items
        .iter()
        .map(|raw| {
            if raw.get().len() > state.max_body_bytes {
                return Err(crate::domain::ValidationError::body(
                    "too_large",
                    format!(
                        "this event is {} bytes; one event may be at most {} (MAX_BODY_BYTES)",
                        raw.get().len(),
                        state.max_body_bytes
                    ),
                ));
            }
            let event = IngestRequest::parse(raw.get().as_bytes(), &state.limits, now)?;
            match key
                .as_ref()
                .and_then(|k| k.scope.write_refusal(event.game_id.as_str()))
            {
                Some(message) => Err(crate::domain::ValidationError {
                    field: Some("game_id".into()),
                    code: "forbidden_game",
                    message,
                }),
                // Kept serialized: the parsed tree is dropped here, item by item.
                None => Ok(crate::kafka::WireEvent::from(&event)),
            }
        })
        .collect();
    drop(items);
    drop(body);
    let producer = &state.producer;
    let sends = parsed.iter().map(|p| async move {
        match p {
            Ok(event) => Some(producer.send_wire(event).await),
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

/// Takes one token per event from the key's own bucket and then from the instance's; refused
/// if either can't cover all of them now (429 with Retry-After) or ever (429 saying the most a
/// batch may hold). Nothing is taken when refused.
fn take_tokens(state: &AppState, key: Option<&crate::auth::Authenticated>, n: u32) -> Result<(), ApiError> {
    let refused = |refusal, whose| {
        state.metrics.rate_limited.inc();
        match refusal {
            Refusal::Wait(retry_after) => ApiError::RateLimited { retry_after },
            Refusal::Never { burst } => ApiError::BatchOverLimit {
                events: n,
                limit: burst,
                whose,
            },
        }
    };
    let key_limiter = key.and_then(|k| k.limiter.as_deref());
    if let Some(limiter) = key_limiter {
        limiter.try_acquire_n(n).map_err(|r| refused(r, "API key's"))?;
    }
    state.limiter.try_acquire_n(n).map_err(|r| {
        if let Some(limiter) = key_limiter {
            limiter.refund(n);
        }
        refused(r, "instance's")
    })
}

/// The top-level array's items as slices of the body, refusing an array of more than `max`
/// items as soon as the reader passes it, so the count costs no more memory than `max` slices.
fn bounded_items(body: &[u8], max: usize) -> Result<Vec<&serde_json::value::RawValue>, ApiError> {
    use serde::de::{DeserializeSeed, Error, SeqAccess, Visitor};
    struct Bounded(usize);
    impl<'de> Visitor<'de> for Bounded {
        type Value = Vec<&'de serde_json::value::RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a JSON array of 1 to {} events", self.0)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                if items.len() == self.0 {
                    return Err(A::Error::custom(format!(
                        "a batch holds at most {} events",
                        self.0
                    )));
                }
                items.push(item);
            }
            Ok(items)
        }
    }
    impl<'de> DeserializeSeed<'de> for Bounded {
        type Value = Vec<&'de serde_json::value::RawValue>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let items = Bounded(max)
        .deserialize(&mut de)
        .and_then(|items| de.end().map(|()| items))
        .map_err(|e| ApiError::BadBody(format!("a batch must be a JSON array of 1 to {max} events: {e}")))?;
    if items.is_empty() {
        return Err(ApiError::BadBody(format!(
            "a batch holds 1 to {max} events, got 0"
        )));
    }
    Ok(items)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_event_fields_are_the_accepted_ones() {
        let schema = <EventRequest as utoipa::PartialSchema>::schema();
        let utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(object)) = schema else {
            panic!("EventRequest is documented as an object");
        };
        let mut documented: Vec<&str> = object.properties.keys().map(String::as_str).collect();
        let mut accepted = crate::domain::ALLOWED_FIELDS.to_vec();
        documented.sort_unstable();
        accepted.sort_unstable();
        assert_eq!(documented, accepted);
    }
}
