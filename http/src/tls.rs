//! TLS for every listener (rustls with the `ring` provider): [`TlsAcceptor`] loads a
//! [`TlsConfig`]'s certificate, key and optional client CA, checks that the key belongs to
//! the certificate, and performs each connection's handshake with whatever set is current.
//!
//! The files are re-read every `reload_interval` ([`TlsAcceptor::spawn_reloader`]) and
//! compared by digest: a changed set that loads cleanly serves the next handshakes (open
//! connections keep theirs), a broken one (a key that does not match, half-written PEM) is
//! logged, counted in `datatracing_tls_reloads_total{result="error"}`, and the previous set
//! kept, so a bad rotation never takes a listener down. Only paths ever reach logs and
//! errors, never key material.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use datatracing_config::{ClientAuth, TlsConfig};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// A TLS configuration that cannot be served. Messages name the setting and the file, never
/// their content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("{setting} {path}: cannot read: {source}")]
    Read {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{setting} {path}: {problem}")]
    Pem {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The private key does not belong to the certificate.
    #[error(
        "the private key in {key} does not match the certificate in {cert} (is one of them from another certificate?)"
    )]
    KeyMismatch {
        /// The key file.
        key: String,
        /// The certificate file.
        cert: String,
    },
    /// rustls refused the set for another reason.
    #[error("TLS set-up from {cert}: {message}")]
    Rejected {
        /// The certificate file.
        cert: String,
        /// rustls' reason.
        message: String,
    },
}

/// Which application protocol a listener speaks, announced by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/1.1 (the HTTP ingest and query listeners).
    Http1,
    /// HTTP/2 (gRPC: its clients insist on `h2`).
    H2,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::H2 => vec![b"h2".to_vec()],
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    listener: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

/// TLS counters, per listener (bounded: the process's listener names).
#[derive(Clone, Debug, Default)]
pub struct TlsMetrics {
    reloads: Family<ReloadLabels, Counter>,
    handshake_failures: Family<ListenerLabel, Counter>,
}

impl TlsMetrics {
    /// Registers `datatracing_tls_reloads_total{listener,result}` (a changed certificate
    /// set loaded, `ok`, or refused and the previous one kept, `error`) and
    /// `datatracing_tls_handshake_failures_total{listener}`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "datatracing_tls_reloads",
            "Changed TLS certificate files loaded (ok) or refused, the previous set kept (error)",
            m.reloads.clone(),
        );
        registry.register(
            "datatracing_tls_handshake_failures",
            "TLS handshakes that failed (no or bad client certificate, plain HTTP on a TLS port, timeouts)",
            m.handshake_failures.clone(),
        );
        m
    }
}

struct Inner {
    listener: &'static str,
    config: TlsConfig,
    alpn: Alpn,
    current: RwLock<Arc<ServerConfig>>,
    /// Digest of the files the current set came from, or of the last refused ones (so a
    /// broken set is reported once, not at every poll).
    seen: Mutex<[u8; 32]>,
    metrics: TlsMetrics,
}

/// Performs TLS handshakes for one listener with the current certificate set. Cheap to
/// clone.
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("listener", &self.inner.listener)
            .field("cert_file", &self.inner.config.cert_file)
            .field("client_auth", &self.inner.config.client_auth())
            .finish_non_exhaustive()
    }
}

/// The raw bytes of the configured files.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
}

impl Files {
    fn read(config: &TlsConfig) -> Result<Self, TlsError> {
        Ok(Self {
            cert: read_file("cert_file", &config.cert_file)?,
            key: read_file("key_file", &config.key_file)?,
            ca: config
                .client_ca_file
                .as_deref()
                .map(|p| read_file("client_ca_file", p))
                .transpose()?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        digest_of(&[Some(&self.cert), Some(&self.key), self.ca.as_ref()])
    }
}

/// The bytes of the file a TLS setting names; the error names the setting and the path.
pub(crate) fn read_file(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        setting,
        path: shown(path),
        source,
    })
}

