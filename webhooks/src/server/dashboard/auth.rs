//! Who may read the dashboard, and signing in.
//!
//! With `dashboard_public: true` every page is readable by anyone. Otherwise a read needs an API
//! token (the same bearer tokens as `/api/v1`, any scope: reading is all or nothing, like the
//! public setting; what a token may *do* is checked by the API): from an `Authorization: Bearer`
//! header, or from the `ferry_token` cookie that signing in sets.
//!
//! **Signing in.** The sign-in box sends the pasted token to `POST /login` as JSON; when the token
//! is valid the answer sets `ferry_token` as an `HttpOnly; SameSite=Strict` cookie (`Secure` when
//! `public_url` is https), so plain page loads and `/events` carry it and no script can read it.
//! The script also keeps the token in `sessionStorage` (this tab only, gone when it closes) to
//! call the API's rerun and cancel with `Authorization: Bearer`: the API takes bearer tokens
//! only, so it is never reached through the cookie, and cross-site requests cannot act. The
//! trade-off: a script running in the page could read `sessionStorage`; the strict
//! Content-Security-Policy (only `/assets/app.js` runs) and the escaping of every value are what
//! keep foreign script out. `/login` takes only `application/json`, which a cross-site form cannot
//! send, so no other site can sign a browser in with its own token.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::super::AppState;

/// The cookie that carries the token on page loads.
pub const COOKIE: &str = "ferry_token";
/// How long the cookie lasts (the token itself lasts until it is revoked).
const COOKIE_MAX_AGE_SECS: u64 = 12 * 3600;

/// Whether a request may read, and why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone may read (`dashboard_public: true`).
    Public,
    /// A valid token came with the request.
    SignedIn,
    /// A token is needed and none valid came.
    Denied,
}

/// The token a request carries: its bearer header, else its `ferry_token` cookie.
pub fn token_of(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    bearer.or_else(|| {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == COOKIE)
            .map(|(_, value)| value.trim())
    })
}

/// Whether `token` is a valid, unrevoked API token.
async fn valid(state: &AppState, token: &str) -> bool {
    match state.store.authenticate_token(token).await {
        Ok(found) => found.is_some(),
        Err(e) => {
            tracing::error!(error = %e, "dashboard: cannot check a token");
            false
        }
    }
}

/// Whether the request may read the dashboard.
pub async fn access(state: &AppState, headers: &HeaderMap) -> Access {
    if state.config.dashboard_public {
        return Access::Public;
    }
    match token_of(headers) {
        Some(token) if valid(state, token).await => Access::SignedIn,
        Some(_) | None => Access::Denied,
    }
}

/// `POST /login`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// The API token.
    token: String,
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// `POST /login`: checks the token and sets the cookie.
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the token as JSON: {\"token\": \"...\"}",
        );
    }
    let Ok(Login { token }) = serde_json::from_slice::<Login>(&body) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "token: expected {\"token\": \"...\"}",
        );
    };
    let token = token.trim();
    let cookie_safe = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !cookie_safe || !valid(&state, token).await {
        return json_error(StatusCode::UNAUTHORIZED, "token: unknown or revoked");
    }
    let secure = state
        .config
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"));
    set_cookie(token, COOKIE_MAX_AGE_SECS, secure)
}

/// `POST /logout`: clears the cookie.
pub async fn logout() -> Response {
    set_cookie("", 0, false)
}

fn set_cookie(value: &str, max_age: u64, secure: bool) -> Response {
    let cookie = format!(
        "{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    );
    match HeaderValue::from_str(&cookie) {
        Ok(v) => (StatusCode::NO_CONTENT, [(header::SET_COOKIE, v)]).into_response(),
        Err(_) => json_error(StatusCode::BAD_REQUEST, "token: not a valid token"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn the_token_comes_from_the_bearer_header_or_the_cookie() {
        assert_eq!(token_of(&headers(&[])), None);
        assert_eq!(
            token_of(&headers(&[("authorization", "Bearer ferry_abc")])),
            Some("ferry_abc")
        );
        assert_eq!(
            token_of(&headers(&[("cookie", "a=1; ferry_token=ferry_xyz; b=2")])),
            Some("ferry_xyz")
        );
        assert_eq!(
            token_of(&headers(&[
                ("authorization", "Bearer ferry_abc"),
                ("cookie", "ferry_token=ferry_xyz")
            ])),
            Some("ferry_abc"),
            "the header wins"
        );
        assert_eq!(
            token_of(&headers(&[("cookie", "not_ferry_token=ferry_xyz")])),
            None
        );
        assert_eq!(token_of(&headers(&[("authorization", "Basic abc")])), None);
    }

    #[test]
    fn the_cookie_is_http_only_and_strict() {
        let r = set_cookie("ferry_abc", 60, true);
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            r.headers()[header::SET_COOKIE],
            "ferry_token=ferry_abc; Path=/; Max-Age=60; HttpOnly; SameSite=Strict; Secure"
        );
    }
}
