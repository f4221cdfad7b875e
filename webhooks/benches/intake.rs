//! Load generator for webhook intake: signed GitLab push deliveries over loopback into a real
//! `ferry serve` (in process, SQLite in a temp dir), then a check that every acknowledged delivery
//! is in the database. Prints throughput and latency percentiles.
//!
//! `cargo bench -p ferry --bench intake -- [deliveries] [connections]` (defaults 20000 and 32).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::server::{self, Loaded};
use ferry_engine::config::Config;
use ferry_engine::profile::Profile;
use ferry_engine::store::Store;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const SECRET: &str = "load-test-secret";

fn body(i: usize) -> String {
    format!(
        r#"{{"object_kind":"push","event_name":"push","before":"95790bf891e76fee5e1747ab589903a6a1f80f22","after":"da1560886d4f094c3e6c9ef40349f7d38b5d27d7","ref":"refs/heads/main","checkout_sha":"da1560886d4f094c3e6c9ef40349f7d38b5d27d7","user_username":"load","project_id":15,"project":{{"id":15,"name":"Diaspora","path_with_namespace":"mike/diaspora","default_branch":"main","git_http_url":"http://example.com/mike/diaspora.git","git_ssh_url":"git@example.com:mike/diaspora.git","web_url":"http://example.com/mike/diaspora"}},"commits":[{{"id":"da1560886d4f094c3e6c9ef40349f7d38b5d27d7","message":"load test {i}","added":["train.py"],"modified":[],"removed":[]}}],"total_commits_count":1,"repository":{{"name":"Diaspora","url":"git@example.com:mike/diaspora.git","homepage":"http://example.com/mike/diaspora","git_http_url":"http://example.com/mike/diaspora.git","git_ssh_url":"git@example.com:mike/diaspora.git"}}}}"#
    )
}

async fn send(stream: &mut BufReader<TcpStream>, i: usize) -> std::io::Result<u16> {
    let body = body(i);
    let request = format!(
        "POST /hooks/gitlab HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Gitlab-Event: Push Hook\r\nX-Gitlab-Token: {SECRET}\r\nIdempotency-Key: load-{i}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.get_mut().write_all(request.as_bytes()).await?;
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0usize;
    loop {
        line.clear();
        stream.read_line(&mut line).await?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut rest = vec![0u8; length];
    stream.read_exact(&mut rest).await?;
    Ok(status)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// As the `ferry` binary (`src/main.rs`): the server under test allocates as in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let total = args.first().copied().unwrap_or(20_000);
    let connections = args.get(1).copied().unwrap_or(32);
    let dir = std::env::temp_dir().join(format!("ferry-intake-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = format!("sqlite://{}", dir.join("ferry.db").display());
    let yaml = format!(
        "database_url: {db}\ndata_dir: {}\nprojects:\n  - {{ name: diaspora, repo: http://example.com/mike/diaspora.git, forge: gitlab, webhook_secret_env: S }}\n",
        dir.join("data").display()
    );
    let config = Config::from_yaml("bench.yaml", &yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let secrets = server::read_secrets(&config, |_| Some(SECRET.to_owned()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let loaded = Loaded {
            config,
            profile: Profile::default(),
            source: "bench".into(),
            embedded: false,
        };
        let server = tokio::spawn(server::serve_with(loaded, secrets, listener, async move {
            let _ = stop_rx.await;
        }));
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let mut clients = Vec::new();
        for _ in 0..connections {
            let next = next.clone();
            clients.push(tokio::spawn(async move {
                let mut stream = BufReader::new(TcpStream::connect(addr).await?);
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let t = Instant::now();
                    let status = send(&mut stream, i).await?;
                    done.push((i, status, t.elapsed()));
                }
                Ok::<_, std::io::Error>(done)
            }));
        }
        let mut results = Vec::with_capacity(total);
        for c in clients {
            results.extend(c.await??);
        }
        let elapsed = started.elapsed();
        let _ = stop_tx.send(());
        server.await??;
        let accepted: Vec<usize> = results.iter().filter(|r| r.1 == 202).map(|r| r.0).collect();
        let mut latencies: Vec<Duration> = results.iter().map(|r| r.2).collect();
        latencies.sort();
        let store = Store::open(&db).await?;
        let mut missing = 0;
        for i in &accepted {
            if store
                .event_by_key(&format!("gitlab:load-{i}"))
                .await?
                .is_none()
            {
                missing += 1;
            }
        }
        store.close().await;
        println!(
            "deliveries: {total} over {connections} connections in {:.2} s",
            elapsed.as_secs_f64()
        );
        println!(
            "throughput: {:.0} deliveries/s (verified and stored before the 202)",
            total as f64 / elapsed.as_secs_f64()
        );
        println!(
            "latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
        );
        println!(
            "acknowledged with 202: {}; of those missing from the database: {missing}",
            accepted.len()
        );
        std::fs::remove_dir_all(&dir).ok();
        anyhow::ensure!(
            missing == 0 && accepted.len() == total,
            "lost or refused deliveries"
        );
        Ok(())
    })
}
