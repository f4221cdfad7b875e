//! Cloning over ssh with keys from an ssh-agent: a real `sshd` on 127.0.0.1 serving a bare
//! repository, a real `ssh-agent` holding the key, and `ferry serve` planning a push from it.
//!
//! Skipped with a clear message when `sshd` is not installed (`.ci/run` installs
//! `openssh-server`). The host key must be in `~/.ssh/known_hosts` of the user ferry runs as:
//! libgit2 refuses unknown hosts, which is what a careful operator wants.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_engine::store::{Page, RunFilter, Store};
use ferry_tests::TempDir;

const SSHD: &str = "/usr/sbin/sshd";

/// Kills the child processes of the test when it ends, however it ends.
struct Reaper(Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} not ready within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    run(Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com"))
}

const PIPELINE: &str = "version: 1\nname: lint\non:\n  push:\n    branches: [main]\ndefaults: { image: img:1 }\nsteps:\n  - { name: check, kind: task, run: 'true' }\n";

#[tokio::test]
async fn planning_fetches_over_ssh_with_the_agents_key() {
    if !Path::new(SSHD).exists() {
        eprintln!("SKIPPED (sshd): {SSHD} is not installed (apt-get install openssh-server)");
        return;
    }
    // sshd insists on its privilege separation directory (a package install creates it at boot).
    if std::fs::create_dir_all("/run/sshd").is_err() {
        eprintln!("SKIPPED (sshd): cannot create /run/sshd (not root?)");
        return;
    }
    let dir = TempDir::new("ssh");
    let d = dir.path();
    let user = run(Command::new("id").arg("-un"));
    for key in ["host_key", "user_key"] {
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
            .arg(d.join(key)));
    }
    std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).expect("authorized_keys");
    let port = free_port();
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile {pid}\nAuthorizedKeysFile {auth}\n\
         StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nAllowUsers {user}\nLogLevel ERROR\n",
        host = d.join("host_key").display(),
        pid = d.join("sshd.pid").display(),
        auth = d.join("authorized_keys").display(),
    );
    std::fs::write(d.join("sshd_config"), config).expect("sshd_config");
    let mut children = Reaper(Vec::new());
    children.0.push(
        Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stderr(std::fs::File::create(d.join("sshd.log")).expect("log"))
            .spawn()
            .expect("sshd starts"),
    );
    wait_for("sshd", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let agent = d.join("agent.sock");
    children.0.push(
        Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&agent)
            .stdout(Stdio::null())
            .spawn()
            .expect("ssh-agent starts"),
    );
    wait_for("ssh-agent", || agent.exists());
    run(Command::new("ssh-add")
        .arg(d.join("user_key"))
        .env("SSH_AUTH_SOCK", &agent));
    // ferry's HOME knows the server's host key, as an operator would set it up.
    let home = d.join("home");
    std::fs::create_dir_all(home.join(".ssh")).expect("home");
    let host_pub = std::fs::read_to_string(d.join("host_key.pub")).expect("host key");
    let mut fields = host_pub.split_whitespace();
    let known = format!(
        "[127.0.0.1]:{port} {} {}\n",
        fields.next().unwrap_or_default(),
        fields.next().unwrap_or_default()
    );
    std::fs::write(home.join(".ssh/known_hosts"), known).expect("known_hosts");

    // The upstream repository, served by sshd as a bare repository.
    let work = d.join("work");
    std::fs::create_dir_all(work.join(".ferry")).expect("work");
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join(".ferry/lint.yaml"), PIPELINE).expect("pipeline");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);
    let bare: PathBuf = d.join("up.git");
    run(Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&work)
        .arg(&bare));
    let url = format!("ssh://{user}@127.0.0.1:{port}{}", bare.display());

    let listen = free_port();
    let db = d.join("ferry.db");
    let yaml = format!(
        "listen: 127.0.0.1:{listen}\ndatabase_url: sqlite://{}\ndata_dir: {}\nprojects:\n  - {{ name: up, repo: \"{url}\", forge: gitlab, webhook_secret_env: S }}\n",
        db.display(),
        d.join("data").display()
    );
    std::fs::write(d.join("ferry.yaml"), yaml).expect("ferry.yaml");
    children.0.push(
        Command::new(env!("CARGO_BIN_EXE_ferry-under-test"))
            .args(["serve", "--config"])
            .arg(d.join("ferry.yaml"))
            .current_dir(d)
            .env("S", "secret")
            .env("HOME", &home)
            .env("SSH_AUTH_SOCK", &agent)
            .env_remove("FERRY_DATABASE_URL")
            .stderr(std::fs::File::create(d.join("serve.log")).expect("log"))
            .spawn()
            .expect("ferry serve starts"),
    );
    wait_for("ferry serve", || {
        std::net::TcpStream::connect(("127.0.0.1", listen)).is_ok()
    });
    let body = serde_json::json!({
        "object_kind": "push", "before": "0".repeat(40), "after": sha, "ref": "refs/heads/main",
        "project": {"path_with_namespace": "t/up", "default_branch": "main", "git_ssh_url": url},
        "commits": [{"id": sha, "message": "first"}]
    })
    .to_string();
    let headers = [
        ("X-Gitlab-Event", "Push Hook"),
        ("X-Gitlab-Token", "secret"),
        ("Idempotency-Key", "ssh-1"),
    ];
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], listen));
    let answer = crate::planning::http_post(addr, "/hooks/gitlab", &headers, body.as_bytes()).await;
    assert_eq!(answer, 202);
    let store = Store::open(&format!("sqlite://{}", db.display()))
        .await
        .expect("store");
    let deadline = Instant::now() + Duration::from_secs(30);
    let runs = loop {
        let runs = store
            .list_runs(&RunFilter::default(), Page::first(10))
            .await
            .expect("list")
            .runs;
        if !runs.is_empty() {
            break runs;
        }
        let log = || std::fs::read_to_string(d.join("serve.log")).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "no run planned from the ssh repository within 30 s\n--- ferry ---\n{}\n--- sshd ---\n{}",
            log(),
            std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (runs[0].pipeline.as_str(), runs[0].sha.as_str()),
        ("lint", sha.as_str())
    );
    store.close().await;
}
