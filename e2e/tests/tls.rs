//! TLS on every listener of the real binary, with real clients: curl (`--cacert`, mutual TLS
//! with `--cert`/`--key`, refused without a client certificate or with another CA), the
//! official OpenTelemetry Python SDK's OTLP exporters over HTTPS and gRPC with TLS
//! configured the way users configure them (`OTEL_EXPORTER_OTLP_CERTIFICATE`, client
//! certificate and key, the token in `OTEL_EXPORTER_OTLP_HEADERS`), certificate files
//! rotated while the server runs, a start-up refused for a key that does not match, and
//! `print-config` showing paths only. The tonic client case is in `collector/tests/tls.rs`;
//! TLS to ClickHouse in `store-clickhouse/tests/tls.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use datatracing_e2e::{Server, command, python_otel_send};
use datatracing_testkit::tls::{Pair, Pki};
use serde_json::Value;

const INGEST: &str = "ingest-tls-5b0e2c9d71a4";
const QUERY: &str = "query-tls-9c4d1e7f3a20";

/// What curl did: its exit code, the HTTP status (`000` when no response came) and body.
#[derive(Debug)]
struct Curl {
    exit: i32,
    status: String,
    body: String,
}

/// curl to `url` over TLS trusting `ca`, with a client certificate and a token if given.
fn curl(
    url: &str,
    ca: &Path,
    client: Option<&Pair>,
    token: Option<&str>,
    data: Option<&str>,
) -> Curl {
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "-S",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(ca);
    if let Some(p) = client {
        c.arg("--cert").arg(&p.cert).arg("--key").arg(&p.key);
    }
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(d) = data {
        c.args(["-H", "Content-Type: application/json", "--data-binary", d]);
    }
    let out = c.arg(url).output().expect("curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Curl {
        exit: out.status.code().unwrap_or(-1),
        status: status.to_string(),
        body: format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    }
}

fn spans(trace: &str) -> String {
    let t = "2026-12-01T10:00:00Z";
    format!(
        r#"{{"spans":[{{"trace_id":"{trace}","span_id":"00000000000000a1","service":"tls-etl","operation":"load","kind":"INGEST","start_time":"{t}","end_time":"{t}"}}]}}"#
    )
}

