//! Renders one example pipeline (3 steps, GPUs, params) to a self-checked manifest, and the
//! pieces of that work, so a regression shows where it is.
//!
//! `cargo bench -p ferry-engine --bench render`; figures go in docs/PERFORMANCE.md.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_engine::pipeline::{self, EventKind};
use ferry_engine::profile::Profile;
use ferry_engine::render::{Renderer, RunContext};

/// The allocator the `ferry` binary uses (webhooks/src/main.rs), so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PROFILE: &str = include_str!("../../examples/profile.yaml");
const PIPELINE: &str = include_str!("../../examples/pipelines/train-eval-deploy.yaml");

fn context(params: BTreeMap<String, String>) -> RunContext {
    RunContext {
        run_id: 1234,
        project: "ml/resnet".into(),
        repo_url: "https://gitlab.example.com/ml/resnet.git".into(),
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        git_ref: "refs/heads/main".into(),
        branch: Some("main".into()),
        tag: None,
        merge_request: None,
        event: EventKind::Push,
        params,
        namespace: Some("ml-team".into()),
        dashboard_url: Some("http://127.0.0.1:8080/runs/1234".into()),
    }
}

fn bench(c: &mut Criterion) {
    let profile = Profile::from_yaml("profile.yaml", PROFILE).expect("example profile is valid");
    let pipeline = pipeline::load("train-eval-deploy.yaml", PIPELINE, Some(&profile))
        .expect("example is valid");
    let ctx = context(pipeline.params.clone());
    let renderer = Renderer::embedded();
    c.bench_function("render train-eval-deploy (self-checked)", |b| {
        b.iter(|| {
            renderer
                .render(black_box(&pipeline), &profile, &ctx)
                .expect("renders")
        })
    });
    c.bench_function(
        "render train-eval-deploy, first run (skeleton not cached)",
        |b| {
            b.iter(|| {
                renderer.clear_cache();
                renderer
                    .render(black_box(&pipeline), &profile, &ctx)
                    .expect("renders")
            })
        },
    );
    c.bench_function("load + validate train-eval-deploy", |b| {
        b.iter(|| {
            pipeline::load(
                "train-eval-deploy.yaml",
                black_box(PIPELINE),
                Some(&profile),
            )
            .expect("valid")
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
