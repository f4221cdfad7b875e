//! The run, step and outbox half of the store's suite (see `tests.rs` for how the backends are
//! chosen): creation and its idempotency, compare-and-set transitions, the state machines as the
//! database enforces them, the outbox written atomically with each change, listing and paging.

use super::tests::{backends, count, new_run, push_event};
use super::*;
use crate::event::ForgeKind;
use crate::pipeline::EventKind as Trigger;
use crate::problem::Problem;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_run_is_idempotent_on_its_dedup_key() {
    for db in backends("create_run_idempotent").await {
        let s = &db.store;
        let event = s
            .insert_event(
                "resnet",
                ForgeKind::Gitlab,
                "k",
                &push_event(&"e".repeat(40)),
            )
            .await
            .expect("insert")
            .id();
        let mut run = new_run("resnet", "train", &"e".repeat(40), Some("main"));
        run.event_id = Some(event);
        let (id, created) = s.create_run(&run).await.expect("create");
        assert!(created && id.get() > 0);
        assert_eq!(s.create_run(&run).await.expect("again"), (id, false));
        // Concurrent planners of the same event agree on one run.
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (store, run) = (s.clone(), run.clone());
            tasks.push(tokio::spawn(async move { store.create_run(&run).await }));
        }
        for task in tasks {
            assert_eq!(task.await.expect("task").expect("create"), (id, false));
        }
        assert_eq!(count(s, "SELECT COUNT(*) FROM runs").await, 1);
        assert_eq!(count(s, "SELECT COUNT(*) FROM steps").await, 2);
        assert_eq!(
            count(s, "SELECT COUNT(*) FROM outbox").await,
            1,
            "one outbox row for the creation"
        );

        let stored = s.get_run(id).await.expect("get").expect("stored");
        assert_eq!(
            (stored.state, stored.event_id, stored.trigger),
            (RunState::Queued, Some(event), Trigger::Push)
        );
        assert_eq!(
            stored.dedup_key.as_deref(),
            Some(format!("resnet|train|{}|push|main", "e".repeat(40)).as_str())
        );
        assert_eq!(stored.params, run.params);
        assert_eq!(
            (stored.pipeline_path.as_str(), stored.pipeline_yaml.as_str()),
            (".ferry/train.yaml", "name: train\n")
        );

        // Another scope (another branch) is another run; manual runs are never deduplicated.
        let other = new_run("resnet", "train", &"e".repeat(40), Some("dev"));
        assert!(s.create_run(&other).await.expect("create").1);
        let mut manual = new_run("resnet", "train", &"e".repeat(40), None);
        manual.trigger = Trigger::Manual;
        let (m1, c1) = s.create_run(&manual).await.expect("manual");
        let (m2, c2) = s.create_run(&manual).await.expect("manual");
        assert!(c1 && c2 && m1 != m2);
        db.finish().await;
    }
}

#[tokio::test]
async fn invalid_pipelines_start_failed_and_other_initial_states_are_refused() {
    for db in backends("initial_states").await {
        let s = &db.store;
        let mut run = new_run("resnet", "broken", &"f".repeat(40), Some("main"));
        run.initial = RunState::Failed;
        run.steps.clear();
        run.problems = vec![Problem {
            file: ".ferry/broken.yaml".into(),
            line: 3,
            column: 5,
            path: "steps[0].kind".into(),
            message: "unknown step kind `trian`".into(),
        }];
        let (id, _) = s.create_run(&run).await.expect("create");
        let stored = s.get_run(id).await.expect("get").expect("stored");
        assert_eq!(stored.state, RunState::Failed);
        assert_eq!(stored.problems, run.problems);
        assert!(stored.finished_at.is_some());
        let outbox = s.outbox_for_run(id).await.expect("outbox");
        assert_eq!(
            outbox[0].payload,
            serde_json::json!({"run": id.get(), "state": "failed"})
        );
        for initial in [
            RunState::Waiting,
            RunState::Submitted,
            RunState::Running,
            RunState::Succeeded,
            RunState::Cancelled,
        ] {
            run.initial = initial;
            run.dedup_scope = None;
            assert!(
                matches!(s.create_run(&run).await, Err(StoreError::InvalidInitialState(st)) if st == initial)
            );
        }
        assert_eq!(count(s, "SELECT COUNT(*) FROM runs").await, 1);
        db.finish().await;
    }
}