/// A config file with TLS (`client_ca` set: mutual TLS, required) and two tokens.
fn config(dir: &Path, server: &Pair, client_ca: Option<&Path>) -> std::path::PathBuf {
    let ca = client_ca
        .map(|p| {
            format!(
                "\n  client_ca_file: {}\n  client_auth: required",
                p.display()
            )
        })
        .unwrap_or_default();
    let text = format!(
        "tls:\n  cert_file: {}\n  key_file: {}\n  reload_interval: 100ms{ca}\n\
         auth:\n  tokens:\n\
         \x20   - {{name: pipelines, scopes: [ingest], env: DT_TLS_INGEST}}\n\
         \x20   - {{name: grafana, scopes: [query], env: DT_TLS_QUERY}}\n",
        server.cert.display(),
        server.key.display(),
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start(dir: &Path, config_file: &Path) -> Server {
    let mut c = command("all-in-one");
    c.arg("-c")
        .arg(config_file)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("DT_TLS_INGEST", INGEST)
        .env("DT_TLS_QUERY", QUERY);
    Server::spawn(c, true, true)
}

fn https(addr: SocketAddr, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", addr.port())
}

#[test]
fn curl_over_mutual_tls_with_tokens_on_every_http_listener() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("dt");
    let server_pair = pki.server("server", "datatracing");
    let client = pki.client("client", "etl-job");
    let other = Pki::new("other");
    let stranger = other.client("stranger", "someone");
    let server = start(
        dir.path(),
        &config(dir.path(), &server_pair, Some(&pki.ca.cert)),
    );
    let trace = "7a0000000000000000000000000000c1";
    let post = https(server.ingest(), "/api/v1/spans");
    let body = spans(trace);

    let ok = curl(
        &post,
        &pki.ca.cert,
        Some(&client),
        Some(INGEST),
        Some(&body),
    );
    assert_eq!(ok.status, "202", "{ok:?}");
    // TLS does not replace the token.
    let no_token = curl(&post, &pki.ca.cert, Some(&client), None, Some(&body));
    assert_eq!(no_token.status, "401", "{no_token:?}");
    // Without a client certificate, or with one from another CA: no HTTP exchange at all.
    for who in [None, Some(&stranger)] {
        let r = curl(&post, &pki.ca.cert, who, Some(INGEST), Some(&body));
        assert_eq!(r.status, "000", "{who:?}: {r:?}");
        assert_ne!(r.exit, 0, "{r:?}");
    }
    // A client that does not trust our CA refuses the server (curl: peer verification).
    let r = curl(
        &post,
        &other.ca.cert,
        Some(&client),
        Some(INGEST),
        Some(&body),
    );
    assert_eq!(r.exit, 60, "{r:?}");
    // Plain HTTP on a TLS port gets no HTTP answer.
    let plain = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://{}/healthz", server.ingest()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "000");

    // The query listener: the same TLS, the query token.
    let read = curl(
        &https(server.query(), &format!("/api/v1/traces/{trace}")),
        &pki.ca.cert,
        Some(&client),
        Some(QUERY),
        None,
    );
    assert_eq!(read.status, "200", "{read:?}");
    let dag: Value = serde_json::from_str(&read.body).unwrap();
    assert_eq!(dag["spans"].as_array().unwrap().len(), 1, "{dag}");
    let metrics = curl(
        &https(server.query(), "/metrics"),
        &pki.ca.cert,
        Some(&client),
        None,
        None,
    );
    assert_eq!(metrics.status, "200");
    assert!(
        metrics
            .body
            .contains(r#"datatracing_tls_handshake_failures_total{listener="collector"}"#),
        "{}",
        metrics.body
    );
}

#[test]
fn python_sdk_exporters_send_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("dt");
    let server_pair = pki.server("server", "datatracing");
    let client = pki.client("client", "py-job");
    let server = start(
        dir.path(),
        &config(dir.path(), &server_pair, Some(&pki.ca.cert)),
    );
    let headers = format!("authorization=Bearer%20{INGEST}");
    let (ca, cert, key) = (
        pki.ca.cert.to_str().unwrap(),
        client.cert.to_str().unwrap(),
        client.key.to_str().unwrap(),
    );
    let tls_env = [
        ("OTEL_EXPORTER_OTLP_HEADERS", headers.as_str()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key),
    ];
    for (protocol, endpoint) in [
        ("http", https(server.ingest(), "/v1/traces")),
        ("grpc", https(server.grpc(), "")),
    ] {
        let sent = python_otel_send(protocol, &endpoint, &tls_env);
        assert_eq!(sent["ok"], true, "{protocol} over TLS: {sent}");
        let read = curl(
            &https(
                server.query(),
                &format!("/api/v1/traces/{}", sent["trace_id"].as_str().unwrap()),
            ),
            &pki.ca.cert,
            Some(&client),
            Some(QUERY),
            None,
        );
        assert_eq!(read.status, "200", "{read:?}");
        let dag: Value = serde_json::from_str(&read.body).unwrap();
        assert_eq!(dag["spans"].as_array().unwrap().len(), 3, "{dag}");

        // Without the client certificate the export fails.
        let refused = python_otel_send(protocol, &endpoint, &tls_env[..2]);
        assert_eq!(
            refused["ok"], false,
            "{protocol} without a client certificate: {refused}"
        );
    }
}

#[test]
fn certificate_files_rotate_without_a_restart_and_print_config_shows_paths_only() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Pki::new("old"), Pki::new("new"));
    let first = old_ca.server("first", "dt-1");
    let second = new_ca.server("second", "dt-2");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    // The certificate comes from the environment overrides this time; the interval from
    // the file.
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, "query:\n  request_timeout: 20s\n").unwrap();
    let mut c = command("all-in-one");
    c.arg("-c")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("DATATRACING_TLS_CERT_FILE", &cert)
        .env("DATATRACING_TLS_KEY_FILE", &key);
    let server = Server::spawn(c, true, true);
    let health = https(server.query(), "/healthz");
    assert_eq!(
        curl(&health, &old_ca.ca.cert, None, None, None).status,
        "200"
    );

    // print-config: the paths, never the key.
    let out = command("print-config")
        .env("DATATRACING_TLS_CERT_FILE", &cert)
        .env("DATATRACING_TLS_KEY_FILE", &key)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(key.to_str().unwrap()), "{text}");
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("BEGIN"),
        "{text}"
    );

    // A broken rotation (the new certificate with the old key) is refused and counted; the
    // old certificate keeps being served.
    std::fs::copy(&second.cert, &cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("cannot be loaded; keeping the previous certificate"))
    {
        assert!(
            Instant::now() < deadline,
            "the broken rotation was not reported"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        curl(&health, &old_ca.ca.cert, None, None, None).status,
        "200"
    );

    // The key follows: new connections get the new certificate, on every listener.
    std::fs::copy(&second.key, &key).unwrap();
    for addr in [server.query(), server.ingest()] {
        let url = https(addr, "/healthz");
        let deadline = Instant::now() + Duration::from_secs(30);
        while curl(&url, &new_ca.ca.cert, None, None, None).status != "200" {
            assert!(
                Instant::now() < deadline,
                "{url}: the new certificate is not served"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(curl(&url, &old_ca.ca.cert, None, None, None).exit, 60);
    }
    let metrics = curl(
        &https(server.query(), "/metrics"),
        &new_ca.ca.cert,
        None,
        None,
        None,
    );
    for want in [
        r#"datatracing_tls_reloads_total{listener="query",result="ok"} 1"#,
        r#"datatracing_tls_reloads_total{listener="query",result="error"} 1"#,
    ] {
        assert!(metrics.body.contains(want), "{want}: {}", metrics.body);
    }
    let log = server.log.lock().unwrap().join("\n");
    assert!(!log.contains("PRIVATE KEY"), "key material in the log");
}

#[test]
fn a_key_that_does_not_match_the_certificate_fails_start_up_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("dt");
    let (a, b) = (pki.server("a", "a"), pki.server("b", "b"));
    let out = command("all-in-one")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--tls-cert-file")
        .arg(&a.cert)
        .arg("--tls-key-file")
        .arg(&b.key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match the certificate"), "{err}");
    assert!(err.contains("b.key") && err.contains("a.crt"), "{err}");

    let out = command("all-in-one")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--tls-key-file")
        .arg(&b.key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-cert-file and --tls-key-file"), "{err}");
}

/// The binary on ClickHouse over `https://`, trusting the CA from
/// `DATATRACING_CLICKHOUSE_CA_FILE`: spans go in and come back; with another CA it refuses
/// to start and says why.
#[test]
fn the_binary_reaches_clickhouse_over_https_with_the_ca_file() {
    use datatracing_testkit::clickhouse::{ChdbOptions, ClickHouse, unique_database};
    let pki = Pki::new("ch");
    let other = Pki::new("other");
    let ch = ClickHouse::start_chdb(ChdbOptions {
        tls: Some(pki.server("clickhouse", "clickhouse")),
        ..ChdbOptions::default()
    });
    let database = unique_database("e2e_tls");
    let run = |ca: &Path| {
        let mut c = command("all-in-one");
        c.args(["--storage", "clickhouse", "--clickhouse-url", ch.url()])
            .args(["--clickhouse-database", &database])
            .env("DATATRACING_CLICKHOUSE_CA_FILE", ca);
        c
    };
    let out = run(&other.ca.cert).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ClickHouse TLS: invalid peer certificate") && err.contains("ca_file"),
        "{err}"
    );

    let server = Server::spawn(run(&pki.ca.cert), true, true);
    let trace = "7a0000000000000000000000000000c9";
    let http = |path: &str| format!("http://{path}");
    let post = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Content-Type: application/json",
        ])
        .args(["--data-binary", &spans(trace)])
        .arg(http(&format!("{}/api/v1/spans", server.ingest())))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&post.stdout), "202");
    let read = Command::new("curl")
        .args(["-s"])
        .arg(http(&format!("{}/api/v1/traces/{trace}", server.query())))
        .output()
        .unwrap();
    let dag: Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(dag["spans"].as_array().map(Vec::len), Some(1), "{dag}");
}
