//! The HTTP(S) connection under the `clickhouse` crate's client: plain HTTP for `http://`
//! URLs, TLS (rustls with `ring`) for `https://` ones, verifying the server's certificate
//! against `storage.clickhouse.ca_file` when set, else against the system's trust store.
//! A certificate that does not verify fails as [`Error::Tls`], which is not retried.

use std::sync::Arc;
use std::time::Duration;

use datatracing_config::ClickHouseConfig;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::error::{Error, Result};

/// The connector every client of one configuration shares.
pub(crate) type Connector = HttpsConnector<HttpConnector>;

/// Idle pooled connections are closed before ClickHouse's own keep-alive timeout (3 s on
/// older servers) closes them under a request.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

fn roots(config: &ClickHouseConfig, ca_pem: Option<&[u8]>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    if !config.url.starts_with("https://") {
        return Ok(roots);
    }
    let certs: Vec<CertificateDer<'static>> = match (ca_pem, &config.ca_file) {
        (Some(pem), _) => CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Tls(format!("the ClickHouse CA: not valid PEM ({e})")))?,
        (None, Some(path)) => {
            let at = || format!("storage.clickhouse.ca_file {}", path.display());
            let pem = std::fs::read(path).map_err(|e| Error::Tls(format!("{}: {e}", at())))?;
            CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| Error::Tls(format!("{}: not valid PEM ({e})", at())))?
        }
        (None, None) => rustls_native_certs::load_native_certs().certs,
    };
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::Tls(match (ca_pem, &config.ca_file) {
            (Some(_), _) => "the ClickHouse CA holds no usable CA certificate".into(),
            (None, Some(p)) => format!(
                "storage.clickhouse.ca_file {} holds no usable CA certificate",
                p.display()
            ),
            (None, None) => {
                "no CA certificates in the system trust store; set storage.clickhouse.ca_file"
                    .into()
            }
        }));
    }
    Ok(roots)
}

/// The connector for `config`'s URL, trusting `ca_pem` if given, else `ca_file` (read
/// now), else the system's trust store.
pub(crate) fn connector(config: &ClickHouseConfig, ca_pem: Option<&[u8]>) -> Result<Connector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots(config, ca_pem)?)
        .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    tcp.set_keepalive(Some(TCP_KEEPALIVE));
    // The TLS layer takes https:// URLs; the TCP connector must let them through.
    tcp.enforce_http(false);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp))
}

/// A `clickhouse` client over `connector`.
pub(crate) fn client(connector: &Connector) -> clickhouse::Client {
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector.clone());
    clickhouse::Client::with_http_client(http)
}

/// The rustls error somewhere in a connection error's chain, if the failure was TLS's.
pub(crate) fn tls_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r.to_string());
        }
        // An I/O error's `source` skips the error it wraps (the TLS layer's): step into it.
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// A connection error with every cause, so "client error (Connect)" says why.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let next = err.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cur = err.source();
    }
    text
}
