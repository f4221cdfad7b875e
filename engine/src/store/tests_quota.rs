//! Quota waits on both backends: parking a queued run for capacity, releasing it, and keeping
//! quota and approval waits apart.

use super::tests::{backends, new_run};
use super::*;

fn ids(runs: &[Run]) -> Vec<RunId> {
    runs.iter().map(|r| r.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_waits_park_release_and_never_mix_with_approvals() {
    for db in backends("quota_waits").await {
        let s = &db.store;
        let (a, _) = s
            .create_run(&new_run("resnet", "train", &"a".repeat(40), None))
            .await
            .expect("a");
        let (b, _) = s
            .create_run(&new_run("resnet", "train", &"b".repeat(40), None))
            .await
            .expect("b");
        let (approval, _) = s
            .create_waiting_run(
                &new_run("resnet", "train", &"c".repeat(40), None),
                WaitReason::Approval,
                "needs ok-to-test",
            )
            .await
            .expect("approval");
        let (other, _) = s
            .create_run(&new_run("other", "train", &"d".repeat(40), None))
            .await
            .expect("other");
        s.transition_run(a, RunState::Queued, RunState::Submitted)
            .await
            .expect("submit a");

        assert!(
            s.park_run(b, "quota, 1 of 1 concurrent runs in use")
                .await
                .expect("park")
        );
        let parked = s.get_run(b).await.expect("get").expect("b");
        assert_eq!(parked.state, RunState::Waiting);
        assert_eq!(
            parked.message.as_deref(),
            Some("quota, 1 of 1 concurrent runs in use")
        );
        let outbox = s.outbox_for_run(b).await.expect("outbox");
        assert_eq!(outbox.last().expect("row").payload["state"], "waiting");
        // Parking is a compare-and-set on `queued`.
        assert!(!s.park_run(b, "again").await.expect("park again"));
        assert!(!s.park_run(a, "submitted").await.expect("park submitted"));

        // The line holds the project's submitted and quota-waiting runs, not approvals, not
        // other projects.
        assert_eq!(ids(&s.quota_runs("resnet").await.expect("line")), [a, b]);
        assert_eq!(ids(&s.quota_runs("other").await.expect("line")), [other]);

        // Approvals never release quota waits, quota releases never release approvals.
        assert!(!s.approve_run(b).await.expect("approve quota wait"));
        assert!(
            !s.release_run(approval, WaitReason::Quota)
                .await
                .expect("release approval wait")
        );
        assert_eq!(
            s.get_run(approval).await.expect("get").expect("run").state,
            RunState::Waiting
        );
        assert!(s.release_run(b, WaitReason::Quota).await.expect("release"));
        let released = s.get_run(b).await.expect("get").expect("b");
        assert_eq!(released.state, RunState::Queued);
        assert_eq!(released.message, None);
        assert!(!s.release_run(b, WaitReason::Quota).await.expect("twice"));
        assert!(s.approve_run(approval).await.expect("approve"));

        // A run parked for capacity can be cancelled at once.
        assert!(s.park_run(b, "quota").await.expect("park"));
        assert_eq!(
            s.request_cancel(b, "superseded by run 9 (abcdef1)")
                .await
                .expect("cancel"),
            CancelOutcome::Cancelled
        );
        let cancelled = s.get_run(b).await.expect("get").expect("b");
        assert_eq!(cancelled.state, RunState::Cancelled);
        assert_eq!(
            cancelled.message.as_deref(),
            Some("superseded by run 9 (abcdef1)")
        );
        assert_eq!(
            ids(&s.quota_runs("resnet").await.expect("line")),
            [a, approval]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_cancel_keeps_its_message_when_the_executor_confirms() {
    for db in backends("cancel_message").await {
        let s = &db.store;
        let mut ids = Vec::new();
        for sha in ["a", "b"] {
            let (id, _) = s
                .create_run(&new_run("resnet", "train", &sha.repeat(40), None))
                .await
                .expect("run");
            s.transition_run(id, RunState::Queued, RunState::Submitted)
                .await
                .expect("submit");
            ids.push(id);
        }
        let (asked, other) = (ids[0], ids[1]);
        assert_eq!(
            s.request_cancel(asked, "superseded by run 2 (bbbbbbb)")
                .await
                .expect("cancel"),
            CancelOutcome::Requested
        );
        for id in [asked, other] {
            s.transition_run_with(
                id,
                RunState::Submitted,
                RunState::Cancelled,
                Some("cancelled"),
            )
            .await
            .expect("cancelled");
        }
        let message = |id| async move { s.get_run(id).await.expect("get").expect("run").message };
        assert_eq!(
            message(asked).await.as_deref(),
            Some("superseded by run 2 (bbbbbbb)")
        );
        // Stopped from outside (nobody asked ferry): the executor's word.
        assert_eq!(message(other).await.as_deref(), Some("cancelled"));
    }
}
