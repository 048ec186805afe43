//! One error type for every endpoint, rendered in OpenAI's shape
//! `{"error": {"message", "type", "code", "param"}}` with a stable code.
//!
//! Client errors say what was wrong; server errors say only that something failed (the
//! details go to the node's log, never to the caller).

use axum::{
    Json,
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use blyan_model::ModelError;
use blyan_node::NodeError;
use serde_json::json;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    param: Option<&'static str>,
}

impl ApiError {
    /// An error with an explicit status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            param: None,
        }
    }

    /// A 400 naming the parameter at fault.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", message)
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The JSON body, also sent as an SSE event when a stream fails midway.
    pub fn body(&self) -> serde_json::Value {
        let kind = match self.status {
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::NOT_FOUND => "not_found_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        json!({"error": {
            "message": self.message,
            "type": kind,
            "code": self.code,
            "param": self.param,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> ApiError {
        let status = match &e {
            NodeError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            NodeError::Ledger(l) if l.refusal().is_some() => l
                .refusal()
                .and_then(|r| StatusCode::from_u16(r.http_status()).ok())
                .unwrap_or(StatusCode::BAD_REQUEST),
            NodeError::Pol { refusal, .. } => StatusCode::from_u16(refusal.http_status())
                .unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
            NodeError::NotFound { .. } => StatusCode::NOT_FOUND,
            NodeError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            NodeError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            NodeError::NotAdmitted { .. } | NodeError::CallerNotAdmitted { .. } => {
                StatusCode::FORBIDDEN
            }
            NodeError::Login(l) => match l.code() {
                "invalid_message"
                | "malformed_signature"
                | "bad_recovery_byte"
                | "high_s_signature" => StatusCode::BAD_REQUEST,
                _ => StatusCode::UNAUTHORIZED,
            },
            NodeError::Session(_) => StatusCode::UNAUTHORIZED,
            NodeError::Payment { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST)
            }
            e if e.is_client_error() => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            // Internals stay in the log; the caller gets the code only.
            tracing::error!(code = e.code(), error = %e, "internal error");
            return ApiError::new(status, e.code(), "internal error; see the node's log");
        }
        let param = match &e {
            NodeError::InvalidParameter { name, .. }
            | NodeError::Model(ModelError::InvalidParameter { name, .. }) => Some(*name),
            NodeError::ContextLengthExceeded { .. } => Some("max_tokens"),
            NodeError::Model(ModelError::PromptTooLong { .. }) => Some("messages"),
            _ => None,
        };
        ApiError {
            param,
            ..ApiError::new(status, e.code(), e.to_string())
        }
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> ApiError {
        ApiError::from(NodeError::Model(e))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        let (code, message) = match &r {
            JsonRejection::MissingJsonContentType(_) => (
                "unsupported_media_type",
                "expected a request with `Content-Type: application/json`".to_owned(),
            ),
            JsonRejection::JsonSyntaxError(_) => ("invalid_json", r.body_text()),
            JsonRejection::JsonDataError(_) => ("invalid_request", r.body_text()),
            _ if r.status() == StatusCode::PAYLOAD_TOO_LARGE => (
                "body_too_large",
                "the request body is larger than this node accepts".to_owned(),
            ),
            _ => ("invalid_body", r.body_text()),
        };
        ApiError::new(r.status(), code, message)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", r.body_text())
    }
}
