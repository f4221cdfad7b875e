//! `ferry token create|list|revoke`: the API's bearer tokens, managed on the server's database
//! directly (the same `--config` as `ferry serve`, or its embedded defaults: `sqlite://ferry.db`
//! in the current directory; `FERRY_DATABASE_URL` overrides).
//!
//! `create` prints the token alone on standard output, once; only its hash is stored. A token is
//! scoped to one configured project (`--project`) or to all of them (`--admin`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use ferry_engine::store::{ApiToken, Store, TokenScope};
use serde_json::json;

use super::client::{print_json, table};
use crate::server::api::types::rfc3339;

/// `ferry token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (alone on standard output, once).
    Create {
        /// The server's config file (default: ./ferry.yaml, else the embedded defaults).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The project the token may act on.
        #[arg(long, required_unless_present = "admin", conflicts_with = "admin")]
        project: Option<String>,
        /// A token for every project.
        #[arg(long)]
        admin: bool,
        /// Its name (letters, digits, `.`, `_`, `-`, `@`); runs it triggers record it.
        #[arg(long)]
        name: String,
    },
    /// List tokens (never their values).
    List {
        /// The server's config file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by name (or by id).
    Revoke {
        /// The token's name or id.
        name_or_id: String,
        /// The server's config file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Runs `ferry token ...`.
pub fn token(command: TokenCommand) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match command {
            TokenCommand::Create {
                config,
                project,
                admin: _,
                name,
            } => create(config, project, &name).await,
            TokenCommand::List { config, json } => list(config, json).await,
            TokenCommand::Revoke { name_or_id, config } => revoke(config, &name_or_id).await,
        }
    })
}

/// The configured project names, and the store, of the config `ferry serve` would use.
async fn open(config: Option<PathBuf>) -> Result<(Vec<String>, Store)> {
    let loaded =
        crate::server::load_config(config.as_deref(), std::env::var("FERRY_DATABASE_URL").ok())?;
    let mut projects: Vec<String> = loaded
        .config
        .projects
        .iter()
        .map(|p| p.name.clone())
        .collect();
    if loaded.embedded {
        projects.push(crate::server::demo::PROJECT.to_owned());
    }
    let store = Store::open(&loaded.config.database_url)
        .await
        .context("opening the database")?;
    Ok((projects, store))
}

fn check_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if !ok {
        bail!("--name `{name}`: use 1 to 64 letters, digits, `.`, `_`, `-` or `@`");
    }
    Ok(())
}

async fn create(config: Option<PathBuf>, project: Option<String>, name: &str) -> Result<ExitCode> {
    check_name(name)?;
    let (projects, store) = open(config).await?;
    let scope = match project {
        None => TokenScope::Admin,
        Some(p) if projects.contains(&p) => TokenScope::Project(p),
        Some(p) => bail!(
            "--project `{p}` is not configured (projects: {})",
            if projects.is_empty() {
                "none".to_owned()
            } else {
                projects.join(", ")
            }
        ),
    };
    let created = store.create_token(name, &scope).await;
    store.close().await;
    let (token, secret) = created?;
    eprintln!(
        "created token `{}` (id {}, {}); it is shown once, below: keep it, e.g. export FERRY_TOKEN=...",
        token.name, token.id, token.scope
    );
    println!("{}", secret.expose());
    Ok(ExitCode::SUCCESS)
}

async fn list(config: Option<PathBuf>, as_json: bool) -> Result<ExitCode> {
    let (_, store) = open(config).await?;
    let tokens = store.list_tokens().await;
    store.close().await;
    let tokens = tokens?;
    if as_json {
        let list: Vec<_> = tokens.iter().map(token_json).collect();
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    if tokens.is_empty() {
        println!("no tokens");
        return Ok(ExitCode::SUCCESS);
    }
    let time = |t: Option<i64>| {
        t.map(|t| rfc3339(t)[..19].replace('T', " "))
            .unwrap_or_default()
    };
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.name.clone(),
                t.scope.to_string(),
                time(Some(t.created_at)),
                time(t.last_used_at),
                time(t.revoked_at),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "ID",
                "NAME",
                "SCOPE",
                "CREATED (UTC)",
                "LAST USED",
                "REVOKED"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

fn token_json(t: &ApiToken) -> serde_json::Value {
    let (scope, project) = match &t.scope {
        TokenScope::Admin => ("admin", None),
        TokenScope::Project(p) => ("project", Some(p.as_str())),
    };
    json!({
        "id": t.id.0,
        "name": t.name,
        "scope": scope,
        "project": project,
        "created_at": rfc3339(t.created_at),
        "last_used_at": t.last_used_at.map(rfc3339),
        "revoked_at": t.revoked_at.map(rfc3339),
    })
}

async fn revoke(config: Option<PathBuf>, name_or_id: &str) -> Result<ExitCode> {
    let (_, store) = open(config).await?;
    let revoked = store.revoke_token(name_or_id).await;
    store.close().await;
    let token = revoked?;
    println!("revoked token `{}` (id {})", token.name, token.id);
    Ok(ExitCode::SUCCESS)
}
