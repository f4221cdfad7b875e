//! `ferry serve` with `executor: argo` against the fake Kubernetes API: the setup shared by the
//! end-to-end tests (`e2e/serve_argo.rs`) and the benchmarks (`benches/`).
//!
//! - [`Upstream`]: a real git repository made by the test (cloned over `file://`) whose `main`
//!   holds the `train-eval-deploy` example as `.ferry/train.yaml` (train with retries -> evaluate
//!   with metrics -> deploy gated on them) and the files its `on.push.paths` watch.
//! - [`Site`]: a directory holding `ferry.yaml` (`executor: argo`, `argo.kubeconfig` relative to
//!   it, `profile_file: profile.yaml` with the example profile, one GitLab project in namespace
//!   [`NAMESPACE`]), the fake's kubeconfig, the SQLite database and the data directory. It is
//!   loaded through `ferry::server::load_config`, as `ferry serve --config` loads it.
//! - [`Server`]: one `ferry::server::serve_with` on 127.0.0.1 in this process, stopped
//!   gracefully on demand; a site can be served again (a restart on the same database).
//! - [`push_body`] and [`post_hook`]: a GitLab push hook with its secret token, over HTTP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_engine::store::Store;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::TempDir;
use crate::fake_k8s::FakeKube;

/// The project's namespace, where its workflows are created.
pub const NAMESPACE: &str = "ml-team";
/// The project's name.
pub const PROJECT: &str = "resnet";
/// The environment variable `ferry.yaml` names for the webhook secret.
pub const SECRET_ENV: &str = "FERRY_RESNET_WEBHOOK_SECRET";
/// The webhook secret (GitLab's `X-Gitlab-Token`).
pub const SECRET: &str = "s3cret-hook-token";
/// The `before` of a push that creates a branch.
pub const ZERO_SHA: &str = "0000000000000000000000000000000000000000";
/// The pipeline's name (in `examples/pipelines/train-eval-deploy.yaml`).
pub const PIPELINE: &str = "resnet50-classifier";

/// A git repository on disk, made by the test.
pub struct Upstream {
    dir: TempDir,
}

