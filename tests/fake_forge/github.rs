//! The GitHub half of the fake: commit statuses, issue comments (list in pages, create, edit),
//! check runs (create, update, list per commit and name), what a GitHub App needs (the
//! repository's installation, installation tokens), and for comment commands collaborator
//! permissions, pull requests and reactions on comments.

use axum::http::Method;
use serde_json::{Value, json};

use super::{
    Answer, CheckRun, ForgeState, GITHUB_TOKEN, INSTALLATION_TOKEN, Note, Reaction, Request,
    query_param,
};

pub(crate) fn handle(state: &mut ForgeState, req: &Request<'_>) -> Answer {
    let seg = req.segments("/");
    let auth = req.authorization();
    // App endpoints are signed with the App's JWT; the others need a token.
    let app_call = matches!(
        seg.as_slice(),
        ["app", ..] | ["repos", _, _, "installation"]
    );
    let authorised = if app_call {
        auth.starts_with("Bearer ey")
    } else {
        auth == format!("Bearer {GITHUB_TOKEN}") || auth == format!("Bearer {INSTALLATION_TOKEN}")
    };
    if !authorised {
        return Answer::json(401, json!({"message": "Bad credentials"}));
    }
    match (req.method, seg.as_slice()) {
        (&Method::GET, ["repos", _, _, "installation"]) => Answer::json(200, json!({"id": 77})),
        (&Method::POST, ["app", "installations", _, "access_tokens"]) => Answer::json(
            201,
            json!({
                "token": INSTALLATION_TOKEN,
                "expires_at": "2999-01-01T00:00:00Z",
                "permissions": {"checks": "write", "statuses": "write", "issues": "write"},
            }),
        ),
        (&Method::POST, ["repos", _, _, "statuses", sha]) => {
            state.github_statuses.push((
                (*sha).to_owned(),
                req.field("context"),
                req.field("state"),
                req.field("description"),
            ));
            Answer::json(
                201,
                json!({"id": state.next_id(), "state": req.field("state")}),
            )
        }
        (&Method::GET, ["repos", _, _, "issues", pr, "comments"]) => {
            let notes = pr
                .parse::<u64>()
                .ok()
                .and_then(|pr| state.notes.get(&pr).cloned())
                .unwrap_or_default();
            let page: Vec<Value> = req
                .page(&notes)
                .iter()
                .map(|n| json!({"id": n.id, "body": n.body}))
                .collect();
            Answer::json(200, json!(page))
        }
        (&Method::POST, ["repos", _, _, "issues", pr, "comments"]) => {
            let Ok(pr) = pr.parse::<u64>() else {
                return Answer::not_found();
            };
            let id = state.next_id();
            let body = req.field("body");
            state.notes.entry(pr).or_default().push(Note {
                id,
                body: body.clone(),
                edits: 0,
            });
            Answer::json(201, json!({"id": id, "body": body}))
        }
        (&Method::PATCH, ["repos", _, _, "issues", "comments", id]) => {
            let body = req.field("body");
            let id = id.parse::<u64>().unwrap_or(0);
            let note = state
                .notes
                .values_mut()
                .flat_map(|notes| notes.iter_mut())
                .find(|n| n.id == id);
            match note {
                Some(note) => {
                    note.body = body.clone();
                    note.edits += 1;
                    Answer::json(200, json!({"id": id, "body": body}))
                }
                None => Answer::not_found(),
            }
        }
        (&Method::GET, ["repos", _, _, "collaborators", login, "permission"]) => {
            let login = super::decode(login);
            match state.users.iter().find(|u| u.login == login) {
                Some(u) => {
                    let (permission, role) = u.role.map_or(("none", "none"), |r| r.github_words());
                    Answer::json(
                        200,
                        json!({"permission": permission, "role_name": role,
                               "user": {"login": u.login}}),
                    )
                }
                None => Answer::json(404, json!({"message": "Not Found"})),
            }
        }
        (&Method::GET, ["repos", _, _, "pulls", number]) => {
            let found = number
                .parse::<u64>()
                .ok()
                .and_then(|n| state.merge_requests.get(&n).map(|m| (n, m)));
            match found {
                Some((n, m)) => Answer::json(
                    200,
                    json!({"number": n, "head": {"sha": m.sha, "ref": m.source_branch},
                           "base": {"ref": m.target_branch}}),
                ),
                None => Answer::not_found(),
            }
        }
        (&Method::POST, ["repos", _, _, "issues", "comments", id, "reactions"]) => {
            let Ok(comment) = id.parse::<u64>() else {
                return Answer::not_found();
            };
            let name = req.field("content");
            let taken = state
                .reactions
                .iter()
                .any(|r| r.comment == comment && r.name == name);
            if !taken {
                state.reactions.push(Reaction {
                    comment,
                    name: name.clone(),
                });
            }
            let status = if taken { 200 } else { 201 };
            Answer::json(status, json!({"id": comment, "content": name}))
        }
        (&Method::POST, ["repos", _, _, "check-runs"]) => {
            let id = state.next_id();
            let check = CheckRun {
                id,
                name: req.field("name"),
                head_sha: req.field("head_sha"),
                external_id: req.field("external_id"),
                status: req.field("status"),
                conclusion: req
                    .body
                    .get("conclusion")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                summary: summary(req.body),
            };
            state.check_runs.push(check);
            Answer::json(201, json!({"id": id}))
        }
        (&Method::PATCH, ["repos", _, _, "check-runs", id]) => {
            let id = id.parse::<u64>().unwrap_or(0);
            let Some(check) = state.check_runs.iter_mut().find(|c| c.id == id) else {
                return Answer::not_found();
            };
            check.status = req.field("status");
            check.conclusion = req
                .body
                .get("conclusion")
                .and_then(Value::as_str)
                .map(str::to_owned);
            check.summary = summary(req.body);
            Answer::json(200, json!({"id": id}))
        }
        (&Method::GET, ["repos", _, _, "commits", sha, "check-runs"]) => {
            let name = query_param(req.query, "check_name");
            let runs: Vec<Value> = state
                .check_runs
                .iter()
                .filter(|c| c.head_sha == *sha && name.as_ref().is_none_or(|n| *n == c.name))
                .map(|c| json!({"id": c.id, "name": c.name, "external_id": c.external_id}))
                .collect();
            Answer::json(200, json!({"total_count": runs.len(), "check_runs": runs}))
        }
        _ => Answer::not_found(),
    }
}

fn summary(body: &Value) -> String {
    body.pointer("/output/summary")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}
