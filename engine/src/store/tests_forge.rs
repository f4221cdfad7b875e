//! The reporter's memory of the forge on both backends: a note's intent, id and body hash; the
//! last status state per run and context; notifications of new outbox rows; the baseline query.

use super::tests::{backends, new_run};
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_are_claimed_once_and_statuses_remembered_per_run() {
    for db in backends("forge_state").await {
        let s = &db.store;
        let (run, _) = s
            .create_run(&new_run("resnet", "train", &"a".repeat(40), None))
            .await
            .expect("create");
        assert_eq!(
            s.forge_comment(run, CommentKind::Note).await.expect("read"),
            None
        );
        assert!(
            s.begin_forge_comment(run, CommentKind::Note)
                .await
                .expect("begin")
        );
        assert!(
            !s.begin_forge_comment(run, CommentKind::Note)
                .await
                .expect("again"),
            "a second create must search first"
        );
        let intent = ForgeComment {
            forge_id: None,
            body_hash: None,
        };
        assert_eq!(
            s.forge_comment(run, CommentKind::Note).await.expect("read"),
            Some(intent)
        );
        s.clear_forge_comment_intent(run, CommentKind::Note)
            .await
            .expect("clear");
        assert_eq!(
            s.forge_comment(run, CommentKind::Note).await.expect("read"),
            None
        );
        s.set_forge_comment(run, CommentKind::Note, 41, "h1")
            .await
            .expect("set");
        s.set_forge_comment(run, CommentKind::Note, 41, "h2")
            .await
            .expect("set again");
        s.clear_forge_comment_intent(run, CommentKind::Note)
            .await
            .expect("an id is kept");
        let stored = s.forge_comment(run, CommentKind::Note).await.expect("read");
        assert_eq!(
            stored,
            Some(ForgeComment {
                forge_id: Some(41),
                body_hash: Some("h2".into())
            })
        );
        assert_eq!(
            s.forge_comment(run, CommentKind::CheckRun)
                .await
                .expect("read"),
            None
        );

        s.record_sent_status(run, "ferry/train", "pending")
            .await
            .expect("record");
        s.record_sent_status(run, "ferry/train", "running")
            .await
            .expect("record");
        s.record_sent_status(run, "ferry/train/fit", "running")
            .await
            .expect("record");
        let sent = s.sent_statuses(run).await.expect("sent");
        assert_eq!(sent.len(), 2);
        assert_eq!(sent["ferry/train"], "running");
        db.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_outbox_rows_wake_the_reporter_and_baselines_are_succeeded_branch_runs() {
    for db in backends("forge_baseline").await {
        let s = &db.store;
        let wake = s.outbox_notify();
        let sha = "b".repeat(40);
        let (old, _) = s
            .create_run(&new_run("resnet", "train", &sha, Some("main")))
            .await
            .expect("create");
        tokio::time::timeout(std::time::Duration::from_secs(5), wake.notified())
            .await
            .expect("a new run wakes the reporter");
        assert!(s.first_outbox_due_at().await.expect("due").is_some());
        for (from, to) in [
            (RunState::Queued, RunState::Submitted),
            (RunState::Submitted, RunState::Succeeded),
        ] {
            s.transition_run(old, from, to).await.expect("transition");
        }
        let mut mr_run = new_run("resnet", "train", &sha, Some("mr"));
        mr_run.mr = Some(3);
        let (mr, _) = s.create_run(&mr_run).await.expect("create");
        s.transition_run(mr, RunState::Queued, RunState::Failed)
            .await
            .expect("fail");
        let (later, _) = s
            .create_run(&new_run("resnet", "train", &"c".repeat(40), Some("x")))
            .await
            .expect("create");
        let base = s
            .baseline_run("resnet", "train", "main", later)
            .await
            .expect("baseline");
        assert_eq!(base.map(|r| r.id), Some(old));
        assert_eq!(
            s.baseline_run("resnet", "train", "main", old)
                .await
                .expect("none before"),
            None
        );
        assert_eq!(
            s.baseline_run("resnet", "eval", "main", later)
                .await
                .expect("other pipeline"),
            None
        );
        db.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postponed_rows_wait_and_superseded_run_rows_settle_in_one_go() {
    for db in backends("outbox_settle").await {
        let s = &db.store;
        let (run, _) = s
            .create_run(&new_run("resnet", "train", &"c".repeat(40), None))
            .await
            .expect("create");
        let (other, _) = s
            .create_run(&new_run("resnet", "eval", &"c".repeat(40), None))
            .await
            .expect("create another");
        let rows = s.outbox_for_run(run).await.expect("outbox");
        let queued = rows[0].id;
        // Postponed: not due until then, and not counted as a failed attempt.
        let later = now_millis() + 3_600_000;
        s.postpone_outbox(queued, later).await.expect("postpone");
        let due = s.pending_outbox(100).await.expect("pending");
        assert!(due.iter().all(|o| o.id != queued), "{due:?}");
        let row = &s.outbox_for_run(run).await.expect("outbox")[0];
        assert_eq!((row.next_attempt_at, row.attempts), (later, 0));

        s.transition_run(run, RunState::Queued, RunState::Submitted)
            .await
            .expect("submit");
        s.transition_run(run, RunState::Submitted, RunState::Running)
            .await
            .expect("running");
        // The queued and submitted rows are about earlier states: settled without a call. The
        // running row, and the other run's rows, stay to be sent.
        let settled = s
            .settle_superseded_run_rows(run, "running")
            .await
            .expect("settle");
        assert_eq!(settled, 2);
        let rows = s.outbox_for_run(run).await.expect("outbox");
        let sent: Vec<(String, bool)> = rows
            .iter()
            .map(|o| {
                (
                    o.payload["state"].as_str().unwrap_or_default().to_owned(),
                    o.sent_at.is_some(),
                )
            })
            .collect();
        assert_eq!(
            sent,
            [
                ("queued".to_owned(), true),
                ("submitted".to_owned(), true),
                ("running".to_owned(), false)
            ]
        );
        assert!(
            s.outbox_for_run(other)
                .await
                .expect("outbox")
                .iter()
                .all(|o| o.sent_at.is_none())
        );
        assert_eq!(
            s.settle_superseded_run_rows(run, "running")
                .await
                .expect("again"),
            0,
            "nothing left to settle"
        );
        db.finish().await;
    }
}