#[tokio::test]
async fn transitions_are_compare_and_set_with_an_outbox_row_each() {
    for db in backends("transitions").await {
        let s = &db.store;
        let (id, _) = s
            .create_run(&new_run("resnet", "train", &"1".repeat(40), None))
            .await
            .expect("create");
        s.transition_run(id, RunState::Queued, RunState::Submitted)
            .await
            .expect("submit");
        // A second writer that still believes the run is queued loses, and writes nothing.
        let err = s
            .transition_run(id, RunState::Queued, RunState::Submitted)
            .await
            .expect_err("conflict");
        assert!(
            matches!(&err, StoreError::Conflict { actual, expected, .. } if actual == "submitted" && expected == "queued"),
            "{err}"
        );
        let err = s
            .transition_run(id, RunState::Queued, RunState::Cancelled)
            .await
            .expect_err("conflict");
        assert!(matches!(err, StoreError::Conflict { .. }));
        s.transition_run(id, RunState::Submitted, RunState::Running)
            .await
            .expect("running");
        s.transition_run(id, RunState::Running, RunState::Succeeded)
            .await
            .expect("succeeded");
        let run = s.get_run(id).await.expect("get").expect("stored");
        assert_eq!(run.state, RunState::Succeeded);
        assert!(
            run.started_at.is_some()
                && run.finished_at.is_some()
                && run.updated_at >= run.created_at
        );

        let states: Vec<_> = s
            .outbox_for_run(id)
            .await
            .expect("outbox")
            .iter()
            .map(|o| o.payload.clone())
            .collect();
        let expected: Vec<_> = ["queued", "submitted", "running", "succeeded"]
            .iter()
            .map(|st| serde_json::json!({"run": id.get(), "state": st}))
            .collect();
        assert_eq!(
            states, expected,
            "exactly one outbox row per change, in order"
        );

        let pending = s.pending_outbox(100).await.expect("pending");
        assert_eq!(pending.len(), 4);
        assert!(
            pending
                .iter()
                .all(|o| o.kind == OUTBOX_RUN && o.run_id == id && o.sent_at.is_none())
        );
        s.mark_outbox_sent(pending[0].id).await.expect("sent");
        s.mark_outbox_sent(pending[0].id)
            .await
            .expect("sent twice is harmless");
        s.mark_outbox_failed_attempt(pending[1].id, "429", now_millis() + 60_000)
            .await
            .expect("failed attempt");
        let left: Vec<_> = s
            .pending_outbox(100)
            .await
            .expect("pending")
            .iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(left, vec![pending[2].id, pending[3].id]);
        assert!(matches!(
            s.mark_outbox_sent(OutboxId(999_999)).await,
            Err(StoreError::NotFound { .. })
        ));
        let missing = RunId::new(999_999).expect("positive");
        assert!(matches!(
            s.transition_run(missing, RunState::Queued, RunState::Submitted)
                .await,
            Err(StoreError::NotFound { .. })
        ));
        db.finish().await;
    }
}

#[tokio::test]
async fn illegal_transitions_write_nothing() {
    for db in backends("illegal_transitions").await {
        let s = &db.store;
        let (id, _) = s
            .create_run(&new_run("resnet", "train", &"2".repeat(40), None))
            .await
            .expect("create");
        let before = s.get_run(id).await.expect("get").expect("stored");
        let outbox = count(s, "SELECT COUNT(*) FROM outbox").await;
        for (from, to) in [
            (RunState::Queued, RunState::Running),
            (RunState::Queued, RunState::Succeeded),
            (RunState::Queued, RunState::Queued),
            (RunState::Succeeded, RunState::Running),
            (RunState::Running, RunState::Queued),
        ] {
            let err = s.transition_run(id, from, to).await.expect_err("illegal");
            assert!(
                matches!(err, StoreError::IllegalTransition { from: f, to: t } if f == from && t == to),
                "{err}"
            );
        }
        assert_eq!(s.get_run(id).await.expect("get").expect("stored"), before);
        assert_eq!(count(s, "SELECT COUNT(*) FROM outbox").await, outbox);
        db.finish().await;
    }
}