/// One digest of a set of files (absent ones included as empty), to tell whether any of
/// them changed since the last read.
pub(crate) fn digest_of(parts: &[Option<&Vec<u8>>]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        let part = part.map_or(&[][..], Vec::as_slice);
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

pub(crate) fn shown(p: &Path) -> String {
    p.display().to_string()
}

/// The certificates of a PEM file, in order; an error when it has none.
pub(crate) fn certificates(
    setting: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            setting,
            path: shown(path),
            problem: format!("not valid PEM ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            setting,
            path: shown(path),
            problem: "holds no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

fn build(config: &TlsConfig, alpn: Alpn, files: &Files) -> Result<ServerConfig, TlsError> {
    let cert_path = shown(&config.cert_file);
    let rejected = |e: rustls::Error| TlsError::Rejected {
        cert: cert_path.clone(),
        message: e.to_string(),
    };
    let chain = certificates("cert_file", &config.cert_file, &files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| TlsError::Pem {
        setting: "key_file",
        path: shown(&config.key_file),
        problem: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no PRIVATE KEY block (PKCS#8, RSA or EC)".into()
            }
            // The error names a position or a section kind, never key bytes.
            other => format!("not a valid private key ({other})"),
        },
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(rejected)?;
    let builder = match (&config.client_ca_file, &files.ca) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates("client_ca_file", path, pem)? {
                roots.add(ca).map_err(|e| TlsError::Pem {
                    setting: "client_ca_file",
                    path: shown(path),
                    problem: format!("not a usable CA certificate ({e})"),
                })?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let verifier = match config.client_auth() {
                Some(ClientAuth::Optional) => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError::Pem {
                setting: "client_ca_file",
                path: shown(path),
                problem: e.to_string(),
            })?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            key: shown(&config.key_file),
            cert: cert_path.clone(),
        },
        other => rejected(other),
    })?;
    server.alpn_protocols = alpn.protocols();
    Ok(server)
}

impl TlsAcceptor {
    /// Reads and checks the files now (a start-up error names the setting and the file),
    /// for `listener` (its name in logs and metrics) speaking `alpn`.
    pub fn load(
        config: &TlsConfig,
        listener: &'static str,
        alpn: Alpn,
        metrics: TlsMetrics,
    ) -> Result<Self, TlsError> {
        let files = Files::read(config)?;
        let server = build(config, alpn, &files)?;
        tracing::info!(
            listener,
            cert_file = %config.cert_file.display(),
            client_auth = ?config.client_auth(),
            "TLS on"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                listener,
                config: config.clone(),
                alpn,
                current: RwLock::new(Arc::new(server)),
                seen: Mutex::new(files.digest()),
                metrics,
            }),
        })
    }

    /// The listener's name.
    pub fn listener(&self) -> &'static str {
        self.inner.listener
    }

    /// The certificate file served.
    pub fn cert_file(&self) -> &PathBuf {
        &self.inner.config.cert_file
    }

    fn current(&self) -> Arc<ServerConfig> {
        match self.inner.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Re-reads the files: `Ok(true)` when a changed set was loaded, `Ok(false)` when
    /// nothing changed (or the change was already refused), `Err` when a changed set was
    /// refused (logged and counted; the previous set stays).
    pub fn reload(&self) -> Result<bool, TlsError> {
        let inner = &self.inner;
        let failed = |e: TlsError| {
            inner
                .metrics
                .reloads
                .get_or_create(&ReloadLabels {
                    listener: inner.listener,
                    result: "error",
                })
                .inc();
            tracing::error!(listener = inner.listener, error = %e, "TLS files changed but cannot be loaded; keeping the previous certificate");
            e
        };
        let files = Files::read(&inner.config).map_err(failed)?;
        let digest = files.digest();
        {
            let mut seen = inner.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == digest {
                return Ok(false);
            }
            *seen = digest;
        }
        let server = build(&inner.config, inner.alpn, &files).map_err(failed)?;
        match inner.current.write() {
            Ok(mut g) => *g = Arc::new(server),
            Err(p) => *p.into_inner() = Arc::new(server),
        }
        inner
            .metrics
            .reloads
            .get_or_create(&ReloadLabels {
                listener: inner.listener,
                result: "ok",
            })
            .inc();
        tracing::info!(listener = inner.listener, cert_file = %inner.config.cert_file.display(), "TLS certificate reloaded");
        Ok(true)
    }

    /// Re-reads the files every `reload_interval` until `shutdown`.
    pub fn spawn_reloader(&self, shutdown: CancellationToken) {
        let this = self.clone();
        let interval = self.inner.config.reload_interval.get();
        crate::reload::every(interval, shutdown, move || {
            let _ = this.reload();
        });
    }

    /// The server side of a handshake on `io` with the current set, within `timeout`.
    /// Failures are counted and returned (the caller drops the connection).
    pub async fn handshake<IO>(
        &self,
        io: IO,
        timeout: Duration,
    ) -> io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current());
        let result = match tokio::time::timeout(timeout, acceptor.accept(io)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake not finished within connections.header_read_timeout",
            )),
        };
        if let Err(e) = &result {
            self.inner
                .metrics
                .handshake_failures
                .get_or_create(&ListenerLabel {
                    listener: self.inner.listener,
                })
                .inc();
            // Scanners and clients without a certificate are routine: not a server error.
            tracing::debug!(listener = self.inner.listener, error = %e, "TLS handshake failed");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use datatracing_testkit::tls::Pki;

    fn load(t: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
        TlsAcceptor::load(t, "test", Alpn::Http1, TlsMetrics::default())
    }

    #[test]
    fn start_up_errors_name_the_setting_and_file_never_the_key() {
        let pki = Pki::new("unit");
        let a = pki.server("a", "a");
        let b = pki.server("b", "b");
        load(&TlsConfig::new(&a.cert, &a.key)).unwrap();

        let missing = pki.dir().join("missing.crt");
        let e = load(&TlsConfig::new(&missing, &a.key))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cert_file ") && e.contains("missing.crt"),
            "{e}"
        );

        let e = load(&TlsConfig::new(&a.cert, &b.key)).unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
        assert!(e.to_string().contains("b.key"), "{e}");

        let e = load(&TlsConfig::new(&a.cert, &a.cert))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key_file") && e.contains("no PRIVATE KEY"),
            "{e}"
        );
        let e = load(&TlsConfig::new(&a.key, &a.key))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cert_file") && e.contains("no CERTIFICATE"),
            "{e}"
        );
        let key_text = std::fs::read_to_string(&a.key).unwrap();
        let body = key_text.lines().nth(1).unwrap();
        assert!(!e.contains(body), "key material in an error: {e}");

        let e = load(&TlsConfig {
            client_ca_file: Some(a.key.clone()),
            ..TlsConfig::new(&a.cert, &a.key)
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("client_ca_file "), "{e}");
    }

    #[test]
    fn reload_swaps_only_a_changed_set_that_loads() {
        let pki = Pki::new("reload");
        let a = pki.server("a", "a");
        let b = pki.server("b", "b");
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::copy(&a.cert, &cert).unwrap();
        std::fs::copy(&a.key, &key).unwrap();
        let mut registry = Registry::default();
        let metrics = TlsMetrics::register(&mut registry);
        let t = TlsAcceptor::load(&TlsConfig::new(&cert, &key), "l", Alpn::H2, metrics).unwrap();
        let before = t.current();
        assert!(!t.reload().unwrap(), "nothing changed");
        std::fs::copy(&b.cert, &cert).unwrap();
        assert!(t.reload().is_err(), "new certificate, old key");
        assert!(!t.reload().unwrap(), "a refused set is reported once");
        assert!(Arc::ptr_eq(&before, &t.current()), "the old set is kept");
        std::fs::copy(&b.key, &key).unwrap();
        assert!(t.reload().unwrap());
        assert!(!Arc::ptr_eq(&before, &t.current()));
        assert_eq!(t.current().alpn_protocols, vec![b"h2".to_vec()]);
        std::fs::remove_file(&key).unwrap();
        assert!(t.reload().is_err(), "an unreadable file keeps the set");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"datatracing_tls_reloads_total{listener="l",result="error"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"datatracing_tls_reloads_total{listener="l",result="ok"} 1"#),
            "{text}"
        );
    }
}
