//! Bearer-token authentication for every listener: one [`Authenticator`] per process, checked
//! by an axum layer per route group ([`Authenticator::require`]) and by the gRPC receiver
//! ([`Authenticator::authorize`]).
//!
//! Only SHA-256 digests of the tokens are kept in memory, and a presented token is compared
//! with every digest without an early exit, so neither the comparison's timing nor a memory
//! dump gives a token away. Token files are re-read periodically
//! ([`Authenticator::spawn_reloader`]): a rotated Kubernetes Secret takes effect without a
//! restart, and a file that became unreadable keeps its last token (logged) rather than
//! locking every client out.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use datatracing_config::{AuthConfig, MIN_TOKEN_LEN, Scope};
use datatracing_core::Tenant;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::code::ErrorCode;
use crate::error::ApiError;

/// A token could not be loaded at start.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token file cannot be read.
    #[error("auth.tokens {name:?}: cannot read token file {path}: {source}")]
    ReadFile {
        /// The entry.
        name: String,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The environment variable is not set.
    #[error("auth.tokens {name:?}: environment variable {var} is not set")]
    MissingEnv {
        /// The entry.
        name: String,
        /// The variable.
        var: String,
    },
    /// The token is too short to be safe.
    #[error("auth.tokens {name:?}: the token is shorter than {MIN_TOKEN_LEN} characters")]
    TooShort {
        /// The entry.
        name: String,
    },
    /// The tenant name is not valid.
    #[error("auth.tokens {name:?}: {reason}")]
    BadTenant {
        /// The entry.
        name: String,
        /// Why.
        reason: String,
    },
}

#[derive(Clone, Debug)]
enum Source {
    File(PathBuf),
    Env(String),
}

#[derive(Clone)]
struct Entry {
    name: String,
    scopes: Vec<Scope>,
    tenant: Tenant,
    source: Source,
    digest: [u8; 32],
}

/// Checks bearer tokens against the configured ones. Cheap to clone; disabled (everything
/// allowed) when no token is configured.
#[derive(Clone)]
pub struct Authenticator {
    entries: Arc<RwLock<Arc<Vec<Entry>>>>,
    protect_ops: bool,
    reload_interval: Duration,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: never a token or a digest.
        let names: Vec<String> = self.snapshot().iter().map(|e| e.name.clone()).collect();
        f.debug_struct("Authenticator")
            .field("tokens", &names)
            .field("protect_ops", &self.protect_ops)
            .finish()
    }
}

/// Who a request authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's configured name; `None` when authentication is off.
    pub name: Option<String>,
    /// The tenant the token is bound to; the default tenant when it is bound to none or
    /// authentication is off.
    pub tenant: Tenant,
}

