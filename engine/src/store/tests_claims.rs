//! Claims between replicas (`store::claims`): exclusive while the lease runs, free once it ran
//! out, fenced on renewal, disjoint batches of queued runs. On SQLite every claim is its own.

use std::time::Duration;

use super::tests::{backends, new_run};
use super::*;

#[tokio::test]
async fn a_claim_is_exclusive_until_its_lease_runs_out() {
    for db in backends("claims_exclusive").await {
        let s = &db.store;
        let a = Replica::new("a", Duration::from_secs(60));
        let b = Replica::new("b", Duration::from_secs(60));
        assert!(s.claim(&a, ClaimKind::Plan, "resnet").await.expect("a"));
        assert!(
            s.claim(&a, ClaimKind::Plan, "resnet")
                .await
                .expect("a again")
        );
        assert!(
            s.renew_claim(&a, ClaimKind::Plan, "resnet")
                .await
                .expect("renew")
        );
        match db.backend {
            Backend::Sqlite => {
                // One process: every claim is its own.
                assert!(s.claim(&b, ClaimKind::Plan, "resnet").await.expect("b"));
                assert_eq!(
                    s.claim_holder(ClaimKind::Plan, "resnet")
                        .await
                        .expect("holder"),
                    None
                );
            }
            Backend::Postgres => {
                assert!(!s.claim(&b, ClaimKind::Plan, "resnet").await.expect("b"));
                assert!(
                    s.claim(&b, ClaimKind::Plan, "bert")
                        .await
                        .expect("other item")
                );
                assert!(
                    s.claim(&b, ClaimKind::Submit, "resnet")
                        .await
                        .expect("other kind")
                );
                let holder = s
                    .claim_holder(ClaimKind::Plan, "resnet")
                    .await
                    .expect("holder");
                assert_eq!(holder.map(|(by, _)| by).as_deref(), Some("a"));

                // A replica whose lease ran out (lease 0: at once) loses the claim to another,
                // and its renewal then fails: whatever it was doing must stop.
                let dead = Replica::new("dead", Duration::ZERO);
                assert!(s.claim(&dead, ClaimKind::Report, "7").await.expect("dead"));
                assert!(
                    s.claim(&b, ClaimKind::Report, "7")
                        .await
                        .expect("taken over")
                );
                assert!(
                    !s.renew_claim(&dead, ClaimKind::Report, "7")
                        .await
                        .expect("fenced")
                );

                // Claims left by dead replicas are cleaned up a lease after they lapsed; live
                // ones stay.
                assert!(
                    s.claim(&dead, ClaimKind::Submit, "9")
                        .await
                        .expect("left behind")
                );
                assert_eq!(s.drop_lapsed_claims(&dead).await.expect("drop"), 1);
                assert_eq!(
                    s.claim_holder(ClaimKind::Submit, "9").await.expect("gone"),
                    None
                );
                assert!(
                    s.claim_holder(ClaimKind::Report, "7")
                        .await
                        .expect("kept")
                        .is_some()
                );

                // Released: free for anyone at once.
                s.release_claim(&a, ClaimKind::Plan, "resnet")
                    .await
                    .expect("release");
                assert!(
                    !s.renew_claim(&a, ClaimKind::Plan, "resnet")
                        .await
                        .expect("gone")
                );
                assert!(s.claim(&b, ClaimKind::Plan, "resnet").await.expect("b now"));
                // Releasing what another holds does nothing.
                s.release_claim(&a, ClaimKind::Plan, "resnet")
                    .await
                    .expect("noop");
                assert!(
                    !s.claim(&a, ClaimKind::Plan, "resnet")
                        .await
                        .expect("still b's")
                );
            }
        }
        db.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_claim_disjoint_batches_of_queued_runs() {
    for db in backends("claims_queued").await {
        let s = &db.store;
        let mut ids = Vec::new();
        for i in 0..40 {
            let run = new_run("resnet", "train", &format!("sha{i}"), None);
            ids.push(s.create_run(&run).await.expect("run").0);
        }
        let a = Replica::new("a", Duration::from_secs(60));
        let b = Replica::new("b", Duration::from_secs(60));
        let (got_a, got_b) = tokio::join!(s.claim_queued_runs(&a, 30), s.claim_queued_runs(&b, 30));
        let mut got: Vec<RunId> = got_a
            .expect("a")
            .iter()
            .chain(got_b.as_ref().expect("b"))
            .map(|r| r.id)
            .collect();
        match db.backend {
            Backend::Sqlite => assert_eq!(got.len(), 60, "both see the oldest 30"),
            Backend::Postgres => {
                got.sort();
                let before = got.len();
                got.dedup();
                assert_eq!(got.len(), before, "no run claimed twice");
                // Whatever is left is for whoever asks next; nothing is held by both.
                let c = Replica::new("c", Duration::from_secs(60));
                let rest = s.claim_queued_runs(&c, 100).await.expect("rest");
                let mut all: Vec<RunId> = got
                    .iter()
                    .copied()
                    .chain(rest.iter().map(|r| r.id))
                    .collect();
                all.sort();
                let mut again = all.clone();
                again.dedup();
                assert_eq!(all.len(), again.len(), "{all:?}");
                assert_eq!(
                    all, ids,
                    "every queued run is claimed by exactly one replica"
                );
            }
        }
        db.finish().await;
    }
}