impl Upstream {
    /// `main` with the example pipeline, `model/net.py` and `train.py`, committed.
    pub fn new() -> Upstream {
        let dir = TempDir::new("upstream");
        let up = Upstream { dir };
        up.git(&["init", "-q", "-b", "main"]);
        let pipeline =
            crate::read(&crate::workspace_root().join("examples/pipelines/train-eval-deploy.yaml"));
        up.dir.write(".ferry/train.yaml", &pipeline);
        up.dir.write("train.py", "print('training')\n");
        up.commit("model/net.py", "layers = 50\n", "base");
        up
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `file://<dir>`, the project's `repo` and the hook's clone URL.
    pub fn url(&self) -> String {
        format!("file://{}", self.path().display())
    }

    /// Runs git in the repository with a fixed identity; its trimmed standard output.
    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(self.path())
            .env("GIT_AUTHOR_NAME", "dev")
            .env("GIT_AUTHOR_EMAIL", "dev@example.com")
            .env("GIT_COMMITTER_NAME", "dev")
            .env("GIT_COMMITTER_EMAIL", "dev@example.com")
            .output()
            .unwrap_or_else(|e| panic!("running git {args:?}: {e}"));
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Writes `file` and commits everything on the current branch; the new commit's SHA.
    pub fn commit(&self, file: &str, text: &str, message: &str) -> String {
        self.dir.write(file, text);
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

impl Default for Upstream {
    fn default() -> Upstream {
        Upstream::new()
    }
}

/// A directory `ferry serve` runs from: config, kubeconfig, profile, database, data.
pub struct Site {
    dir: TempDir,
    /// `sqlite://<dir>/ferry.db`.
    pub database_url: String,
}

impl Site {
    /// A site serving `upstream` with the Argo executor on `fake`, listening (when run as a
    /// process) on `listen`.
    pub fn new(fake: &FakeKube, upstream: &Upstream, listen: SocketAddr) -> Site {
        let dir = TempDir::new("serve-argo");
        fake.write_kubeconfig(&dir.path().join("kubeconfig"))
            .unwrap_or_else(|e| panic!("writing the kubeconfig: {e}"));
        dir.write(
            "profile.yaml",
            &crate::read(&crate::workspace_root().join("examples/profile.yaml")),
        );
        let database_url = format!("sqlite://{}", dir.path().join("ferry.db").display());
        let config = format!(
            "listen: {listen}\n\
             public_url: http://{listen}\n\
             database_url: {database_url}\n\
             data_dir: {data}\n\
             executor: argo\n\
             argo: {{ kubeconfig: kubeconfig, namespace: ferry-default }}\n\
             profile_file: profile.yaml\n\
             projects:\n\
             \x20 - name: {PROJECT}\n\
             \x20   repo: \"{repo}\"\n\
             \x20   forge: gitlab\n\
             \x20   webhook_secret_env: {SECRET_ENV}\n\
             \x20   namespace: {NAMESPACE}\n",
            data = dir.path().join("data").display(),
            repo = upstream.url(),
        );
        dir.write("ferry.yaml", &config);
        Site { dir, database_url }
    }

    /// `<dir>/ferry.yaml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("ferry.yaml")
    }

    /// Loads the config as `ferry serve --config` does and serves it in this process.
    pub async fn serve(&self) -> Server {
        let loaded = ferry::server::load_config(Some(&self.config_path()), None)
            .unwrap_or_else(|e| panic!("loading {}: {e:#}", self.config_path().display()));
        let secrets = ferry::server::read_secrets(&loaded.config, |var| {
            (var == SECRET_ENV).then(|| SECRET.to_owned())
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("binding 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("the listener's address: {e}"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ferry::server::serve_with(
            loaded,
            secrets,
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        Server {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// A second handle on the site's database (for assertions and seeding).
    pub async fn store(&self) -> Store {
        Store::open(&self.database_url)
            .await
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.database_url))
    }
}

/// `ferry serve` running in this process.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Delivers a GitLab push hook with delivery key `key`; the HTTP status.
    pub async fn push(&self, key: &str, body: &[u8]) -> u16 {
        post_hook(self.addr, key, body).await
    }

    /// Stops it as SIGTERM would and waits until it has shut down; panics if it failed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("ferry serve failed: {e:#}"),
            Err(e) => panic!("ferry serve panicked: {e}"),
        }
    }
}

/// A GitLab push hook of `branch` from `before` to `after` of `repo_url`.
pub fn push_body(
    repo_url: &str,
    branch: &str,
    before: &str,
    after: &str,
    message: &str,
) -> Vec<u8> {
    let body = json!({
        "object_kind": "push", "event_name": "push",
        "before": before, "after": after, "ref": format!("refs/heads/{branch}"),
        "checkout_sha": after, "user_username": "dev", "project_id": 1,
        "project": {"path_with_namespace": "ml/resnet", "default_branch": "main",
                    "git_http_url": repo_url},
        "commits": [{"id": after, "message": message}],
        "total_commits_count": 1,
        "repository": {"git_http_url": repo_url}
    });
    serde_json::to_vec(&body).unwrap_or_else(|e| panic!("serialising a push hook: {e}"))
}

/// POSTs a GitLab hook to `/hooks/gitlab` with the secret token and `Idempotency-Key: key` over a
/// fresh connection, as GitLab does; the HTTP status.
pub async fn post_hook(addr: SocketAddr, key: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to ferry serve at {addr}: {e}"));
    let head = format!(
        "POST /hooks/gitlab HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nX-Gitlab-Event: Push Hook\r\n\
         X-Gitlab-Token: {SECRET}\r\nIdempotency-Key: {key}\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    stream
        .write_all(&request)
        .await
        .unwrap_or_else(|e| panic!("sending a hook: {e}"));
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .unwrap_or_else(|e| panic!("reading the hook's answer: {e}"));
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in {text:?}"))
}
