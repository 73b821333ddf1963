//! TLS for the client side of the collectors' peer link (`collector.peers.tls`), with the
//! same rustls stack (`ring` provider) as the listeners: [`ClientTls`] loads the CA that
//! signs the peers' certificates and an optional client certificate (mutual TLS), and runs
//! each new connection's handshake with whatever set is current.
//!
//! Like the server side ([`crate::TlsAcceptor`]), the files are re-read every
//! `reload_interval` and compared by digest: a changed set that loads cleanly is used for
//! the next connections (open ones keep theirs), a broken one is logged and the previous set
//! kept. Only paths reach logs and errors, never key material.

use std::io;
use std::sync::{Arc, Mutex, RwLock};

use datatracing_config::PeerTlsConfig;
use rustls::RootCertStore;
use rustls::client::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::tls::{TlsError, certificates, digest_of, read_file, shown};

/// The stream of a client connection after its handshake.
pub type ClientTlsStream<IO> = tokio_rustls::client::TlsStream<IO>;

struct Files {
    ca: Vec<u8>,
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
}

impl Files {
    fn read(config: &PeerTlsConfig) -> Result<Self, TlsError> {
        Ok(Self {
            ca: read_file("ca_file", &config.ca_file)?,
            cert: config
                .cert_file
                .as_deref()
                .map(|p| read_file("cert_file", p))
                .transpose()?,
            key: config
                .key_file
                .as_deref()
                .map(|p| read_file("key_file", p))
                .transpose()?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        digest_of(&[Some(&self.ca), self.cert.as_ref(), self.key.as_ref()])
    }
}

fn build(config: &PeerTlsConfig, files: &Files) -> Result<ClientConfig, TlsError> {
    let ca_path = shown(&config.ca_file);
    let rejected = |e: rustls::Error| TlsError::Rejected {
        cert: ca_path.clone(),
        message: e.to_string(),
    };
    let mut roots = RootCertStore::empty();
    for ca in certificates("ca_file", &config.ca_file, &files.ca)? {
        roots.add(ca).map_err(|e| TlsError::Pem {
            setting: "ca_file",
            path: ca_path.clone(),
            problem: format!("not a usable CA certificate ({e})"),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_root_certificates(roots);
    let mut client = match (&config.cert_file, &config.key_file, &files.cert, &files.key) {
        (Some(cert_path), Some(key_path), Some(cert), Some(key)) => {
            let chain = certificates("cert_file", cert_path, cert)?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Pem {
                setting: "key_file",
                path: shown(key_path),
                problem: match e {
                    rustls::pki_types::pem::Error::NoItemsFound => {
                        "holds no PRIVATE KEY block (PKCS#8, RSA or EC)".into()
                    }
                    // The error names a position or a section kind, never key bytes.
                    other => format!("not a valid private key ({other})"),
                },
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                        key: shown(key_path),
                        cert: shown(cert_path),
                    },
                    other => TlsError::Rejected {
                        cert: shown(cert_path),
                        message: other.to_string(),
                    },
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    // The peers' listener is gRPC: HTTP/2 only.
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(client)
}

struct Inner {
    config: PeerTlsConfig,
    current: RwLock<Arc<ClientConfig>>,
    /// Digest of the files the current set came from, or of the last refused ones.
    seen: Mutex<[u8; 32]>,
}

/// Performs the client side of TLS handshakes with the current CA and client certificate.
/// Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_file", &self.inner.config.ca_file)
            .field("cert_file", &self.inner.config.cert_file)
            .field("server_name", &self.inner.config.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads and checks the files now (an error names the setting and the file).
    pub fn load(config: &PeerTlsConfig) -> Result<Self, TlsError> {
        let files = Files::read(config)?;
        let client = build(config, &files)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                current: RwLock::new(Arc::new(client)),
                seen: Mutex::new(files.digest()),
            }),
        })
    }

    /// The configuration it was loaded from.
    pub fn config(&self) -> &PeerTlsConfig {
        &self.inner.config
    }

    /// The name `peer` (`host:port`) must prove in its certificate: `server_name` when set,
    /// else the peer's host (an IP address is checked against IP SANs).
    pub fn server_name(&self, peer: &str) -> Result<ServerName<'static>, String> {
        let host = match &self.inner.config.server_name {
            Some(n) => n.as_str(),
            None => {
                let host = peer.rsplit_once(':').map_or(peer, |(h, _)| h);
                host.strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host)
            }
        };
        ServerName::try_from(host.to_string())
            .map_err(|e| format!("`{host}` cannot be checked in a certificate: {e}"))
    }

    fn current(&self) -> Arc<ClientConfig> {
        match self.inner.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Re-reads the files: `Ok(true)` when a changed set was loaded, `Ok(false)` when
    /// nothing changed (or the change was already refused), `Err` when a changed set was
    /// refused (logged; the previous set stays).
    pub fn reload(&self) -> Result<bool, TlsError> {
        let inner = &self.inner;
        let failed = |e: TlsError| {
            tracing::error!(error = %e, "collector.peers.tls files changed but cannot be loaded; keeping the previous set");
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
        let client = build(&inner.config, &files).map_err(failed)?;
        match inner.current.write() {
            Ok(mut g) => *g = Arc::new(client),
            Err(p) => *p.into_inner() = Arc::new(client),
        }
        tracing::info!(ca_file = %inner.config.ca_file.display(), "collector.peers.tls reloaded");
        Ok(true)
    }

    /// Re-reads the files every `reload_interval` until `shutdown`; `observe` sees each
    /// result (for metrics).
    pub fn spawn_reloader(
        &self,
        shutdown: CancellationToken,
        observe: impl Fn(&Result<bool, TlsError>) + Clone + Send + Sync + 'static,
    ) {
        let this = self.clone();
        let interval = self.inner.config.reload_interval.get();
        crate::reload::every(interval, shutdown, move || observe(&this.reload()));
    }

    /// The client side of a handshake on `io` with the current set, verifying `name`.
    pub async fn connect<IO>(
        &self,
        io: IO,
        name: ServerName<'static>,
    ) -> io::Result<ClientTlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        tokio_rustls::TlsConnector::from(self.current())
            .connect(name, io)
            .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::{Alpn, TlsAcceptor, TlsMetrics};
    use datatracing_config::TlsConfig;
    use datatracing_testkit::tls::Pki;
    use std::time::Duration;

    #[test]
    fn start_up_errors_name_the_setting_and_file() {
        let pki = Pki::new("unit");
        let client = pki.client("c", "peer");
        let other = pki.client("o", "other");
        ClientTls::load(&PeerTlsConfig::new(&pki.ca.cert)).unwrap();
        let e = ClientTls::load(&PeerTlsConfig::new(pki.dir().join("nope.crt")))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("ca_file ") && e.contains("nope.crt"), "{e}");
        let e = ClientTls::load(&PeerTlsConfig::new(&client.key))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        let e = ClientTls::load(&PeerTlsConfig {
            cert_file: Some(client.cert.clone()),
            key_file: Some(other.key.clone()),
            ..PeerTlsConfig::new(&pki.ca.cert)
        })
        .unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
        let key_text = std::fs::read_to_string(&other.key).unwrap();
        let body = key_text.lines().nth(1).unwrap();
        assert!(!e.to_string().contains(body), "key material in an error");
    }

    #[test]
    fn server_name_is_the_peer_host_unless_configured() {
        let pki = Pki::new("names");
        let t = ClientTls::load(&PeerTlsConfig::new(&pki.ca.cert)).unwrap();
        assert_eq!(
            t.server_name("10.0.0.7:4317").unwrap(),
            ServerName::try_from("10.0.0.7").unwrap()
        );
        assert_eq!(
            t.server_name("[::1]:4317").unwrap(),
            ServerName::try_from("::1").unwrap()
        );
        assert_eq!(
            t.server_name("dt-0.dt:4317").unwrap(),
            ServerName::try_from("dt-0.dt").unwrap()
        );
        let named = ClientTls::load(&PeerTlsConfig {
            server_name: Some("dt-collector.tracing.svc".into()),
            ..PeerTlsConfig::new(&pki.ca.cert)
        })
        .unwrap();
        assert_eq!(
            named.server_name("10.0.0.7:4317").unwrap(),
            ServerName::try_from("dt-collector.tracing.svc").unwrap()
        );
    }

    /// Real handshakes over loopback against the listener's acceptor: the right CA and a
    /// client certificate pass mutual TLS; another CA fails on the client; a name the
    /// certificate does not hold fails; a rotated CA file is used for the next handshake.
    #[tokio::test]
    async fn handshakes_with_the_listener_and_reloads() {
        let pki = Pki::new("hs");
        let other = Pki::new("other");
        let server = pki.server("s", "server");
        let client = pki.client("c", "peer");
        let acceptor = TlsAcceptor::load(
            &TlsConfig {
                client_ca_file: Some(pki.ca.cert.clone()),
                ..TlsConfig::new(&server.cert, &server.key)
            },
            "test",
            Alpn::H2,
            TlsMetrics::default(),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let a = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = a.handshake(s, Duration::from_secs(5)).await {
                        use tokio::io::AsyncWriteExt;
                        let _ = tls.write_all(b"ok").await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::copy(&pki.ca.cert, &ca).unwrap();
        let config = PeerTlsConfig {
            cert_file: Some(client.cert.clone()),
            key_file: Some(client.key.clone()),
            ..PeerTlsConfig::new(&ca)
        };
        let t = ClientTls::load(&config).unwrap();
        let peer = addr.to_string();
        let dial = |t: ClientTls, name: ServerName<'static>| async move {
            use tokio::io::AsyncReadExt;
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut s = t.connect(tcp, name).await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            io::Result::Ok(buf)
        };
        assert_eq!(
            dial(t.clone(), t.server_name(&peer).unwrap())
                .await
                .unwrap(),
            b"ok"
        );
        let e = dial(
            t.clone(),
            ServerName::try_from("elsewhere.example").unwrap(),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("certificate"), "{e}");
        // Rotated to a CA that did not sign the server: the next handshake refuses it.
        std::fs::copy(&other.ca.cert, &ca).unwrap();
        assert!(t.reload().unwrap());
        assert!(!t.reload().unwrap(), "nothing changed since");
        let e = dial(t.clone(), t.server_name(&peer).unwrap())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
        // A broken file keeps the set in force.
        std::fs::write(&ca, "not pem").unwrap();
        assert!(t.reload().is_err());
        // Without a client certificate, the listener (client_auth: required) refuses.
        let anonymous = ClientTls::load(&PeerTlsConfig::new(&pki.ca.cert)).unwrap();
        assert!(
            dial(anonymous.clone(), anonymous.server_name(&peer).unwrap())
                .await
                .is_err()
        );
    }
}
