//! Container images without a registry: a `docker save` tarball (one layer, a config, a
//! `manifest.json` naming the tag) that `ctr images import` accepts.
//!
//! The product image holds the `datatracing` binary at the Dockerfile's path and the shared
//! libraries `ldd` lists, copied to the same paths; the pause image holds the static pause
//! program. Layers are written by GNU tar with fixed owners and times, so the same files give
//! the same image.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::node::run;

/// Where the product binary sits in the image (as in the Dockerfile).
pub const BINARY_PATH: &str = "/usr/local/bin/datatracing";

/// What goes into an image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// `repository:tag`; a repository with a dot in its first part is never taken for a
    /// Docker Hub name.
    pub reference: String,
    /// Files: (source on this machine, absolute path in the image).
    pub files: Vec<(PathBuf, String)>,
    /// The entrypoint.
    pub entrypoint: Vec<String>,
    /// `uid:gid` the container runs as unless the pod says otherwise.
    pub user: String,
    /// Image paths whose debug information `strip` removes (when binutils is installed):
    /// the binaries carry line tables, several times their code's size.
    pub strip: Vec<String>,
}

/// The shared libraries `binary` loads, as `ldd` lists them (the dynamic loader included).
pub fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = run(Command::new("ldd").arg(binary));
    out.lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The product image's contents for `binary`.
pub fn product_image(binary: &Path, reference: &str) -> ImageSpec {
    let mut files = vec![(binary.to_path_buf(), BINARY_PATH.to_string())];
    for lib in shared_libraries(binary) {
        let dest = lib.to_string_lossy().into_owned();
        files.push((lib, dest));
    }
    ImageSpec {
        reference: reference.to_string(),
        files,
        entrypoint: vec![BINARY_PATH.to_string()],
        user: "65532:65532".into(),
        strip: vec![BINARY_PATH.to_string()],
    }
}

/// Writes `spec` as a `docker save` tarball at `out` (staging in `work`, removed after).
/// Returns the layer's digest (`sha256:...`).
pub fn write_image(spec: &ImageSpec, work: &Path, out: &Path) -> String {
    let _ = fs::remove_dir_all(work);
    let rootfs = work.join("rootfs");
    for (src, dest) in &spec.files {
        let target = rootfs.join(dest.trim_start_matches('/'));
        fs::create_dir_all(target.parent().expect("a file in a directory")).expect("mkdir");
        // fs::copy follows symlinks: the image gets the file the link points to.
        fs::copy(src, &target).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    }
    for path in &spec.strip {
        // Optional: an unstripped binary runs the same, in a larger image.
        let _ = Command::new("strip")
            .arg("--strip-debug")
            .arg(rootfs.join(path.trim_start_matches('/')))
            .status();
    }
    fs::create_dir_all(rootfs.join("tmp")).expect("mkdir tmp");
    let image = work.join("image");
    fs::create_dir_all(&image).expect("mkdir image");
    let layer = image.join("layer.tar");
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-C",
        ])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."));
    let bytes = fs::read(&layer).expect("read the layer");
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": spec.entrypoint,
            "User": spec.user,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
        },
        "rootfs": {"type": "layers", "diff_ids": [digest]},
    });
    fs::write(image.join("config.json"), config.to_string()).expect("write config.json");
    let manifest = json!([{
        "Config": "config.json",
        "RepoTags": [spec.reference],
        "Layers": ["layer.tar"],
    }]);
    fs::write(image.join("manifest.json"), manifest.to_string()).expect("write manifest.json");
    run(Command::new("tar")
        .arg("-C")
        .arg(&image)
        .arg("-cf")
        .arg(out)
        .args(["manifest.json", "config.json", "layer.tar"]));
    let _ = fs::remove_dir_all(work);
    digest
}