#[tokio::test]
async fn a_failing_outbox_write_rolls_the_transition_back() {
    for db in backends("outbox_atomic").await {
        let s = &db.store;
        let (id, _) = s
            .create_run(&new_run("resnet", "train", &"3".repeat(40), None))
            .await
            .expect("create");
        // Break the outbox: the state change must not survive without its row.
        with_pool!(s, |pool| sqlx::raw_sql("DROP TABLE outbox")
            .execute(pool)
            .await
            .map(drop)
            .expect("drop outbox"));
        assert!(matches!(
            s.transition_run(id, RunState::Queued, RunState::Submitted)
                .await,
            Err(StoreError::Database(_))
        ));
        assert_eq!(
            s.get_run(id).await.expect("get").expect("stored").state,
            RunState::Queued
        );
        db.finish().await;
    }
}

#[tokio::test]
async fn steps_follow_their_state_machine() {
    for db in backends("steps").await {
        let s = &db.store;
        let (id, _) = s
            .create_run(&new_run("resnet", "train", &"4".repeat(40), None))
            .await
            .expect("create");
        s.insert_steps(id, &["train", "evaluate"])
            .await
            .expect("insert steps");
        let names: Vec<_> = s
            .steps(id)
            .await
            .expect("steps")
            .into_iter()
            .map(|st| (st.name, st.position, st.state))
            .collect();
        assert_eq!(
            names,
            vec![
                ("prepare".to_string(), 0, StepState::Pending),
                ("train".to_string(), 1, StepState::Pending),
                ("evaluate".to_string(), 2, StepState::Pending),
            ]
        );
        let none = StepChange::default();
        s.transition_step(id, "prepare", StepState::Pending, StepState::Skipped, &none)
            .await
            .expect("skip");
        s.transition_step(id, "train", StepState::Pending, StepState::Running, &none)
            .await
            .expect("run");
        s.transition_step(
            id,
            "train",
            StepState::Running,
            StepState::Running,
            &StepChange {
                message: Some("retry 1".into()),
                metrics: None,
            },
        )
        .await
        .expect("retry");
        let metrics = serde_json::json!({"accuracy": 0.93});
        s.transition_step(
            id,
            "train",
            StepState::Running,
            StepState::Succeeded,
            &StepChange {
                message: None,
                metrics: Some(metrics.clone()),
            },
        )
        .await
        .expect("done");
        let train = s
            .steps(id)
            .await
            .expect("steps")
            .into_iter()
            .find(|st| st.name == "train")
            .expect("train");
        assert_eq!(
            (train.attempts, train.message.as_deref(), train.metrics),
            (2, Some("retry 1"), Some(metrics))
        );
        assert!(train.started_at.is_some() && train.finished_at.is_some());

        let outbox_before = count(s, "SELECT COUNT(*) FROM outbox").await;
        let err = s
            .transition_step(id, "train", StepState::Succeeded, StepState::Running, &none)
            .await
            .expect_err("illegal");
        assert!(
            matches!(err, StoreError::IllegalStepTransition { .. }),
            "{err}"
        );
        let err = s
            .transition_step(
                id,
                "evaluate",
                StepState::Running,
                StepState::Succeeded,
                &none,
            )
            .await
            .expect_err("conflict");
        assert!(
            matches!(&err, StoreError::Conflict { actual, .. } if actual == "pending"),
            "{err}"
        );
        let err = s
            .transition_step(id, "nope", StepState::Pending, StepState::Running, &none)
            .await
            .expect_err("missing");
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        assert_eq!(count(s, "SELECT COUNT(*) FROM outbox").await, outbox_before);
        let steps: Vec<_> = s
            .outbox_for_run(id)
            .await
            .expect("outbox")
            .into_iter()
            .filter(|o| o.kind == OUTBOX_STEP)
            .map(|o| o.payload)
            .collect();
        assert_eq!(steps.len(), 4);
        assert_eq!(
            steps[0],
            serde_json::json!({"run": id.get(), "step": "prepare", "state": "skipped"})
        );
        let missing = RunId::new(999_999).expect("positive");
        assert!(matches!(
            s.insert_steps(missing, &["x"]).await,
            Err(StoreError::NotFound { .. })
        ));
        db.finish().await;
    }
}

