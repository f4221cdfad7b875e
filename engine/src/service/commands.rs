//! Comment commands: `/ferry run | rerun | cancel | ok-to-test | help` in merge request
//! comments, acted on by the planner when it plans the comment's event.
//!
//! The flow of one comment:
//!
//! 1. [`parse`] finds its command lines (pure; the rules are in `parse`). No command: nothing
//!    happens, nothing is answered.
//! 2. A comment that already has an answer in the store is skipped: a redelivered webhook, or an
//!    event planned again after a crash, is never answered twice (the answer's key is the merge
//!    request and the comment's id on the forge).
//! 3. The forge says what the author may do ([`Access`]): developer (GitLab) or write (GitHub)
//!    access or more may use commands; anyone else gets a polite refusal and nothing runs. A
//!    forge that cannot answer now delays the event (planning retries it, in order).
//! 4. The commands run in order, against the merge request's head commit (from the comment's
//!    payload on GitLab; asked of the forge on GitHub). Runs they create are deduplicated by the
//!    comment and the command's position, so acting on a comment twice creates nothing twice.
//! 5. One answer per comment goes into the store (`store::answers`), and the reporter sends it:
//!    **a 👍 reaction when every command was done, a reply otherwise** (help, a refusal, an
//!    error, nothing to do), quoting each command with what came of it. ferry never calls the
//!    forge from here to answer, so answers survive crashes and outages like statuses do.
//!
//! Cancelling goes through the store ([`Store::request_cancel`]): queued and waiting runs are
//! cancelled at once; the dispatcher asks the executor to stop started ones.
//!
//! Without a forge client (`forge: none`) nobody can be checked and nothing can be answered, so
//! comments are ignored (with a warning in the log).
//!
//! [`Store::request_cancel`]: crate::store::Store::request_cancel

mod actions;
mod parse;
mod text;

pub use parse::{Command, CommandLine, MAX_COMMANDS, parse};
pub use text::{help, reply_marker};

use std::sync::Arc;

use crate::config::ProjectConfig;
use crate::event::CommentEvent;
use crate::forge::report::{Access, Forge, ForgeError, MergeRequestHead, Reaction};
use crate::service::planner::{PlanError, Planner};
use crate::store::{AnswerKind, EventId, NewAnswer, StoredEvent};

/// What came of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Said {
    /// Done: a reaction says enough, but here is a line for a reply that covers other commands.
    Done(String),
    /// Something to read: the help, an error, nothing to do.
    Told(String),
}

/// The comment being acted on.
struct Ctx<'a> {
    project: &'a ProjectConfig,
    event: &'a StoredEvent,
    comment: &'a CommentEvent,
    /// The merge request, as stored in runs.
    mr: i64,
    /// The answer's key, also the dedup scope of the runs the comment creates.
    key: String,
    /// The merge request's head, when a command needs it.
    head: Option<MergeRequestHead>,
}

impl Ctx<'_> {
    /// The head; only commands that need it ask, and then it was fetched.
    fn head(&self) -> Result<&MergeRequestHead, PlanError> {
        self.head.as_ref().ok_or_else(|| {
            PlanError::Forge(ForgeError::Unavailable {
                message: "the merge request's head is not known".to_owned(),
                retry_after: None,
            })
        })
    }

    /// The dedup scope of the runs command number `index` creates.
    fn scope(&self, index: usize) -> String {
        format!("comment:{}:{index}", self.key)
    }

    fn short_head(&self) -> String {
        self.head
            .as_ref()
            .map(|h| h.sha.get(..8).unwrap_or(&h.sha).to_owned())
            .unwrap_or_default()
    }
}

/// The key a comment is answered under: `<mr>:<comment id>` (the stored event's id when the
/// payload has no comment id).
fn comment_key(comment: &CommentEvent, event: EventId) -> String {
    match comment.comment_id {
        Some(id) => format!("{}:{id}", comment.number),
        None => format!("{}:event-{}", comment.number, event.0),
    }
}

impl Planner {
    /// Acts on the commands of a comment and stores its answer (see the module doc).
    pub(super) async fn plan_comment(
        &self,
        project: &ProjectConfig,
        event: &StoredEvent,
        comment: &CommentEvent,
    ) -> Result<(), PlanError> {
        let lines = parse(&comment.body);
        let Ok(mr) = i64::try_from(comment.number) else {
            return Ok(());
        };
        if lines.is_empty() {
            return Ok(());
        }
        let key = comment_key(comment, event.id);
        if self.store.comment_answered(&project.name, &key).await? {
            tracing::info!(project = %project.name, mr, comment = %key,
                "comment already answered; not acted on again");
            return Ok(());
        }
        let Some((forge, access)) = self.commenter(project, comment).await? else {
            return Ok(());
        };
        let mut ctx = Ctx {
            project,
            event,
            comment,
            mr,
            key,
            head: None,
        };
        let said = if access.may_command() {
            ctx.head = head_if_needed(forge.as_ref(), comment, &lines).await?;
            self.act(&ctx, &lines).await?
        } else {
            tracing::info!(project = %project.name, mr, author = %comment.author.login,
                access = ?access, "comment commands refused: no write access");
            Vec::new()
        };
        self.store.insert_answer(&compose(&ctx, &said)).await?;
        Ok(())
    }

