//! The GitLab half of the fake: `/api/v4/user`, commit statuses with GitLab's transition rule,
//! MR notes (list newest first with pages, create, edit), and for comment commands users by
//! name, member access levels, merge requests and award emoji on notes.

use axum::http::Method;
use serde_json::json;

use super::{Answer, ForgeState, GITLAB_TOKEN, GitlabStatus, Note, Reaction, Request, query_param};

pub(crate) fn handle(state: &mut ForgeState, req: &Request<'_>) -> Answer {
    let token = req
        .headers
        .get("private-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if token != GITLAB_TOKEN {
        return Answer::json(401, json!({"message": "401 Unauthorized"}));
    }
    let seg = req.segments("/api/v4/");
    match (req.method, seg.as_slice()) {
        (&Method::GET, ["user"]) => Answer::json(200, json!({"id": 1, "username": "ferry-bot"})),
        (&Method::GET, ["users"]) => {
            let login = query_param(req.query, "username").unwrap_or_default();
            let found: Vec<_> = state
                .users
                .iter()
                .filter(|u| u.login == login)
                .map(|u| json!({"id": u.id, "username": u.login}))
                .collect();
            Answer::json(200, json!(found))
        }
        (&Method::GET, ["projects", _, "members", "all", id]) => {
            let member = state
                .users
                .iter()
                .find(|u| id.parse::<u64>().is_ok_and(|id| u.id == id))
                .and_then(|u| u.role.map(|role| (u, role)));
            match member {
                Some((u, role)) => Answer::json(
                    200,
                    json!({"id": u.id, "username": u.login, "state": "active",
                           "access_level": role.gitlab_level()}),
                ),
                None => Answer::json(404, json!({"message": "404 Not found"})),
            }
        }
        (&Method::GET, ["projects", _, "merge_requests", mr]) => {
            let found = mr
                .parse::<u64>()
                .ok()
                .and_then(|n| state.merge_requests.get(&n).map(|m| (n, m)));
            match found {
                Some((n, m)) => Answer::json(
                    200,
                    json!({"iid": n, "sha": m.sha, "source_branch": m.source_branch,
                           "target_branch": m.target_branch}),
                ),
                None => Answer::not_found(),
            }
        }
        (
            &Method::POST,
            [
                "projects",
                _,
                "merge_requests",
                _,
                "notes",
                note,
                "award_emoji",
            ],
        ) => {
            let Ok(comment) = note.parse::<u64>() else {
                return Answer::not_found();
            };
            let name = req.field("name");
            let taken = state
                .reactions
                .iter()
                .any(|r| r.comment == comment && r.name == name);
            if taken {
                return Answer::json(
                    404,
                    json!({"message": "404 Award Emoji Name has already been taken Not Found"}),
                );
            }
            state.reactions.push(Reaction {
                comment,
                name: name.clone(),
            });
            Answer::json(201, json!({"id": state.next_id(), "name": name}))
        }
        (&Method::POST, ["projects", _, "statuses", sha]) => status(state, req, sha),
        (&Method::GET, ["projects", _, "merge_requests", mr, "notes"]) => {
            let Ok(mr) = mr.parse::<u64>() else {
                return Answer::not_found();
            };
            let mut notes = state.notes.get(&mr).cloned().unwrap_or_default();
            if query_param(req.query, "sort").as_deref() != Some("asc") {
                notes.reverse();
            }
            let page: Vec<_> = req
                .page(&notes)
                .iter()
                .map(|n| json!({"id": n.id, "body": n.body, "system": false}))
                .collect();
            Answer::json(200, json!(page))
        }
        (&Method::POST, ["projects", _, "merge_requests", mr, "notes"]) => {
            let Ok(mr) = mr.parse::<u64>() else {
                return Answer::not_found();
            };
            let id = state.next_id();
            let body = req.field("body");
            state.notes.entry(mr).or_default().push(Note {
                id,
                body: body.clone(),
                edits: 0,
            });
            Answer::json(201, json!({"id": id, "body": body}))
        }
        (&Method::PUT, ["projects", _, "merge_requests", mr, "notes", id]) => {
            let (Ok(mr), Ok(id)) = (mr.parse::<u64>(), id.parse::<u64>()) else {
                return Answer::not_found();
            };
            let body = req.field("body");
            let note = state
                .notes
                .get_mut(&mr)
                .and_then(|notes| notes.iter_mut().find(|n| n.id == id));
            match note {
                Some(note) => {
                    note.body = body.clone();
                    note.edits += 1;
                    Answer::json(200, json!({"id": id, "body": body}))
                }
                None => Answer::not_found(),
            }
        }
        _ => Answer::not_found(),
    }
}

/// GitLab's rule (`Ci::CreateCommitStatusService`): the status updated is the latest one of that
/// sha, name and ref still `pending` or `running`; otherwise a new one starts as `created`. Each
/// state is an event of the status state machine, and an event that does not apply answers `400`.
fn status(state: &mut ForgeState, req: &Request<'_>, sha: &str) -> Answer {
    let wanted = req.field("state");
    let name = match req.field("name") {
        n if n.is_empty() => "default".to_owned(),
        n => n,
    };
    let git_ref = req.field("ref");
    let open = state.gitlab_statuses.iter().rposition(|s| {
        s.sha == sha
            && s.name == name
            && s.git_ref == git_ref
            && (s.state == "pending" || s.state == "running")
    });
    let current = open.map_or("created", |i| state.gitlab_statuses[i].state.as_str());
    let (event, allowed): (&str, &[&str]) = match wanted.as_str() {
        "pending" => ("enqueue", &["created"]),
        "running" => ("run", &["created", "pending"]),
        "success" => ("succeed", &["created", "pending", "running"]),
        "failed" => ("drop", &["created", "pending", "running"]),
        "canceled" => ("cancel", &["created", "pending", "running"]),
        "skipped" => ("skip", &["created", "pending"]),
        _ => {
            return Answer::json(400, json!({"message": "state does not have a valid value"}));
        }
    };
    if !allowed.contains(&current) {
        return Answer::json(
            400,
            json!({"message": format!("Cannot transition status via :{event} from :{current}")}),
        );
    }
    let entry = GitlabStatus {
        id: 0,
        sha: sha.to_owned(),
        name: name.clone(),
        git_ref: git_ref.clone(),
        state: wanted.clone(),
        description: req.field("description"),
        target_url: req.field("target_url"),
    };
    let id = match open {
        Some(i) => {
            let id = state.gitlab_statuses[i].id;
            state.gitlab_statuses[i] = GitlabStatus { id, ..entry };
            id
        }
        None => {
            let id = state.next_id();
            state.gitlab_statuses.push(GitlabStatus { id, ..entry });
            id
        }
    };
    Answer::json(
        201,
        json!({"id": id, "sha": sha, "name": name, "ref": git_ref, "status": wanted}),
    )
}