impl Principal {
    /// The caller of a route outside any [`Authenticator::protect`] layer, or of a process
    /// without authentication: the default tenant.
    pub fn anonymous() -> Self {
        Self {
            name: None,
            tenant: Tenant::default_tenant(),
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality of two digests in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn read_token(
    name: &str,
    source: &Source,
    env: &HashMap<String, String>,
) -> Result<String, AuthError> {
    let raw = match source {
        Source::File(path) => std::fs::read_to_string(path).map_err(|e| AuthError::ReadFile {
            name: name.to_string(),
            path: path.display().to_string(),
            source: e,
        })?,
        Source::Env(var) => env.get(var).cloned().ok_or_else(|| AuthError::MissingEnv {
            name: name.to_string(),
            var: var.clone(),
        })?,
    };
    let token = raw.trim().to_string();
    if token.len() < MIN_TOKEN_LEN {
        return Err(AuthError::TooShort {
            name: name.to_string(),
        });
    }
    Ok(token)
}

impl Authenticator {
    /// Authentication off: every request is allowed.
    pub fn disabled() -> Self {
        Self {
            entries: Arc::new(RwLock::new(Arc::new(Vec::new()))),
            protect_ops: false,
            reload_interval: Duration::from_secs(10),
        }
    }

    /// Reads every configured token (files now, variables from `env`). A missing or short
    /// token fails start-up: a server that silently accepted fewer tokens than configured
    /// would lock clients out, or worse, run open.
    pub fn load(config: &AuthConfig, env: &HashMap<String, String>) -> Result<Self, AuthError> {
        let mut entries = Vec::with_capacity(config.tokens.len());
        for t in &config.tokens {
            let source = match (&t.file, &t.env) {
                (Some(f), _) => Source::File(f.clone()),
                (None, Some(v)) => Source::Env(v.clone()),
                // validate() refuses this; treated as an unset variable if it slips through.
                (None, None) => Source::Env(String::new()),
            };
            let token = read_token(&t.name, &source, env)?;
            entries.push(Entry {
                name: t.name.clone(),
                scopes: t.scopes.clone(),
                // validate() checked the name; an invalid one cannot reach here through it,
                // and is refused rather than widened to the default tenant if it does.
                tenant: match &t.tenant {
                    Some(n) => Tenant::parse(n).map_err(|e| AuthError::BadTenant {
                        name: t.name.clone(),
                        reason: e,
                    })?,
                    None => Tenant::default_tenant(),
                },
                digest: digest(&token),
                source,
            });
        }
        if entries.is_empty() {
            tracing::warn!(
                "authentication is off (no auth.tokens): anyone who reaches a port can send and read traces"
            );
        } else {
            tracing::info!(
                tokens = entries.len(),
                protect_ops = config.protect_ops,
                "bearer-token authentication on"
            );
        }
        Ok(Self {
            entries: Arc::new(RwLock::new(Arc::new(entries))),
            protect_ops: config.protect_ops,
            reload_interval: config.reload_interval.get(),
        })
    }

    fn snapshot(&self) -> Arc<Vec<Entry>> {
        match self.entries.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Whether tokens are required at all.
    pub fn enabled(&self) -> bool {
        !self.snapshot().is_empty()
    }

    /// Re-reads the token files; returns how many tokens changed. An unreadable or short
    /// file keeps the previous token and is logged.
    pub fn reload(&self) -> usize {
        let current = self.snapshot();
        let mut next = (*current).clone();
        let mut changed = 0;
        for e in next.iter_mut() {
            if let Source::File(_) = e.source {
                match read_token(&e.name, &e.source, &HashMap::new()) {
                    Ok(token) => {
                        let d = digest(&token);
                        if !same(&d, &e.digest) {
                            e.digest = d;
                            changed += 1;
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "keeping the previous token");
                    }
                }
            }
        }
        if changed > 0 {
            tracing::info!(changed, "token files reloaded");
            match self.entries.write() {
                Ok(mut g) => *g = Arc::new(next),
                Err(p) => *p.into_inner() = Arc::new(next),
            }
        }
        changed
    }

    /// Re-reads token files every `auth.reload_interval` until `shutdown`.
    pub fn spawn_reloader(&self, shutdown: CancellationToken) {
        if !self
            .snapshot()
            .iter()
            .any(|e| matches!(e.source, Source::File(_)))
        {
            return;
        }
        let this = self.clone();
        crate::reload::every(self.reload_interval, shutdown, move || {
            this.reload();
        });
    }

    /// Checks an `Authorization` header (or gRPC `authorization` metadata) value for `scope`
    /// (`None`: any valid token).
    /// Errors are envelope-ready: 401 for a missing, malformed or unknown token, 403 for a
    /// valid one without the scope.
    pub fn authorize(
        &self,
        authorization: Option<&str>,
        scope: Option<Scope>,
    ) -> Result<Principal, ApiError> {
        let entries = self.snapshot();
        if entries.is_empty() {
            return Ok(Principal::anonymous());
        }
        let token = authorization
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unauthenticated,
                    "a bearer token is required (Authorization: Bearer <token>)",
                )
            })?;
        let d = digest(token);
        // Every entry is compared, match or not, so timing does not tell which one matched.
        let mut found: Option<&Entry> = None;
        for e in entries.iter() {
            if same(&d, &e.digest) && found.is_none() {
                found = Some(e);
            }
        }
        let Some(e) = found else {
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "the bearer token is not valid",
            ));
        };
        if let Some(s) = scope
            && !e.scopes.contains(&s)
        {
            return Err(ApiError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "the token {:?} lacks the {:?} scope this route needs",
                    e.name,
                    s.as_str()
                ),
            ));
        }
        Ok(Principal {
            name: Some(e.name.clone()),
            tenant: e.tenant.clone(),
        })
    }

    /// The ops routes (`/metrics`, `/healthz`, `/readyz`), requiring any valid token when
    /// `auth.protect_ops` is set and open otherwise.
    pub fn ops(&self, ops: axum::Router) -> axum::Router {
        if self.protect_ops {
            self.protect(ops, None)
        } else {
            ops
        }
    }

    /// `router` with every route requiring `scope` (`None`: any valid token). Routes merged
    /// into the result later are not covered, so each group is protected on its own.
    pub fn protect(&self, router: axum::Router, scope: Option<Scope>) -> axum::Router {
        router.layer(axum::middleware::from_fn_with_state(
            (self.clone(), scope),
            require_scope,
        ))
    }
}

