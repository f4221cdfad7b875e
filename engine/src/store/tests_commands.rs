//! Comment commands on both backends: runs waiting for an approval and approving them, cancel
//! requests, and answers stored once per comment and sent once.

use super::tests::{backends, new_run};
use super::*;

fn mr_run(sha: &str, scope: &str) -> NewRun {
    let mut run = new_run("resnet", "train", sha, Some(scope));
    run.mr = Some(7);
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_runs_are_released_only_by_an_approval() {
    for db in backends("approvals").await {
        let s = &db.store;
        let (a, new) = s
            .create_waiting_run(
                &mr_run(&"a".repeat(40), "mr:7"),
                WaitReason::Approval,
                "why",
            )
            .await
            .expect("create");
        assert!(new);
        // The same event planned again creates nothing new.
        let (again, new) = s
            .create_waiting_run(
                &mr_run(&"a".repeat(40), "mr:7"),
                WaitReason::Approval,
                "why",
            )
            .await
            .expect("create again");
        assert_eq!((again, new), (a, false));
        let run = s.get_run(a).await.expect("get").expect("run");
        assert_eq!(run.state, RunState::Waiting);
        assert_eq!(run.message.as_deref(), Some("why"));
        let outbox = s.outbox_for_run(a).await.expect("outbox");
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox[0].payload["state"], "waiting");
        // Only `queued` runs may be created waiting.
        let mut failed = mr_run(&"b".repeat(40), "mr:7");
        failed.initial = RunState::Failed;
        assert!(matches!(
            s.create_waiting_run(&failed, WaitReason::Approval, "x")
                .await,
            Err(StoreError::InvalidInitialState(RunState::Failed))
        ));
        // Queued runs are never taken for approval.
        let (queued, _) = s
            .create_run(&mr_run(&"c".repeat(40), "mr:7"))
            .await
            .expect("queued");
        let waiting = s.runs_awaiting_approval("resnet", 7).await.expect("list");
        assert_eq!(waiting.iter().map(|r| r.id).collect::<Vec<_>>(), [a]);
        assert!(
            s.runs_awaiting_approval("resnet", 8)
                .await
                .expect("list")
                .is_empty()
        );
        assert!(!s.approve_run(queued).await.expect("not waiting"));

        assert!(s.approve_run(a).await.expect("approve"));
        assert!(!s.approve_run(a).await.expect("twice"), "approved once");
        let run = s.get_run(a).await.expect("get").expect("run");
        assert_eq!(run.state, RunState::Queued);
        assert_eq!(run.message, None, "the waiting message is gone");
        let states: Vec<_> = s
            .outbox_for_run(a)
            .await
            .expect("outbox")
            .iter()
            .map(|o| o.payload["state"].clone())
            .collect();
        assert_eq!(states, ["waiting", "queued"]);
        assert!(
            s.runs_awaiting_approval("resnet", 7)
                .await
                .expect("list")
                .is_empty()
        );
        db.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_are_immediate_before_the_executor_and_requested_after() {
    for db in backends("cancel_requests").await {
        let s = &db.store;
        let (queued, _) = s
            .create_run(&mr_run(&"a".repeat(40), "q"))
            .await
            .expect("queued");
        let (waiting, _) = s
            .create_waiting_run(&mr_run(&"b".repeat(40), "w"), WaitReason::Approval, "x")
            .await
            .expect("waiting");
        let (running, _) = s
            .create_run(&mr_run(&"c".repeat(40), "r"))
            .await
            .expect("running");
        s.transition_run(running, RunState::Queued, RunState::Submitted)
            .await
            .expect("submitted");
        s.transition_run(running, RunState::Submitted, RunState::Running)
            .await
            .expect("running");
        assert!(s.cancel_requested_runs().await.expect("none").is_empty());

        for id in [queued, waiting] {
            let outcome = s.request_cancel(id, "by @dev").await.expect("cancel");
            assert_eq!(outcome, CancelOutcome::Cancelled);
            let run = s.get_run(id).await.expect("get").expect("run");
            assert_eq!(run.state, RunState::Cancelled);
            assert_eq!(run.message.as_deref(), Some("by @dev"));
            assert!(run.finished_at.is_some());
            let steps = s.steps(id).await.expect("steps");
            assert!(
                steps.iter().all(|st| st.state == StepState::Cancelled),
                "{steps:?}"
            );
            let last = s.outbox_for_run(id).await.expect("outbox");
            assert_eq!(last.last().expect("row").payload["state"], "cancelled");
        }
        assert!(!s.approve_run(waiting).await.expect("cancelled"));

        let outcome = s.request_cancel(running, "by @dev").await.expect("request");
        assert_eq!(outcome, CancelOutcome::Requested);
        assert_eq!(
            s.get_run(running).await.expect("get").expect("run").state,
            RunState::Running,
            "the executor's observation finishes it"
        );
        let asked: Vec<RunId> = s
            .cancel_requested_runs()
            .await
            .expect("requested")
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(asked, [running]);
        s.transition_run(running, RunState::Running, RunState::Cancelled)
            .await
            .expect("cancelled");
        assert!(s.cancel_requested_runs().await.expect("done").is_empty());
        assert_eq!(
            s.request_cancel(running, "again").await.expect("finished"),
            CancelOutcome::Finished(RunState::Cancelled)
        );
        let missing = RunId::new(999).expect("id");
        assert!(matches!(
            s.request_cancel(missing, "x").await,
            Err(StoreError::NotFound { .. })
        ));
        db.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comment_is_answered_once_and_sent_once() {
    for db in backends("answers").await {
        let s = &db.store;
        let answer = NewAnswer {
            project: "resnet".into(),
            comment_key: "7:41".into(),
            mr: 7,
            comment_id: Some(41),
            kind: AnswerKind::Reply,
            body: "hello".into(),
        };
        assert!(!s.comment_answered("resnet", "7:41").await.expect("read"));
        let notified = s.outbox_notify();
        assert!(s.insert_answer(&answer).await.expect("insert"));
        tokio::time::timeout(std::time::Duration::from_secs(5), notified.notified())
            .await
            .expect("the reporter is woken");
        assert!(s.comment_answered("resnet", "7:41").await.expect("read"));
        assert!(
            !s.comment_answered("other", "7:41")
                .await
                .expect("other project")
        );
        let second = NewAnswer {
            body: "again".into(),
            ..answer.clone()
        };
        assert!(
            !s.insert_answer(&second).await.expect("twice"),
            "one answer per comment"
        );
        // The same comment key in another project is another comment.
        let other = NewAnswer {
            project: "other".into(),
            ..answer.clone()
        };
        assert!(s.insert_answer(&other).await.expect("other project"));

        let due = s.pending_answers(10).await.expect("pending");
        assert_eq!(due.len(), 2);
        assert_eq!(due[0].answer, answer);
        assert!(!due[0].tried);
        assert!(s.first_answer_due_at().await.expect("due").is_some());
        let id = due[0].id;
        assert!(!s.begin_answer(id).await.expect("first try"));
        assert!(s.begin_answer(id).await.expect("second try: search first"));
        s.mark_answer_failed_attempt(id, "503", now_millis() + 60_000)
            .await
            .expect("failed");
        let due = s.pending_answers(10).await.expect("pending");
        assert_eq!(due.len(), 1, "the failed one waits");
        let stored = s
            .answer_for("resnet", "7:41")
            .await
            .expect("read")
            .expect("answer");
        assert_eq!((stored.attempts, stored.tried), (1, true));
        assert_eq!(stored.last_error.as_deref(), Some("503"));
        s.mark_answer_sent(id).await.expect("sent");
        s.mark_answer_sent(due[0].id).await.expect("sent");
        assert!(s.pending_answers(10).await.expect("none").is_empty());
        assert_eq!(s.first_answer_due_at().await.expect("due"), None);
        let sent = s
            .answer_for("resnet", "7:41")
            .await
            .expect("read")
            .expect("answer");
        assert!(sent.sent_at.is_some());
        db.finish().await;
    }
}
