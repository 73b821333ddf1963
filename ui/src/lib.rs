//! The DAG explorer: a web UI for pipeline traces, served by the query service at `/` and
//! `/ui/...`. The pages are plain ES modules with no build step (`assets/`), embedded in
//! the binary at compile time, so the UI works with no network access. They read only the
//! public v1 query API.
//!
//! - `GET /`, `GET /ui`, `GET /ui/{page...}`: `index.html` (the pages route on the client),
//!   `Cache-Control: no-cache`.
//! - `GET /ui/assets/{version}/{file}`: an asset. `version` is a hash of every asset, so
//!   asset URLs change whenever any asset does and may be cached for a year (`immutable`);
//!   another version is a 404.
//!
//! Every answer carries a strict Content-Security-Policy (`default-src 'self'`, no inline
//! scripts or styles, no frames) and `X-Content-Type-Options: nosniff`.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// The policy on every UI answer: only this origin, no inline code or styles (the pages set
/// styles through classes and the CSSOM only), no plugins, no framing, no `<base>` tricks.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The placeholder in `index.html` replaced by the asset version when served.
const VERSION_PLACEHOLDER: &str = "__ASSET_VERSION__";

macro_rules! assets {
    ($($name:literal),+ $(,)?) => {
        /// Every served asset: its name under `assets/` and its bytes.
        pub const ASSETS: &[(&str, &[u8])] = &[
            $(($name, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $name)))),+
        ];
    };
}

// A test (tests/assets.rs) checks this list against the files in assets/.
assets!(
    "index.html",
    "app.css",
    "app.js",
    "api.js",
    "util.js",
    "search.js",
    "trace.js",
    "dag.js",
    "timeline.js",
    "lineage.js",
    "map.js",
    "vendor/dagre.esm.js",
    "vendor/dagre.LICENSE.txt",
);

/// The asset version: the first 16 hex digits of the sha256 over every asset's name and
/// bytes.
pub fn asset_version() -> &'static str {
    static VERSION: LazyLock<String> = LazyLock::new(|| {
        let mut h = Sha256::new();
        for (name, bytes) in ASSETS {
            h.update(name.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        hex::encode(&h.finalize()[..8])
    });
    &VERSION
}

/// `index.html` with the asset version filled in.
fn index_html() -> &'static str {
    static INDEX: LazyLock<String> = LazyLock::new(|| {
        let raw = ASSETS
            .iter()
            .find(|(n, _)| *n == "index.html")
            .map_or(&b""[..], |(_, b)| b);
        String::from_utf8_lossy(raw).replace(VERSION_PLACEHOLDER, asset_version())
    });
    &INDEX
}

/// The content type of an asset, by its extension.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "text/plain; charset=utf-8",
    }
}

/// The routes of the UI, to merge into the query service's router.
pub fn routes() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/{*page}", get(page))
        .route("/ui/assets/{version}/{*file}", get(asset))
}

fn secured(mut resp: Response, cache: &'static str) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

async fn index() -> Response {
    secured(
        (
            [(header::CONTENT_TYPE, content_type("index.html"))],
            index_html(),
        )
            .into_response(),
        "no-cache",
    )
}

/// Any page under `/ui/` is the single page; an unknown one says so in the page itself.
/// Paths under `/ui/assets/` that match no asset route are 404s, not the page.
async fn page(Path(page): Path<String>) -> Response {
    if page.starts_with("assets/") || page == "assets" {
        return not_found();
    }
    index().await
}

fn not_found() -> Response {
    secured(
        (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, content_type("txt"))],
            "no such asset\n",
        )
            .into_response(),
        "no-store",
    )
}

async fn asset(Path((version, file)): Path<(String, String)>) -> Response {
    if version != asset_version() {
        return not_found();
    }
    match ASSETS.iter().find(|(n, _)| *n == file) {
        Some((name, _)) if *name == "index.html" => index().await,
        Some((name, bytes)) => secured(
            ([(header::CONTENT_TYPE, content_type(name))], *bytes).into_response(),
            "public, max-age=31536000, immutable",
        ),
        None => not_found(),
    }
}