async fn require_scope(
    State((auth, scope)): State<(Authenticator, Option<Scope>)>,
    mut req: Request,
    next: Next,
) -> Response {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth.authorize(value, scope) {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(e) => challenge(e),
    }
}

/// The error response, with `WWW-Authenticate` on a 401 as RFC 6750 asks.
fn challenge(e: ApiError) -> Response {
    let unauthenticated = e.code == ErrorCode::Unauthenticated;
    let mut resp = e.into_response();
    if unauthenticated {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"datatracing\""),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use datatracing_config::TokenConfig;

    const INGEST: &str = "ingest-token-0123456789";
    const READ: &str = "query-token-0123456789";

    fn auth(dir: &std::path::Path) -> Authenticator {
        std::fs::write(dir.join("ingest"), format!("{INGEST}\n")).unwrap();
        let config = AuthConfig {
            tokens: vec![
                TokenConfig {
                    name: "pipelines".into(),
                    scopes: vec![Scope::Ingest],
                    file: Some(dir.join("ingest")),
                    env: None,
                    tenant: None,
                },
                TokenConfig {
                    name: "grafana".into(),
                    scopes: vec![Scope::Query, Scope::Admin],
                    file: None,
                    env: Some("READ_TOKEN".into()),
                    tenant: None,
                },
            ],
            ..AuthConfig::default()
        };
        let env = HashMap::from([("READ_TOKEN".to_string(), READ.to_string())]);
        Authenticator::load(&config, &env).unwrap()
    }

    fn code(r: Result<Principal, ApiError>) -> Option<ErrorCode> {
        r.err().map(|e| e.code)
    }

    #[test]
    fn scopes_and_schemes() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth(dir.path());
        let bearer = |t: &str| format!("Bearer {t}");
        let ok = a
            .authorize(Some(&bearer(INGEST)), Some(Scope::Ingest))
            .unwrap();
        assert_eq!(
            ok.name.as_deref(),
            Some("pipelines"),
            "file token, whitespace trimmed"
        );
        assert_eq!(
            a.authorize(Some(&format!("bearer  {READ}")), Some(Scope::Admin))
                .unwrap()
                .name
                .as_deref(),
            Some("grafana"),
            "scheme is case-insensitive, env token"
        );
        let denied = Some(ErrorCode::PermissionDenied);
        assert_eq!(
            code(a.authorize(Some(&bearer(READ)), Some(Scope::Ingest))),
            denied
        );
        assert_eq!(
            code(a.authorize(Some(&bearer(INGEST)), Some(Scope::Query))),
            denied
        );
        let unauth = Some(ErrorCode::Unauthenticated);
        for bad in [
            None,
            Some(String::new()),
            Some(INGEST.to_string()),
            Some(format!("Basic {INGEST}")),
            Some("Bearer ".to_string()),
            Some(bearer("ingest-token-012345678")),
            Some(bearer(&format!("{INGEST}x"))),
        ] {
            assert_eq!(
                code(a.authorize(bad.as_deref(), Some(Scope::Ingest))),
                unauth,
                "{bad:?}"
            );
        }
        assert!(
            a.authorize(Some(&bearer(INGEST)), None).is_ok(),
            "any scope"
        );
        let dbg = format!("{a:?}");
        assert!(!dbg.contains(INGEST) && !dbg.contains(READ), "{dbg}");
    }

    #[test]
    fn a_token_carries_its_tenant() {
        let one = |tenant: Option<&str>| AuthConfig {
            tokens: vec![TokenConfig {
                name: "team".into(),
                scopes: vec![Scope::Query],
                file: None,
                env: Some("T".into()),
                tenant: tenant.map(str::to_string),
            }],
            ..AuthConfig::default()
        };
        let env = HashMap::from([("T".to_string(), READ.to_string())]);
        let bearer = format!("Bearer {READ}");
        let a = Authenticator::load(&one(Some("team-a")), &env).unwrap();
        let p = a.authorize(Some(&bearer), Some(Scope::Query)).unwrap();
        assert_eq!(p.tenant.as_str(), "team-a");
        let a = Authenticator::load(&one(None), &env).unwrap();
        let p = a.authorize(Some(&bearer), Some(Scope::Query)).unwrap();
        assert!(p.tenant.is_default(), "no tenant: the default one");
        for bad in ["Team-A", "a_b", ""] {
            assert!(one(Some(bad)).validate().is_err(), "{bad:?}");
            assert!(
                matches!(
                    Authenticator::load(&one(Some(bad)), &env),
                    Err(AuthError::BadTenant { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(
            Authenticator::disabled()
                .authorize(None, None)
                .unwrap()
                .tenant
                .is_default()
        );
    }

    #[test]
    fn disabled_allows_everything() {
        let a = Authenticator::disabled();
        assert!(!a.enabled());
        assert_eq!(a.authorize(None, Some(Scope::Admin)).unwrap().name, None);
    }

    #[test]
    fn rotated_file_takes_over_and_a_broken_one_keeps_the_last_token() {
        let dir = tempfile::tempdir().unwrap();
        let a = auth(dir.path());
        let new = "rotated-ingest-token-42";
        std::fs::write(dir.path().join("ingest"), new).unwrap();
        assert_eq!(a.reload(), 1);
        assert!(
            a.authorize(Some(&format!("Bearer {new}")), Some(Scope::Ingest))
                .is_ok()
        );
        assert_eq!(
            code(a.authorize(Some(&format!("Bearer {INGEST}")), Some(Scope::Ingest))),
            Some(ErrorCode::Unauthenticated),
            "the old token stops working"
        );
        assert_eq!(a.reload(), 0, "unchanged file");
        std::fs::write(dir.path().join("ingest"), "short").unwrap();
        assert_eq!(a.reload(), 0);
        std::fs::remove_file(dir.path().join("ingest")).unwrap();
        assert_eq!(a.reload(), 0);
        assert!(
            a.authorize(Some(&format!("Bearer {new}")), Some(Scope::Ingest))
                .is_ok()
        );
    }

    #[test]
    fn start_up_fails_on_a_missing_or_short_token() {
        let dir = tempfile::tempdir().unwrap();
        let one = |file: Option<PathBuf>, env: Option<&str>| AuthConfig {
            tokens: vec![TokenConfig {
                name: "t".into(),
                scopes: vec![Scope::Query],
                file,
                env: env.map(str::to_string),
                tenant: None,
            }],
            ..AuthConfig::default()
        };
        let err = Authenticator::load(&one(Some(dir.path().join("none")), None), &HashMap::new())
            .unwrap_err();
        assert!(matches!(err, AuthError::ReadFile { .. }), "{err}");
        let err = Authenticator::load(&one(None, Some("UNSET")), &HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("UNSET is not set"), "{err}");
        let env = HashMap::from([("SHORT".to_string(), "abc".to_string())]);
        let err = Authenticator::load(&one(None, Some("SHORT")), &env).unwrap_err();
        assert!(matches!(err, AuthError::TooShort { .. }), "{err}");
        assert!(
            !err.to_string().contains("abc"),
            "the token is never in a message"
        );
    }

    #[test]
    fn digest_comparison_checks_every_byte() {
        let a = digest("a-token-of-some-length");
        let mut b = a;
        assert!(same(&a, &b));
        for i in [0, 15, 31] {
            b = a;
            b[i] ^= 1;
            assert!(!same(&a, &b), "byte {i}");
        }
    }
}
