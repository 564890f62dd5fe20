//! Authentication with bearer tokens, and the roles each endpoint needs.
//!
//! The token file (`--auth-file`, TOML) names tokens and their roles and
//! stores only the SHA-256 of each secret:
//!
//! ```toml
//! [[token]]
//! name = "app"
//! sha256 = "5e88…"          # hex SHA-256 of the secret: printf %s SECRET | sha256sum
//! roles = ["read", "write"]
//! ```
//!
//! A request presents `Authorization: Bearer SECRET`. The secret is hashed
//! and compared with every stored hash in constant time (`subtle`), so
//! neither the secret nor which token nearly matched leaks through timing;
//! secrets are never logged, only token names. `SIGHUP` reloads the file
//! ([`Authenticator::reload`]); a file that no longer parses is refused and
//! the tokens already loaded stay in force.
//!
//! Roles are independent (`write` does not imply `read`):
//! - `read`: `GET`/`HEAD` on `/v1/*` and the seed read endpoints, `/status`,
//!   `/metrics` (unless `--metrics-open`), the dashboard's data
//!   (`/dashboard/events`, `/dashboard/state`);
//! - `write`: every other method on `/v1/*` and the seed write endpoints;
//! - `admin`: `/admin/*`;
//! - `replication`: the replication stream (`/v1/replication`) and
//!   `/internal/*` (what nodes ask of each other).
//!
//! `/health` (load balancers), `/openapi.json` and the dashboard's static
//! page `/dashboard` (no data; it asks for a token) stay open.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::http::Method;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Most tokens one auth file may hold: every request compares against all
/// of them.
pub const AUTH_TOKENS_MAX: usize = 1024;
/// Largest auth file read, in bytes.
pub const AUTH_FILE_BYTES_MAX: u64 = 1 << 20;

/// What a token may do. Roles are independent: `write` does not imply
/// `read`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads, scans, `/status`, `/metrics`.
    Read,
    /// Writes, deletes, transactions, CRDT updates.
    Write,
    /// `/admin/*`: promote, switchover, follow, fence, forget.
    Admin,
    /// The replication stream and `/internal/*` (node to node).
    Replication,
}

impl Role {
    /// The role's name as the token file and errors spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
            Role::Replication => "replication",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request needs before it reaches its handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (`/health`, `/openapi.json`).
    Open,
    /// A token with this role.
    Needs(Role),
}

/// The access `method path` needs. `metrics_open` is `--metrics-open`.
/// Paths nobody serves need `read`, so that an unauthenticated client
/// cannot map the API by its 404s.
pub fn access(method: &Method, path: &str, metrics_open: bool) -> Access {
    let reading = method == Method::GET || method == Method::HEAD;
    match path {
        // The dashboard's page is static (no data); it asks for a token
        // and sends it with its own requests for /dashboard/events.
        "/health" | "/openapi.json" => Access::Open,
        "/dashboard" | "/dashboard/" if reading => Access::Open,
        "/metrics" if metrics_open => Access::Open,
        "/metrics" | "/status" => Access::Needs(Role::Read),
        replidb_replication::transport::REPLICATION_PATH => Access::Needs(Role::Replication),
        p if p.starts_with("/internal/") => Access::Needs(Role::Replication),
        p if p.starts_with("/admin/") => Access::Needs(Role::Admin),
        "/write" | "/write-with-quorum" => Access::Needs(Role::Write),
        _ if reading => Access::Needs(Role::Read),
        _ => Access::Needs(Role::Write),
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header, or a secret no token has: 401.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A known token without the role: 403.
    #[error("token {token:?} lacks the {role:?} role")]
    Forbidden {
        /// The token's name (never its secret).
        token: String,
        /// The role the request needs.
        role: Role,
    },
}

/// The auth file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    /// Reading it failed.
    #[error("cannot read auth file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Its content is not a valid token file.
    #[error("auth file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the token's name where one is at fault.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSpec {
    name: String,
    sha256: String,
    #[serde(default)]
    roles: Vec<Role>,
}

/// One token as held in memory: its name, the hash of its secret, roles.
#[derive(Clone)]
struct Token {
    name: String,
    digest: [u8; 32],
    roles: BTreeSet<Role>,
}

/// The tokens of `--auth-file`, reloadable.
pub struct Authenticator {
    path: PathBuf,
    tokens: RwLock<Arc<Vec<Token>>>,
    /// Bumped by every reload that took effect: a long-lived connection
    /// (the Redis protocol) that authenticated once checks its token again
    /// when this moves, so a revoked or narrowed token stops working on
    /// open connections too, not only on new requests.
    generation: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("path", &self.path)
            .field("tokens", &self.current().len())
            .finish()
    }
}

