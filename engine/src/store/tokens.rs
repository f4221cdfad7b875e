//! API tokens: the bearer tokens of `/api/v1`, each scoped to one project or to every project
//! (admin).
//!
//! A token is 32 bytes from the operating system's random source, shown once as `ferry_` followed
//! by 64 hexadecimal digits ([`Store::create_token`] returns it and nothing keeps it). Only its
//! SHA-256 is stored. A fast, unsalted hash is enough here, unlike for passwords: with 256 random
//! bits there is no dictionary to try, so the hash only has to be one-way. Requests are
//! authenticated by looking the hash up through a unique index ([`Store::authenticate_token`]).
//!
//! Revoking keeps the row (for `ferry token list`) and frees the name. Last use is recorded at most
//! once a minute per token: the update only runs when the stored time is older than that, so a
//! busy client costs one indexed read per request and one write a minute.

use sha2::{Digest, Sha256};

use super::{Columns, Store, StoreError, UnixMillis, now_millis, with_pool, write_tx};

/// What every token starts with (so that secret scanners and people recognise one).
pub const TOKEN_PREFIX: &str = "ferry_";

/// Last use is written when the stored time is older than this.
pub const LAST_USE_RESOLUTION_MS: i64 = 60_000;

/// The id of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(pub i64);

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a token may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenScope {
    /// Every project.
    Admin,
    /// One project.
    Project(String),
}

impl TokenScope {
    /// Whether the token may act on `project`.
    pub fn covers(&self, project: &str) -> bool {
        match self {
            TokenScope::Admin => true,
            TokenScope::Project(p) => p == project,
        }
    }
}

impl std::fmt::Display for TokenScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenScope::Admin => f.write_str("admin"),
            TokenScope::Project(p) => write!(f, "project {p}"),
        }
    }
}

/// A stored token (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Its id.
    pub id: TokenId,
    /// Its name, unique among the tokens not revoked; runs it triggers record it.
    pub name: String,
    /// What it may reach.
    pub scope: TokenScope,
    /// When it was created.
    pub created_at: UnixMillis,
    /// When it was last used (to within [`LAST_USE_RESOLUTION_MS`]).
    pub last_used_at: Option<UnixMillis>,
    /// When it was revoked.
    pub revoked_at: Option<UnixMillis>,
}

/// A token's value, returned once by [`Store::create_token`]. Its `Debug` does not show it.
pub struct TokenSecret(String);

impl TokenSecret {
    /// The value, to show the person who created it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret(***)")
    }
}

