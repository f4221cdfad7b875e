//! API tokens on both backends: created once with a value shown once, found by that value only,
//! names unique among live tokens, revocation by name or id, last use written at most once a
//! minute, and `triggered_by` on runs.

use super::tests::{backends, count, new_run};
use super::*;

#[tokio::test]
async fn tokens_are_stored_hashed_and_found_by_their_value_only() {
    for db in backends("tokens_hashed").await {
        let s = &db.store;
        let (admin, secret) = s
            .create_token("me", &TokenScope::Admin)
            .await
            .expect("create");
        let value = secret.expose().to_owned();
        assert!(value.starts_with(TOKEN_PREFIX), "{value}");
        assert_eq!(value.len(), TOKEN_PREFIX.len() + 64);
        assert_eq!(format!("{secret:?}"), "TokenSecret(***)");
        let (stored,): (String,) = with_pool!(s, |pool| sqlx::query_as(
            "SELECT token_hash FROM api_tokens"
        )
        .fetch_one(pool)
        .await
        .expect("hash"));
        assert_ne!(stored, value, "only the hash is stored");
        assert_eq!(stored.len(), 64);

        let found = s
            .authenticate_token(&value)
            .await
            .expect("auth")
            .expect("known token");
        assert_eq!(
            (found.id, found.scope.clone()),
            (admin.id, TokenScope::Admin)
        );
        assert!(found.last_used_at.is_some(), "use is recorded");
        for wrong in [
            "",
            "ferry_",
            &value[..value.len() - 1],
            &value.to_uppercase(),
        ] {
            assert_eq!(
                s.authenticate_token(wrong).await.expect("auth"),
                None,
                "{wrong:?}"
            );
        }
        let (other, other_secret) = s
            .create_token("ci", &TokenScope::Project("resnet".into()))
            .await
            .expect("create");
        assert_ne!(other_secret.expose(), value, "values are random");
        assert!(other.scope.covers("resnet") && !other.scope.covers("bert"));
        assert!(TokenScope::Admin.covers("bert"));
        db.finish().await;
    }
}

#[tokio::test]
async fn names_are_unique_among_live_tokens_and_revocation_frees_them() {
    for db in backends("tokens_revoke").await {
        let s = &db.store;
        let (first, secret) = s
            .create_token("ci", &TokenScope::Project("resnet".into()))
            .await
            .expect("create");
        let err = s
            .create_token("ci", &TokenScope::Admin)
            .await
            .expect_err("duplicate");
        assert_eq!(err.to_string(), "token `ci` already exists");
        assert_eq!(count(s, "SELECT COUNT(*) FROM api_tokens").await, 1);

        let revoked = s.revoke_token("ci").await.expect("revoke by name");
        assert_eq!(revoked.id, first.id);
        assert!(revoked.revoked_at.is_some());
        assert_eq!(
            s.authenticate_token(secret.expose()).await.expect("auth"),
            None,
            "a revoked token no longer authenticates"
        );
        let err = s.revoke_token("ci").await.expect_err("already revoked");
        assert_eq!(err.to_string(), "active token ci not found");

        // The name is free again; a second token of that name is revoked by its id.
        let (second, _) = s
            .create_token("ci", &TokenScope::Admin)
            .await
            .expect("create again");
        assert_ne!(second.id, first.id);
        let revoked = s
            .revoke_token(&second.id.to_string())
            .await
            .expect("revoke by id");
        assert_eq!(revoked.id, second.id);
        let listed = s.list_tokens().await.expect("list");
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|t| t.revoked_at.is_some()));
        assert_eq!(listed[0].scope, TokenScope::Project("resnet".into()));
        db.finish().await;
    }
}

#[tokio::test]
async fn last_use_is_written_at_most_once_a_minute() {
    for db in backends("tokens_last_use").await {
        let s = &db.store;
        let (token, secret) = s
            .create_token("me", &TokenScope::Admin)
            .await
            .expect("create");
        let first = s
            .authenticate_token(secret.expose())
            .await
            .expect("auth")
            .expect("token")
            .last_used_at
            .expect("used");
        // Pretend the last use was 30 s ago: not rewritten. 61 s ago: rewritten.
        let set = |at: i64| async move {
            with_pool!(s, |pool| sqlx::query(
                "UPDATE api_tokens SET last_used_at = $1 WHERE id = $2"
            )
            .bind(at)
            .bind(token.id.0)
            .execute(pool)
            .await
            .map(drop)
            .expect("set"));
        };
        let stored = || async {
            s.list_tokens().await.expect("list")[0]
                .last_used_at
                .expect("used")
        };
        set(first - 30_000).await;
        s.authenticate_token(secret.expose()).await.expect("auth");
        assert_eq!(
            stored().await,
            first - 30_000,
            "not rewritten within a minute"
        );
        set(first - LAST_USE_RESOLUTION_MS - 1_000).await;
        s.authenticate_token(secret.expose()).await.expect("auth");
        assert!(stored().await >= first, "rewritten after a minute");
        db.finish().await;
    }
}

#[tokio::test]
async fn runs_remember_who_triggered_them() {
    for db in backends("runs_triggered_by").await {
        let s = &db.store;
        let (by_api, _) = s
            .create_run_by(
                &new_run("resnet", "train", &"a".repeat(40), None),
                Some("me"),
            )
            .await
            .expect("create");
        let (by_event, _) = s
            .create_run(&new_run("resnet", "train", &"b".repeat(40), Some("main")))
            .await
            .expect("create");
        let who = |id| async move { s.get_run(id).await.expect("get").expect("run").triggered_by };
        assert_eq!(who(by_api).await.as_deref(), Some("me"));
        assert_eq!(who(by_event).await, None);
        db.finish().await;
    }
}
