//! The API's one error type and its mapping to HTTP, in one place.
//!
//! Every handler returns `Result<_, ApiError>`; the body is always
//! `{"error": {"code": "...", "message": "..."}}`. Bad requests map to 4xx
//! with a message naming the problem; only failures of Sluice itself (the
//! store unable to write) are 5xx, and their answers never carry internal
//! detail (SQL, paths): that goes to the log.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use sluice_jobs::JobsError;
use sluice_store::StoreError;
use utoipa::ToSchema;

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request (400).
    #[error("{0}")]
    BadRequest(String),
    /// Unknown job, model or item (404).
    #[error("{0}")]
    NotFound(String),
    /// Not allowed (403), e.g. a source path outside the allowed roots.
    #[error("{0}")]
    Forbidden(String),
    /// The route exists but not for this method (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request conflicts with the job's state (409).
    #[error("{0}")]
    Conflict(String),
    /// Body or input too large (413).
    #[error("{0}")]
    TooLarge(String),
    /// The real-time queue is full (429, with `Retry-After`).
    #[error("{0}")]
    Overloaded(String),
    /// The request's deadline passed before it ran (504).
    #[error("{0}")]
    Timeout(String),
    /// Not ready to serve (503).
    #[error("{0}")]
    Unavailable(String),
    /// The job store cannot take the request now, e.g. its disk is full (503, with
    /// `Retry-After`). The message is generic; the cause is logged.
    #[error("{0}")]
    StoreUnavailable(String),
    /// A failure of Sluice itself (500).
    #[error("{0}")]
    Internal(String),
}

/// The error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`bad_request`, `not_found`, ...).
    pub code: &'static str,
    /// What is wrong, for humans.
    pub message: String,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::Overloaded(_) => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::StoreUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
            },
        };
        let mut resp = (status, Json(body)).into_response();
        let retry_after = match self {
            ApiError::Overloaded(_) => Some("1"),
            ApiError::StoreUnavailable(_) => Some(STORE_RETRY_AFTER_S),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(seconds),
            );
        }
        resp
    }
}

/// `Retry-After` (seconds) of a 503 from a store that cannot write.
pub const STORE_RETRY_AFTER_S: &str = "5";

/// The message of a 503 from a store that cannot write.
pub const STORE_UNAVAILABLE: &str = "the job store cannot take this request now (see /readyz); retry later";

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::NotFound(m),
            StoreError::DuplicateKey(k) => ApiError::BadRequest(format!("duplicate input key '{k}'")),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            // A malformed argument from the request (e.g. a bad job list cursor) is the client's fault.
            e @ StoreError::Invalid(_) => ApiError::BadRequest(e.to_string()),
            e @ StoreError::TooManyInputs { .. } => ApiError::TooLarge(e.to_string()),
            // The database's own text (SQL, paths) stays in the log.
            e @ StoreError::Corrupt(_) => {
                tracing::error!(error = %e, "the job store holds data it cannot read");
                ApiError::Internal("internal error in the job store".into())
            }
            other => {
                tracing::error!(error = %other, class = other.failure_class().unwrap_or("database"), "job store failure");
                ApiError::StoreUnavailable(STORE_UNAVAILABLE.into())
            }
        }
    }
}

/// The one mapping of the jobs runtime's errors to HTTP: a refused request
/// keeps its message; a store failure maps as [`StoreError`] does (a generic
/// 503 with `Retry-After` when the store cannot write).
impl From<JobsError> for ApiError {
    fn from(e: JobsError) -> Self {
        match e {
            JobsError::Invalid(m) => ApiError::BadRequest(m),
            JobsError::NotFound(m) => ApiError::NotFound(m),
            JobsError::ModelUnavailable(m) => ApiError::Unavailable(m),
            JobsError::Forbidden(m) => ApiError::Forbidden(m),
            JobsError::Conflict(m) => ApiError::Conflict(m),
            JobsError::TooLarge(m) => ApiError::TooLarge(m),
            JobsError::Store(e) => ApiError::from(e),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::TooLarge(format!("request body too large: {}", b.body_text()))
            }
            other => ApiError::BadRequest(format!("invalid JSON body: {}", other.body_text())),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(format!("invalid query: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(format!("invalid path: {}", r.body_text()))
    }
}

impl From<axum::extract::multipart::MultipartError> for ApiError {
    fn from(e: axum::extract::multipart::MultipartError) -> Self {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!("upload too large: {}", e.body_text()))
        } else {
            ApiError::BadRequest(format!("invalid multipart body: {}", e.body_text()))
        }
    }
}
