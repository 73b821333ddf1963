//! Writes the CRDs where they are committed: `crds/` (the source of truth),
//! `config/crd/bases/` (kustomize) and `charts/datatracing-operator/crds/` (Helm).
//! Run from the repository root: `cargo run -p datatracing-operator --bin crdgen`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    for dir in datatracing_operator::crd::CRD_DIRS {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir)?;
        for (name, text) in datatracing_operator::crd::crd_files() {
            std::fs::write(dir.join(&name), text)?;
            eprintln!("wrote {}", dir.join(&name).display());
        }
    }
    Ok(())
}
