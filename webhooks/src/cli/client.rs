//! The HTTP client of the API verbs (`ferry runs ...`, `ferry trigger`), and their table output.
//!
//! The server is `--server URL`, else `FERRY_SERVER`, else `http://127.0.0.1:8080`; the token is
//! `FERRY_TOKEN` (an environment variable only, so that it never shows in `ps` or shell history).
//! The client is reqwest's blocking client: the `gitlab` crate already builds reqwest with these
//! features (rustls on aws-lc-rs), so it costs no new crate.
//!
//! An error answer from the server (`4xx`/`5xx` with the API's error body) is printed as its
//! message and details, and the command exits with 1; not reaching the server at all is an error
//! (exit 2) naming the URL.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::server::api::types::ErrorBody;

/// Where the server is.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The ferry server (or set FERRY_SERVER). The token is read from FERRY_TOKEN.
    #[arg(long, env = "FERRY_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
}

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(120);

/// What a request ended with.
pub enum Answer<T> {
    /// A 2xx answer.
    Ok(T),
    /// An error answer: the status and what the server said, ready to print.
    Refused(u16, String),
}

/// A client of one server.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
}

impl Client {
    /// A client of `args.server`, with `FERRY_TOKEN` when it is set.
    pub fn new(args: &ServerArgs) -> Result<Client> {
        let http = reqwest::blocking::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        let token = std::env::var("FERRY_TOKEN").ok().filter(|t| !t.is_empty());
        Ok(Client {
            base: args.server.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    /// `GET path` (with its query already in it).
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Answer<T>> {
        self.send(self.http.get(self.url(path)))
    }

    /// `POST path` with a JSON body.
    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<Answer<T>> {
        self.send(self.http.post(self.url(path)).json(body))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn send<T: DeserializeOwned>(
        &self,
        mut request: reqwest::blocking::RequestBuilder,
    ) -> Result<Answer<T>> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .with_context(|| format!("cannot reach the ferry server at {}", self.base))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .with_context(|| format!("reading the answer of {}", self.base))?;
        if status.is_success() {
            let value = serde_json::from_slice(&bytes).with_context(|| {
                format!("the server's answer is not what ferry expects ({status})")
            })?;
            return Ok(Answer::Ok(value));
        }
        Ok(Answer::Refused(
            status.as_u16(),
            refusal(status.as_u16(), &bytes, self.token.is_some()),
        ))
    }
}

/// The text of an error answer: the API's message and details, else the body as text.
fn refusal(status: u16, body: &[u8], has_token: bool) -> String {
    let mut out = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => {
            let mut text = e.error.message;
            for d in e.error.details {
                let _ = match d.field {
                    Some(field) => write!(text, "\n  {field}: {}", d.message),
                    None => write!(text, "\n  {}", d.message),
                };
            }
            text
        }
        Err(_) => format!("HTTP {status}: {}", String::from_utf8_lossy(body).trim()),
    };
    if status == 401 && !has_token {
        out.push_str("\n  (set FERRY_TOKEN to a token from `ferry token create`)");
    }
    out
}

/// Prints `rows` under `header`, each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                let _ = write!(text, "{cell}{}  ", " ".repeat(pad));
            }
        }
        text.trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Prints a value as pretty JSON.
pub fn print_json(value: &impl Serialize) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).map_err(|e| anyhow!("printing JSON: {e}"))?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_trim_line_ends() {
        let text = table(
            &["ID", "STATE", "BY"],
            &[
                vec!["1".into(), "succeeded".into(), String::new()],
                vec!["12".into(), "failed".into(), "me".into()],
            ],
        );
        assert_eq!(text, "ID  STATE      BY\n1   succeeded\n12  failed     me");
    }

    #[test]
    fn refusals_show_the_message_details_and_a_hint_for_401() {
        let body = br#"{"error": {"code": "validation_failed", "message": "parameters the pipeline does not declare",
            "details": [{"field": "params.lr", "message": "unknown parameter lr"}]}}"#;
        assert_eq!(
            refusal(422, body, true),
            "parameters the pipeline does not declare\n  params.lr: unknown parameter lr"
        );
        let body = br#"{"error": {"code": "unauthorized", "message": "unknown or revoked token", "details": []}}"#;
        assert!(refusal(401, body, false).contains("set FERRY_TOKEN"));
        assert_eq!(refusal(502, b"bad gateway", true), "HTTP 502: bad gateway");
    }
}