#[tokio::test]
async fn list_runs_filters_and_pages() {
    for db in backends("list_runs").await {
        let s = &db.store;
        let mut all = Vec::new();
        for i in 0..25_i64 {
            let project = if i % 5 == 0 { "other" } else { "resnet" };
            let pipeline = if i % 2 == 0 { "train" } else { "eval" };
            let mut run = new_run(project, pipeline, &format!("{:040}", i % 3), None);
            if i % 4 == 0 {
                run.trigger = Trigger::MergeRequest;
                run.mr = Some(7);
            }
            let (id, _) = s.create_run(&run).await.expect("create");
            if i % 3 == 0 {
                s.transition_run(id, RunState::Queued, RunState::Cancelled)
                    .await
                    .expect("cancel");
            }
            all.push((id, project, pipeline, i));
        }
        let ids = |runs: &[Run]| runs.iter().map(|r| r.id).collect::<Vec<_>>();
        let expect = |keep: &dyn Fn(&str, &str, i64) -> bool| {
            all.iter()
                .rev()
                .filter(|(_, p, q, i)| keep(p, q, *i))
                .map(|(id, ..)| *id)
                .collect::<Vec<_>>()
        };
        let get =
            |f: RunFilter| async move { s.list_runs(&f, Page::first(100)).await.expect("list") };

        assert_eq!(
            ids(&get(RunFilter::default()).await.runs),
            expect(&|_, _, _| true)
        );
        let f = RunFilter {
            project: Some("resnet".into()),
            ..Default::default()
        };
        assert_eq!(ids(&get(f).await.runs), expect(&|p, _, _| p == "resnet"));
        let f = RunFilter {
            project: Some("resnet".into()),
            pipeline: Some("train".into()),
            ..Default::default()
        };
        assert_eq!(
            ids(&get(f).await.runs),
            expect(&|p, q, _| p == "resnet" && q == "train")
        );
        let f = RunFilter {
            state: Some(RunState::Cancelled),
            ..Default::default()
        };
        assert_eq!(ids(&get(f).await.runs), expect(&|_, _, i| i % 3 == 0));
        let f = RunFilter {
            sha: Some(format!("{:040}", 1)),
            ..Default::default()
        };
        assert_eq!(ids(&get(f).await.runs), expect(&|_, _, i| i % 3 == 1));
        let f = RunFilter {
            mr: Some(7),
            trigger: Some(Trigger::MergeRequest),
            ..Default::default()
        };
        assert_eq!(ids(&get(f).await.runs), expect(&|_, _, i| i % 4 == 0));
        let f = RunFilter {
            branch: Some("nope".into()),
            ..Default::default()
        };
        assert!(get(f).await.runs.is_empty());

        // Pages of 10: 10, 10, 5, newest first, no overlap, then no next page.
        let mut seen = Vec::new();
        let mut page = Page::first(10);
        let mut sizes = Vec::new();
        loop {
            let got = s
                .list_runs(&RunFilter::default(), page)
                .await
                .expect("page");
            sizes.push(got.runs.len());
            seen.extend(ids(&got.runs));
            match got.next {
                Some(next) => {
                    page = Page {
                        before: Some(next),
                        limit: 10,
                    }
                }
                None => break,
            }
        }
        assert_eq!(sizes, vec![10, 10, 5]);
        assert_eq!(seen, expect(&|_, _, _| true));
        let active = s.active_runs(Some("resnet")).await.expect("active");
        assert!(
            active
                .iter()
                .all(|r| r.project == "resnet" && r.state == RunState::Queued)
        );
        assert_eq!(
            active.len(),
            expect(&|p, _, i| p == "resnet" && i % 3 != 0).len()
        );
        db.finish().await;
    }
}

#[tokio::test]
async fn the_change_mark_moves_with_every_state_change() {
    for db in backends("change_mark").await {
        let s = &db.store;
        let empty = s.change_mark().await.expect("mark");
        assert_eq!(empty, ChangeMark::default());
        let (id, _) = s
            .create_run(&new_run("resnet", "train", &"c".repeat(40), Some("main")))
            .await
            .expect("create");
        let created = s.change_mark().await.expect("mark");
        assert_ne!(created, empty, "creating a run moves the mark");
        assert_eq!(s.change_mark().await.expect("mark"), created, "stable");
        s.transition_run(id, RunState::Queued, RunState::Submitted)
            .await
            .expect("submitted");
        let submitted = s.change_mark().await.expect("mark");
        assert_ne!(submitted, created, "a transition moves the mark");
        s.transition_step(
            id,
            "train",
            StepState::Pending,
            StepState::Running,
            &StepChange::default(),
        )
        .await
        .expect("step");
        assert_ne!(
            s.change_mark().await.expect("mark"),
            submitted,
            "so does a step's"
        );
        db.finish().await;
    }
}
