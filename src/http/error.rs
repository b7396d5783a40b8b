//! `ApiError`: every way a request can fail, mapped once to a status code and a JSON body.
//!
//! The body always has the same shape, `{"status":"error","error":{"code":…,"message":…}}`,
//! plus `field` when one field was wrong. Client mistakes are 4xx; Kafka trouble is a retryable
//! 503 with `Retry-After`; 500 is reserved for our own bugs.

use crate::domain::ValidationError;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;
use uuid::Uuid;

/// The body of every error answer: `{"status":"error","error":{…}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub status: ErrorTag,
    pub error: ErrorDetail,
}

/// Always `error`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ErrorTag {
    Error,
}

/// What went wrong, for a program (`code`) and for a person (`message`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable, e.g. `invalid_field`, `not_found`, `rate_limited`.
    pub code: String,
    pub message: String,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// On `kafka_unavailable`: the id to retry with, so the retry can't become a second event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
}

impl From<&ValidationError> for ErrorDetail {
    fn from(v: &ValidationError) -> Self {
        ErrorDetail {
            code: v.code.to_owned(),
            message: v.message.clone(),
            field: v.field.clone(),
            event_id: None,
        }
    }
}

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Validation(#[from] ValidationError),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("could not read the request body: {0}")]
    BadBody(String),
    #[error("rate limit exceeded; retry after {} s", retry_after_secs(*retry_after))]
    RateLimited { retry_after: Duration },
    #[error("a batch of {events} events is more than the {limit} the {whose} rate limit can ever allow at once; send at most {limit} per batch")]
    BatchOverLimit {
        events: u32,
        limit: u32,
        whose: &'static str,
    },
    #[error("{0}")]
    RequestTimeout(String),
    #[error("the event could not be written to Kafka ({reason}); retry with the same event_id")]
    KafkaUnavailable { reason: String, event_id: Uuid },
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadQuery(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("a store is unavailable ({0}); retry shortly")]
    StoreUnavailable(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
}

/// Whole seconds to wait, rounded up and at least 1: what `Retry-After` and the message both say.
fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::Validation(v) => v.code,
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::BadBody(_) => "invalid_body",
            ApiError::RateLimited { .. } | ApiError::BatchOverLimit { .. } => "rate_limited",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::KafkaUnavailable { .. } => "kafka_unavailable",
            ApiError::NotReady(_) => "not_ready",
            ApiError::NotFound(_) => "not_found",
            ApiError::BadQuery(_) => "invalid_query",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::StoreUnavailable(_) => "store_unavailable",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            // An oversized `data` object is a size problem too, whatever layer found it.
            ApiError::Validation(v) if v.code == "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Validation(_) | ApiError::BadBody(_) | ApiError::BadQuery(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited { .. } | ApiError::BatchOverLimit { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::KafkaUnavailable { .. } | ApiError::NotReady(_) | ApiError::StoreUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let error = ErrorDetail {
            code: self.code().to_owned(),
            message: self.to_string(),
            field: match self {
                ApiError::Validation(v) => v.field.clone(),
                _ => None,
            },
            event_id: match self {
                ApiError::KafkaUnavailable { event_id, .. } => Some(*event_id),
                _ => None,
            },
        };
        let mut res = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthorized(_) => {
                res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::RateLimited { retry_after } => {
                res.insert_header((header::RETRY_AFTER, retry_after_secs(*retry_after).to_string()));
            }
            // A client too slow to send its request doesn't keep the connection.
            ApiError::RequestTimeout(_) => {
                res.force_close();
            }
            ApiError::KafkaUnavailable { .. } | ApiError::NotReady(_) | ApiError::StoreUnavailable(_) => {
                res.insert_header((header::RETRY_AFTER, "1"));
            }
            _ => {}
        }
        res.json(ErrorBody {
            status: ErrorTag::Error,
            error,
        })
    }
}
