//! The embedded UI as the query port serves it: every asset file is embedded and served with
//! its content type, caching by versioned path, the strict CSP on every answer, no external
//! URL and no inline code anywhere, and the vendored layout library exactly as pinned.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use datatracing_ui::{ASSETS, CONTENT_SECURITY_POLICY, asset_version, routes};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

/// This crate's folder, from the variable cargo sets when it runs the test, not the path
/// compiled in: a target directory shared by several checkouts (CI's cache under the home
/// directory, worktrees) keeps this test built once, with the path of whichever checkout
/// built it first, which may since have been removed.
fn crate_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

fn assets_dir() -> PathBuf {
    crate_dir().join("assets")
}

fn files_under(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        if e.file_type().unwrap().is_dir() {
            files_under(&e.path(), &format!("{name}/"), out);
        } else {
            out.push(name);
        }
    }
}

async fn get(uri: &str) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = routes()
        .oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    (parts.status, parts.headers, bytes.to_vec())
}

#[test]
fn every_asset_file_is_embedded_and_nothing_else() {
    let mut on_disk = Vec::new();
    files_under(&assets_dir(), "", &mut on_disk);
    on_disk.sort();
    let mut embedded: Vec<String> = ASSETS.iter().map(|(n, _)| n.to_string()).collect();
    embedded.sort();
    assert_eq!(
        on_disk, embedded,
        "ui/src/lib.rs's assets! list and ui/assets/ differ"
    );
}

#[tokio::test]
async fn pages_and_assets_have_types_caching_and_the_csp() {
    let v = asset_version();
    assert_eq!(v.len(), 16);
    for page in [
        "/",
        "/ui",
        "/ui/",
        "/ui/search?service=a",
        "/ui/trace/00ff",
        "/ui/map",
    ] {
        let (status, h, body) = get(page).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(
            h[header::CONTENT_TYPE],
            "text/html; charset=utf-8",
            "{page}"
        );
        assert_eq!(h[header::CACHE_CONTROL], "no-cache", "{page}");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let html = String::from_utf8(body).unwrap();
        assert!(html.contains(&format!("/ui/assets/{v}/app.js")), "{html}");
        assert!(!html.contains("__ASSET_VERSION__"));
    }
    for (name, bytes) in ASSETS.iter().filter(|(n, _)| *n != "index.html") {
        let (status, h, body) = get(&format!("/ui/assets/{v}/{name}")).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(&body, bytes, "{name}");
        let want = match name.rsplit_once('.').unwrap().1 {
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "txt" => "text/plain; charset=utf-8",
            other => panic!("no expected type for .{other}"),
        };
        assert_eq!(h[header::CONTENT_TYPE], want, "{name}");
        assert_eq!(
            h[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable",
            "{name}"
        );
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
    }
    // Another version, an unknown asset, a bare assets path: 404s that are never cached.
    for uri in [
        "/ui/assets/0000000000000000/app.js".to_string(),
        format!("/ui/assets/{v}/nope.js"),
        format!("/ui/assets/{v}/../Cargo.toml"),
        "/ui/assets/".to_string(),
        "/ui/assets/x".to_string(),
    ] {
        let (status, h, _) = get(&uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(h[header::CACHE_CONTROL], "no-store", "{uri}");
    }
}

#[test]
fn the_policy_is_strict() {
    let csp = CONTENT_SECURITY_POLICY;
    for want in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(want), "{want} missing from {csp}");
    }
    for never in ["unsafe-inline", "unsafe-eval", "http:", "https:", "*"] {
        assert!(!csp.contains(never), "{never} in {csp}");
    }
}

/// The SVG namespace name is an identifier passed to `createElementNS`, never fetched.
const SVG_NAMESPACE: &str = "http://www.w3.org/2000/svg";

#[test]
fn no_external_url_and_no_inline_code_in_served_assets() {
    for (name, bytes) in ASSETS {
        let text = String::from_utf8_lossy(bytes).replace(SVG_NAMESPACE, "");
        let lower = text.to_ascii_lowercase();
        for needle in [
            "http://", "https://", "ws://", "wss://", "@import", "url(http", "url(//", "url(\"//",
            "url('//",
        ] {
            assert!(!lower.contains(needle), "{name} contains {needle:?}");
        }
        for attr in ["src=", "href=", "action="] {
            for quote in ["\"//", "'//", "//"] {
                let needle = format!("{attr}{quote}");
                assert!(
                    !lower.contains(&needle),
                    "{name} has a protocol-relative {attr}"
                );
            }
        }
        if name.ends_with(".html") {
            // Every script is a file of this origin, and nothing is styled inline.
            for (i, _) in lower.match_indices("<script") {
                let tag = &lower[i..i + lower[i..].find('>').unwrap()];
                assert!(tag.contains(" src="), "{name}: inline <script>");
            }
            assert!(!lower.contains("<style"), "{name}: inline <style>");
            assert!(!lower.contains(" style="), "{name}: style attribute");
            assert!(!lower.contains(" on"), "{name}: inline event handler");
        }
        if name.ends_with(".js") && !name.starts_with("vendor/") {
            for banned in [
                "innerhtml",
                "outerhtml",
                "insertadjacenthtml",
                "eval(",
                "new function",
                "setattribute('style'",
                "document.write",
            ] {
                assert!(!lower.contains(banned), "{name} uses {banned}");
            }
        }
    }
}

#[test]
fn vendored_layout_library_matches_its_pin() {
    let lock = std::fs::read_to_string(crate_dir().join("vendor.lock")).unwrap();
    let mut checked = 0;
    for line in lock.lines().filter(|l| l.starts_with("file ")) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [_, _src, dest, sha] = parts[..] else {
            panic!("bad vendor.lock line {line:?}");
        };
        let bytes = std::fs::read(assets_dir().join("vendor").join(dest)).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            sha,
            "assets/vendor/{dest} differs from vendor.lock: run ui/vendor.sh"
        );
        checked += 1;
    }
    assert_eq!(checked, 2, "vendor.lock pins the library and its licence");
    assert!(lock.contains("version 3.1.3"));
}