    /// The project's forge client and what the commenter may do; `None` when there is no working
    /// client (the comment is ignored: nobody can be checked, nothing can be answered).
    async fn commenter(
        &self,
        project: &ProjectConfig,
        comment: &CommentEvent,
    ) -> Result<Option<(Arc<dyn Forge>, Access)>, PlanError> {
        let forge = match self.forge(project).await {
            Ok(Some(forge)) => forge,
            Err(e @ ForgeError::Unavailable { .. }) => return Err(e.into()),
            Ok(None) | Err(ForgeError::Rejected { .. } | ForgeError::Setup(_)) => {
                tracing::warn!(project = %project.name, mr = comment.number,
                    "comment commands need a working forge client (forge_url, credentials); \
                     comment ignored");
                return Ok(None);
            }
        };
        let access = match forge.access(&comment.author).await {
            Ok(access) => access,
            Err(e @ ForgeError::Unavailable { .. }) => return Err(e.into()),
            Err(e @ (ForgeError::Rejected { .. } | ForgeError::Setup(_))) => {
                tracing::warn!(project = %project.name, mr = comment.number,
                    author = %comment.author.login, error = %e,
                    "cannot check the commenter's access; refused");
                Access::None
            }
        };
        Ok(Some((forge, access)))
    }

    /// Runs each command in order; what came of each, with its line.
    async fn act(
        &self,
        ctx: &Ctx<'_>,
        lines: &[CommandLine],
    ) -> Result<Vec<(String, Said)>, PlanError> {
        let mut said = Vec::with_capacity(lines.len());
        for (index, line) in lines.iter().enumerate() {
            tracing::info!(project = %ctx.project.name, mr = ctx.mr,
                author = %ctx.comment.author.login, command = %line.text, "comment command");
            let outcome = self.execute(ctx, index, &line.command).await?;
            said.push((line.text.clone(), outcome));
        }
        self.wake_dispatcher();
        Ok(said)
    }

    async fn execute(
        &self,
        ctx: &Ctx<'_>,
        index: usize,
        command: &Command,
    ) -> Result<Said, PlanError> {
        match command {
            Command::Run { pipeline, params } => {
                self.run_command(ctx, index, pipeline.as_deref(), params)
                    .await
            }
            Command::Rerun { pipeline, all } => {
                self.rerun_command(ctx, index, pipeline.as_deref(), *all)
                    .await
            }
            Command::Cancel { pipeline } => self.cancel_command(ctx, pipeline.as_deref()).await,
            Command::OkToTest => self.ok_to_test(ctx).await,
            Command::Help => Ok(Said::Told(help())),
            Command::Unknown { verb } => Ok(Said::Told(format!(
                "ferry has no command {}.\n\n{}",
                text::code_span(&format!("/ferry {verb}")),
                help()
            ))),
            Command::Invalid { usage, message } => {
                Ok(Said::Told(format!("{message}. Usage: `{usage}`")))
            }
        }
    }
}

/// The merge request's head, when a command needs it: from the comment (GitLab's payload has
/// it), else from the forge.
async fn head_if_needed(
    forge: &dyn Forge,
    comment: &CommentEvent,
    lines: &[CommandLine],
) -> Result<Option<MergeRequestHead>, ForgeError> {
    let needed = lines.iter().any(|l| match l.command {
        Command::Run { .. } | Command::Rerun { .. } | Command::OkToTest => true,
        Command::Cancel { .. }
        | Command::Help
        | Command::Unknown { .. }
        | Command::Invalid { .. } => false,
    });
    if !needed {
        return Ok(None);
    }
    if let Some(sha) = &comment.head_sha {
        return Ok(Some(MergeRequestHead {
            sha: sha.clone(),
            source_branch: comment.source_branch.clone().unwrap_or_default(),
            target_branch: comment.target_branch.clone().unwrap_or_default(),
        }));
    }
    forge.merge_request_head(comment.number).await.map(Some)
}

/// The one answer of a comment: 👍 when every command was done, else a reply (with no commands
/// acted on, the refusal).
fn compose(ctx: &Ctx<'_>, said: &[(String, Said)]) -> NewAnswer {
    let all_done = !said.is_empty() && said.iter().all(|(_, s)| matches!(s, Said::Done(_)));
    let (kind, body) = match (all_done, ctx.comment.comment_id) {
        (true, Some(_)) => (
            AnswerKind::Reaction,
            Reaction::ThumbsUp.github_content().to_owned(),
        ),
        (true, None) | (false, _) => {
            let body = if said.is_empty() {
                text::refusal()
            } else {
                let list: Vec<(String, String)> = said
                    .iter()
                    .map(|(line, s)| {
                        let text = match s {
                            Said::Done(t) | Said::Told(t) => t.clone(),
                        };
                        (line.clone(), text)
                    })
                    .collect();
                text::outcomes(&list)
            };
            let login = &ctx.comment.author.login;
            (AnswerKind::Reply, text::reply(&ctx.key, login, &body))
        }
    };
    NewAnswer {
        project: ctx.project.name.clone(),
        comment_key: ctx.key.clone(),
        mr: ctx.comment.number,
        comment_id: ctx.comment.comment_id,
        kind,
        body,
    }
}
