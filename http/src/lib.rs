//! HTTP plumbing shared by every DataTracing server.
//!
//! - [`ApiError`]: the one error envelope, `{"error":{"code","message","details"}}`, and the
//!   only place errors turn into responses; [`ErrorCode`] maps each code to its HTTP status
//!   and gRPC code in one table.
//! - [`ops_routes`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`finish_router`]: the layers every server gets: envelope fallbacks for unknown routes and
//!   wrong methods, a request timeout, panic containment and request metrics.
//! - [`Authenticator`]: bearer tokens with scopes, for every listener.
//! - [`serve`] / [`serve_with`]: serving with graceful, bounded draining on a cancellation
//!   token, within [`ConnectionLimits`] (`conn`: connection cap, header and idle timeouts,
//!   keep-alive limit; [`conn::incoming`] gives gRPC servers the same limits).
//! - [`TlsAcceptor`]: TLS (rustls) on any of those listeners, optional client certificates,
//!   certificate files reloaded on change.

mod auth;
mod code;
pub mod conn;
mod error;
mod ops;
mod reload;
mod serve;
mod tls;
mod tls_client;

pub use auth::{AuthError, Authenticator, Principal};
pub use code::ErrorCode;
pub use datatracing_config::ConnectionLimits;
pub use error::{ApiError, ErrorDetail};
pub use ops::{Buffer, HttpMetrics, Readiness, ops_routes};
pub use rustls::pki_types::ServerName as TlsServerName;
pub use serve::{ServeError, finish_router, serve, serve_with};
pub use tls::{Alpn, TlsAcceptor, TlsError, TlsMetrics};
pub use tls_client::{ClientTls, ClientTlsStream};
