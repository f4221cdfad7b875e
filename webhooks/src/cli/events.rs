//! `ferry events list|retry`: webhook deliveries whose planning failed, on a ferry server
//! (`GET /api/v1/events`, `POST /api/v1/events/{id}/retry`).

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;

use super::client::{Client, table};
use super::runs::{Output, finish, form_query};
use crate::server::api::types::{DeliveryList, DeliverySummary};

/// `ferry events ...`.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Deliveries whose planning failed, newest first: retrying (an outage) or failed (given up).
    List {
        /// Only this project.
        #[arg(long)]
        project: Option<String>,
        /// Only `retrying` or only `failed` ones.
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        out: Output,
    },
    /// Put a failed delivery back in line; it is planned at once.
    Retry {
        /// The event's id (from `ferry events list`).
        id: i64,
        #[command(flatten)]
        out: Output,
    },
}

/// Runs `ferry events ...`.
pub fn events(command: EventsCommand) -> Result<ExitCode> {
    match command {
        EventsCommand::List {
            project,
            state,
            limit,
            out,
        } => {
            let mut query =
                form_query(&[("project", project.as_deref()), ("state", state.as_deref())]);
            query.push(format!("limit={limit}"));
            let client = Client::new(out.server())?;
            let answer =
                client.get::<DeliveryList>(&format!("/api/v1/events?{}", query.join("&")))?;
            finish(answer, &out, |list| println!("{}", list_text(&list.events)))
        }
        EventsCommand::Retry { id, out } => {
            let client = Client::new(out.server())?;
            let answer = client.post(&format!("/api/v1/events/{id}/retry"), &Value::Null)?;
            finish(answer, &out, |e: &DeliverySummary| {
                println!("event {} ({}) is back in line", e.id, e.project);
            })
        }
    }
}

/// What the event was, in a few words: `push main 1a2b3c4d`, `merge_request !12`, ...
fn what(event: &Value) -> String {
    let kind = &event["kind"];
    let word = kind["type"].as_str().unwrap_or("event");
    let mut parts = vec![word.to_owned()];
    for key in ["branch", "tag"] {
        if let Some(name) = kind[key].as_str() {
            parts.push(name.to_owned());
        }
    }
    if let Some(number) = kind["number"].as_i64() {
        parts.push(format!("!{number}"));
    }
    if let Some(sha) = kind["after"].as_str().or_else(|| kind["head_sha"].as_str()) {
        parts.push(sha.get(..8).unwrap_or(sha).to_owned());
    }
    parts.join(" ")
}

fn list_text(events: &[DeliverySummary]) -> String {
    if events.is_empty() {
        return "no deliveries are retrying or failed".to_owned();
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let state = serde_json::to_value(e.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            vec![
                e.id.to_string(),
                e.project.clone(),
                what(&e.event),
                state,
                e.attempts.to_string(),
                e.received_at
                    .get(..19)
                    .unwrap_or(&e.received_at)
                    .replace('T', " "),
                e.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "PROJECT",
            "EVENT",
            "STATE",
            "ATTEMPTS",
            "RECEIVED (UTC)",
            "LAST ERROR",
        ],
        &rows,
    )
}
