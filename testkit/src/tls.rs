//! Test certificates made with the `openssl` command: a CA, server certificates for the
//! loopback names (`localhost`, `127.0.0.1`, `::1`) and client certificates, all P-256 and
//! valid for two days, in a temporary directory removed on drop.
// Test infrastructure: failing loudly is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A certificate (or CA) and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The certificate.
    pub cert: PathBuf,
    /// The private key (PKCS#8).
    pub key: PathBuf,
}

/// A CA that issues server and client certificates.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
    /// The CA's certificate and key.
    pub ca: Pair,
    serial: AtomicU32,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}); install it: apt-get install openssl")
        });
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

const KEY: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Pair {
            cert: dir.path().join(format!("{name}-ca.crt")),
            key: dir.path().join(format!("{name}-ca.key")),
        };
        let subject = format!("/CN={name} test CA");
        let mut args = vec!["req", "-x509", "-nodes", "-days", "2", "-subj", &subject];
        args.extend(KEY);
        let (cert, key) = (ca.cert.to_str().unwrap(), ca.key.to_str().unwrap());
        args.extend(["-keyout", key, "-out", cert]);
        args.extend([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(dir.path(), &args);
        Pki {
            dir,
            ca,
            serial: AtomicU32::new(1),
        }
    }

    /// The directory holding every file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn issue(&self, file: &str, common_name: &str, ext: &str) -> Pair {
        let d = self.dir.path();
        let pair = Pair {
            cert: d.join(format!("{file}.crt")),
            key: d.join(format!("{file}.key")),
        };
        let csr = d.join(format!("{file}.csr"));
        let ext_file = d.join(format!("{file}.ext"));
        std::fs::write(&ext_file, ext).unwrap();
        let subject = format!("/CN={common_name}");
        let mut args = vec!["req", "-new", "-nodes", "-subj", &subject];
        args.extend(KEY);
        args.extend([
            "-keyout",
            pair.key.to_str().unwrap(),
            "-out",
            csr.to_str().unwrap(),
        ]);
        openssl(d, &args);
        let serial = self.serial.fetch_add(1, Ordering::Relaxed).to_string();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                csr.to_str().unwrap(),
                "-CA",
                self.ca.cert.to_str().unwrap(),
                "-CAkey",
                self.ca.key.to_str().unwrap(),
                "-set_serial",
                &serial,
                "-extfile",
                ext_file.to_str().unwrap(),
                "-out",
                pair.cert.to_str().unwrap(),
            ],
        );
        pair
    }

    /// A server certificate for `localhost`, `127.0.0.1` and `::1`, in `<file>.crt` /
    /// `<file>.key`; `common_name` tells certificates apart.
    pub fn server(&self, file: &str, common_name: &str) -> Pair {
        self.issue(
            file,
            common_name,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n",
        )
    }

    /// A client certificate named `common_name`.
    pub fn client(&self, file: &str, common_name: &str) -> Pair {
        self.issue(
            file,
            common_name,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        )
    }
}