/// The stored form of a token value.
fn token_hash(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

fn new_secret() -> Result<TokenSecret, StoreError> {
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(TokenSecret(format!("{TOKEN_PREFIX}{}", hex::encode(bytes))))
}

/// `SELECT <every token column> FROM api_tokens <rest>`.
macro_rules! select_tokens {
    ($rest:literal) => {
        concat!(
            "SELECT id, name, scope, project, created_at, last_used_at, revoked_at \
             FROM api_tokens ",
            $rest
        )
    };
}

fn token_from_row(row: &impl Columns) -> Result<ApiToken, StoreError> {
    let scope = match (row.text("scope")?.as_str(), row.opt_text("project")?) {
        ("admin", None) => TokenScope::Admin,
        ("project", Some(p)) => TokenScope::Project(p),
        (word, project) => {
            return Err(StoreError::Corrupt(format!(
                "token scope {word:?} with project {project:?}"
            )));
        }
    };
    Ok(ApiToken {
        id: TokenId(row.int("id")?),
        name: row.text("name")?,
        scope,
        created_at: row.int("created_at")?,
        last_used_at: row.opt_int("last_used_at")?,
        revoked_at: row.opt_int("revoked_at")?,
    })
}

impl Store {
    /// Creates a token named `name` (unique among the tokens not revoked:
    /// [`StoreError::Duplicate`] otherwise) and returns it with its value, which is not kept.
    pub async fn create_token(
        &self,
        name: &str,
        scope: &TokenScope,
    ) -> Result<(ApiToken, TokenSecret), StoreError> {
        let secret = new_secret()?;
        let (word, project) = match scope {
            TokenScope::Admin => ("admin", None),
            TokenScope::Project(p) => ("project", Some(p.as_str())),
        };
        let now = now_millis();
        let id = write_tx!(self, |tx| {
            let taken: Option<(i64,)> =
                sqlx::query_as("SELECT id FROM api_tokens WHERE name = $1 AND revoked_at IS NULL")
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
            if taken.is_some() {
                return Err(StoreError::Duplicate {
                    entity: "token",
                    key: name.to_owned(),
                });
            }
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO api_tokens (name, scope, project, token_hash, created_at) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(name)
            .bind(word)
            .bind(project)
            .bind(token_hash(secret.expose()))
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            id
        });
        let token = ApiToken {
            id: TokenId(id),
            name: name.to_owned(),
            scope: scope.clone(),
            created_at: now,
            last_used_at: None,
            revoked_at: None,
        };
        Ok((token, secret))
    }

    /// The token whose value is `value`, unless it is unknown or revoked; records its use (at
    /// most once a minute).
    pub async fn authenticate_token(&self, value: &str) -> Result<Option<ApiToken>, StoreError> {
        if !value.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let hash = token_hash(value);
        let found = with_pool!(self, |pool| {
            let row = sqlx::query(select_tokens!(
                "WHERE token_hash = $1 AND revoked_at IS NULL"
            ))
            .bind(&hash)
            .fetch_optional(pool)
            .await?;
            row.as_ref().map(token_from_row).transpose()?
        });
        let Some(mut token) = found else {
            return Ok(None);
        };
        let now = now_millis();
        if token
            .last_used_at
            .is_none_or(|at| at < now - LAST_USE_RESOLUTION_MS)
        {
            write_tx!(self, |tx| {
                sqlx::query(
                    "UPDATE api_tokens SET last_used_at = $2 \
                     WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $3)",
                )
                .bind(token.id.0)
                .bind(now)
                .bind(now - LAST_USE_RESOLUTION_MS)
                .execute(&mut *tx)
                .await?;
            });
            token.last_used_at = Some(now);
        }
        Ok(Some(token))
    }

    /// Every token, revoked ones included, oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(select_tokens!("ORDER BY id"))
                .fetch_all(pool)
                .await?;
            rows.iter().map(token_from_row).collect()
        })
    }

    /// Revokes the token named `name_or_id` (a token not revoked), or else the one with that id.
    /// Returns it, revoked; [`StoreError::NotFound`] when no token matches.
    pub async fn revoke_token(&self, name_or_id: &str) -> Result<ApiToken, StoreError> {
        let now = now_millis();
        let id = name_or_id.parse::<i64>().ok();
        let revoked = write_tx!(self, |tx| {
            let by_name: Option<(i64,)> =
                sqlx::query_as("SELECT id FROM api_tokens WHERE name = $1 AND revoked_at IS NULL")
                    .bind(name_or_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let by_id: Option<(i64,)> = match (by_name, id) {
                (Some(found), _) => Some(found),
                (None, Some(id)) => {
                    sqlx::query_as("SELECT id FROM api_tokens WHERE id = $1 AND revoked_at IS NULL")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?
                }
                (None, None) => None,
            };
            let Some((target,)) = by_id else {
                return Err(StoreError::NotFound {
                    entity: "active token",
                    id: name_or_id.to_owned(),
                });
            };
            sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE id = $1")
                .bind(target)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let row = sqlx::query(select_tokens!("WHERE id = $1"))
                .bind(target)
                .fetch_one(&mut *tx)
                .await?;
            token_from_row(&row)?
        });
        Ok(revoked)
    }
}
