//! The push-to-main manifest of every example, as insta snapshots (`tests/e2e/snapshots/`).
//!
//! After an intended change of the rendered output, regenerate with
//! `INSTA_UPDATE=always cargo test -p ferry-tests snapshot` and review the diff of the `.snap` files.

use ferry_tests::{Variant, examples, profile, render, variant_context};

#[test]
fn push_to_main_manifests_match_their_snapshots() {
    let profile = profile();
    for ex in examples() {
        let pipeline = ex.load();
        let ctx = variant_context(&pipeline, Variant::PushMain);
        let rendered = render(
            &pipeline,
            &profile,
            &ctx,
            &format!("{} (push to main)", ex.file),
        );
        insta::assert_json_snapshot!(format!("push_main-{}", ex.stem), rendered.manifest);
    }
}
