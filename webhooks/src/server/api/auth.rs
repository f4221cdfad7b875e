//! Who is calling: bearer tokens (`Authorization: Bearer ferry_...`), checked against the store.
//!
//! Handlers name what they need by the extractor they take: [`Writer`] (every `POST`: a valid
//! token, always) or [`Reader`] (every `GET`: a valid token, unless the config says
//! `dashboard_public: true`, when anyone may read everything). A token that is present is always
//! checked, even where none is needed: a wrong one is `401`, never silently ignored. The token's scope is
//! checked against the run's project by the handler ([`Caller::check`]): `403` when it does not
//! cover it. The webhooks do not come through here; they are verified by their own secrets.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use ferry_engine::store::{ApiToken, TokenScope};

use super::error::ApiError;
use super::types::ErrorCode;
use crate::server::AppState;

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A valid token.
    Token(ApiToken),
    /// Anyone, on a read that `dashboard_public: true` opens to everyone.
    Public,
}

impl Caller {
    /// `403` unless the caller may act on `project`.
    pub fn check(&self, project: &str) -> Result<(), ApiError> {
        match self {
            Caller::Public => Ok(()),
            Caller::Token(token) if token.scope.covers(project) => Ok(()),
            Caller::Token(token) => Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "token `{}` is scoped to {}, not project `{project}`",
                    token.name, token.scope
                ),
            )),
        }
    }

    /// The project a list is narrowed to: the one `asked` for (`403` unless the caller may see
    /// it), else a project token's own project (it sees nothing else), else none (all).
    pub fn project_filter(&self, asked: Option<String>) -> Result<Option<String>, ApiError> {
        match (self.only_project(), asked) {
            (_, Some(asked)) => {
                self.check(&asked)?;
                Ok(Some(asked))
            }
            (Some(own), None) => Ok(Some(own.to_owned())),
            (None, None) => Ok(None),
        }
    }

    /// The one project the caller may see, for a token scoped to a project.
    pub fn only_project(&self) -> Option<&str> {
        match self {
            Caller::Token(ApiToken {
                scope: TokenScope::Project(p),
                ..
            }) => Some(p),
            Caller::Token(_) | Caller::Public => None,
        }
    }
}

/// A caller allowed to read (`GET`).
pub struct Reader(pub Caller);

/// A caller allowed to write (`POST`): always a token.
pub struct Writer(pub ApiToken);

impl Writer {
    /// The caller, for scope checks.
    pub fn caller(&self) -> Caller {
        Caller::Token(self.0.clone())
    }
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(parts, state).await?;
        if state.config.dashboard_public {
            // Reads are open to everyone: a (valid) token does not narrow them.
            return Ok(Reader(Caller::Public));
        }
        token.map(|t| Reader(Caller::Token(t))).ok_or_else(missing)
    }
}

impl FromRequestParts<AppState> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        bearer_token(parts, state)
            .await?
            .map(Writer)
            .ok_or_else(missing)
    }
}

fn missing() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthorized,
        "this route needs a bearer token (Authorization: Bearer <token>); \
         create one with `ferry token create`",
    )
}

/// The token of the `Authorization` header: `None` without the header, `401` for a header that
/// is not `Bearer <token>` or a token that is unknown or revoked.
async fn bearer_token(parts: &Parts, state: &AppState) -> Result<Option<ApiToken>, ApiError> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let unauthorized = |message: &str| ApiError::new(ErrorCode::Unauthorized, message);
    let text = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not text"))?;
    let token = match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(unauthorized(
                "the Authorization header must be `Bearer <token>`",
            ));
        }
    };
    match state.store.authenticate_token(token).await? {
        Some(found) => Ok(Some(found)),
        None => Err(unauthorized("unknown or revoked token")),
    }
}