/// SHA-256 of `secret`, as the token file stores it (lowercase hex).
pub fn secret_sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl Authenticator {
    /// Load `path`. Errors: unreadable file, bad TOML, a hash that is not
    /// 64 hex digits, a token without roles, a repeated name, more than
    /// [`AUTH_TOKENS_MAX`] tokens.
    pub fn load(path: &Path) -> Result<Authenticator, AuthFileError> {
        let tokens = parse_file(path)?;
        Ok(Authenticator {
            path: path.to_path_buf(),
            tokens: RwLock::new(Arc::new(tokens)),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Read the file again (on `SIGHUP`). On error the loaded tokens stay.
    /// Returns how many tokens are now in force.
    pub fn reload(&self) -> Result<usize, AuthFileError> {
        let tokens = parse_file(&self.path)?;
        let n = tokens.len();
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tokens);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(n)
    }

    /// How many reloads have taken effect (see the field).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The file this authenticator reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn current(&self) -> Arc<Vec<Token>> {
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The token whose secret is `secret`, as (name, roles). Compares the
    /// secret's hash with every token's in constant time.
    pub fn authenticate(&self, secret: &str) -> Option<(String, BTreeSet<Role>)> {
        self.authenticate_digest(&Self::digest(secret))
    }

    /// SHA-256 of `secret`: what a connection keeps to check its token
    /// again after a reload ([`Authenticator::authenticate_digest`])
    /// without keeping the secret.
    pub fn digest(secret: &str) -> [u8; 32] {
        Sha256::digest(secret.as_bytes()).into()
    }

    /// The token whose secret hashes to `digest`, as (name, roles).
    pub fn authenticate_digest(&self, digest: &[u8; 32]) -> Option<(String, BTreeSet<Role>)> {
        let tokens = self.current();
        let mut found: Option<&Token> = None;
        // No early exit: every hash is compared whatever matched before.
        for t in tokens.iter() {
            if bool::from(t.digest.ct_eq(digest)) {
                found = Some(t);
            }
        }
        found.map(|t| (t.name.clone(), t.roles.clone()))
    }

    /// Check an `Authorization` header value against `role`. Returns the
    /// token's name.
    pub fn authorize(&self, header: Option<&str>, role: Role) -> Result<String, AuthError> {
        let header = header.ok_or(AuthError::Unauthenticated(
            "this node requires a token: send Authorization: Bearer <secret>",
        ))?;
        let secret = bearer_secret(header).ok_or(AuthError::Unauthenticated(
            "the Authorization header must be Bearer <secret>",
        ))?;
        let (name, roles) = self
            .authenticate(secret)
            .ok_or(AuthError::Unauthenticated("unknown token"))?;
        if roles.contains(&role) {
            Ok(name)
        } else {
            Err(AuthError::Forbidden { token: name, role })
        }
    }
}

/// The secret of a `Bearer SECRET` header value (scheme case-insensitive).
pub fn bearer_secret(header: &str) -> Option<&str> {
    let (scheme, secret) = header.trim().split_once(' ')?;
    let secret = secret.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !secret.is_empty()).then_some(secret)
}

fn parse_file(path: &Path) -> Result<Vec<Token>, AuthFileError> {
    use std::io::Read;
    let io = |source| AuthFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let invalid = |message: String| AuthFileError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(AUTH_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > AUTH_FILE_BYTES_MAX {
        return Err(invalid(format!("larger than {AUTH_FILE_BYTES_MAX} bytes")));
    }
    let file: TokenFile = toml::from_str(&text).map_err(|e| invalid(e.message().to_string()))?;
    if file.token.len() > AUTH_TOKENS_MAX {
        return Err(invalid(format!(
            "{} tokens; at most {AUTH_TOKENS_MAX}",
            file.token.len()
        )));
    }
    let mut names = BTreeSet::new();
    let mut out = Vec::with_capacity(file.token.len());
    for spec in file.token {
        if spec.name.is_empty() {
            return Err(invalid("a token has an empty name".into()));
        }
        if !names.insert(spec.name.clone()) {
            return Err(invalid(format!("token {:?} appears twice", spec.name)));
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(spec.sha256.trim(), &mut digest).map_err(|_| {
            invalid(format!(
                "token {:?}: sha256 must be 64 hex digits (printf %s SECRET | sha256sum)",
                spec.name
            ))
        })?;
        if spec.roles.is_empty() {
            return Err(invalid(format!(
                "token {:?} has no roles (read, write, admin, replication)",
                spec.name
            )));
        }
        out.push(Token {
            name: spec.name,
            digest,
            roles: spec.roles.into_iter().collect(),
        });
    }
    Ok(out)
}

/// A secret a node or client presents (`Authorization: Bearer …`). Its
/// `Debug` never shows it, so configurations can be logged whole.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap `secret`.
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// The secret itself, to put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Read a secret file (`--peer-token-file`): its first line, trimmed.
    /// Errors name the file; the secret never appears in them.
    pub fn read_file(path: &Path) -> Result<Secret, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
        let secret = text.lines().next().unwrap_or_default().trim().to_string();
        if secret.is_empty() {
            return Err(format!("token file {} is empty", path.display()));
        }
        Ok(Secret(secret))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn spec(name: &str, secret: &str, roles: &str) -> String {
        format!(
            "[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nroles = {roles}\n",
            secret_sha256_hex(secret)
        )
    }

    #[test]
    fn tokens_authenticate_by_secret_and_roles_decide() {
        let f =
            file(&(spec("app", "s1", "[\"read\", \"write\"]") + &spec("ops", "s2", "[\"admin\"]")));
        let a = Authenticator::load(f.path()).unwrap();
        assert_eq!(
            a.authorize(Some("Bearer s1"), Role::Write),
            Ok("app".into())
        );
        assert_eq!(
            a.authorize(Some("bearer  s1 "), Role::Read),
            Ok("app".into())
        );
        assert_eq!(
            a.authorize(Some("Bearer s1"), Role::Admin),
            Err(AuthError::Forbidden {
                token: "app".into(),
                role: Role::Admin
            })
        );
        assert!(matches!(
            a.authorize(Some("Bearer nope"), Role::Read),
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(matches!(
            a.authorize(None, Role::Read),
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(matches!(
            a.authorize(Some("Basic s1"), Role::Read),
            Err(AuthError::Unauthenticated(_))
        ));
        assert_eq!(
            a.authorize(Some("Bearer s2"), Role::Admin),
            Ok("ops".into())
        );
    }

    #[test]
    fn reload_picks_up_changes_and_keeps_old_tokens_on_a_bad_file() {
        let f = file(&spec("app", "s1", "[\"read\"]"));
        let a = Authenticator::load(f.path()).unwrap();
        std::fs::write(f.path(), spec("new", "s9", "[\"read\"]")).unwrap();
        assert_eq!(a.reload().unwrap(), 1);
        assert!(a.authenticate("s1").is_none());
        assert_eq!(a.authenticate("s9").unwrap().0, "new");
        std::fs::write(f.path(), "[[token]]\nname = 1").unwrap();
        assert!(a.reload().is_err());
        assert_eq!(a.authenticate("s9").unwrap().0, "new");
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        for (text, needle) in [
            (
                "[[token]]\nname = \"a\"\nsha256 = \"xyz\"\nroles = [\"read\"]\n",
                "64 hex",
            ),
            (&spec("a", "s", "[]"), "no roles"),
            (
                &(spec("a", "s", "[\"read\"]") + &spec("a", "t", "[\"read\"]")),
                "twice",
            ),
            (&spec("a", "s", "[\"root\"]"), "unknown variant"),
            (
                "[[token]]\nname = \"a\"\nsha256 = \"00\"\nroles = [\"read\"]\nextra = 1\n",
                "unknown field",
            ),
        ] {
            let f = file(text);
            let e = Authenticator::load(f.path()).unwrap_err().to_string();
            assert!(e.contains(needle), "{e:?} should mention {needle:?}");
        }
    }

    #[test]
    fn every_path_has_the_role_it_should() {
        let get = Method::GET;
        let put = Method::PUT;
        let post = Method::POST;
        assert_eq!(access(&get, "/health", false), Access::Open);
        // The API's description holds no data: open like /health.
        assert_eq!(access(&get, "/openapi.json", false), Access::Open);
        assert_eq!(access(&get, "/openapi.json", true), Access::Open);
        assert_eq!(access(&get, "/metrics", true), Access::Open);
        assert_eq!(access(&get, "/dashboard", false), Access::Open);
        assert_eq!(
            access(&get, "/dashboard/events", false),
            Access::Needs(Role::Read)
        );
        assert_eq!(access(&get, "/metrics", false), Access::Needs(Role::Read));
        assert_eq!(access(&get, "/status", false), Access::Needs(Role::Read));
        assert_eq!(access(&get, "/v1/kv/a", false), Access::Needs(Role::Read));
        assert_eq!(access(&put, "/v1/kv/a", false), Access::Needs(Role::Write));
        assert_eq!(access(&post, "/v1/txn", false), Access::Needs(Role::Write));
        assert_eq!(access(&post, "/write", false), Access::Needs(Role::Write));
        assert_eq!(access(&get, "/read", false), Access::Needs(Role::Read));
        assert_eq!(
            access(&post, "/admin/promote", false),
            Access::Needs(Role::Admin)
        );
        assert_eq!(
            access(&get, "/v1/replication", false),
            Access::Needs(Role::Replication)
        );
        assert_eq!(
            access(&post, "/internal/replica", false),
            Access::Needs(Role::Replication)
        );
        assert_eq!(access(&get, "/nope", false), Access::Needs(Role::Read));
    }

    #[test]
    fn secrets_are_never_in_debug_output() {
        let f = file(&spec("app", "topsecret", "[\"read\"]"));
        let a = Authenticator::load(f.path()).unwrap();
        assert!(!format!("{a:?}").contains("topsecret"));
    }
}
