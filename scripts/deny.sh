#!/usr/bin/env bash
# Dependency policy (deny.toml): licenses, duplicate versions and banned crates, sources;
# and security advisories when the RustSec database can be had.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="$HOME/.cache/datatracing/tools"
cargo_deny_version=0.20.2
if [ "$("$tools/bin/cargo-deny" --version 2>/dev/null || true)" != "cargo-deny $cargo_deny_version" ]; then
  echo "installing cargo-deny $cargo_deny_version into $tools"
  # --debug: a cold CI machine builds it in about half the time; checking this workspace's
  # lockfile takes seconds either way.
  cargo install cargo-deny --locked --debug --version "$cargo_deny_version" --root "$tools" --quiet
fi
export PATH="$tools/bin:$PATH"

# The checks read the whole dependency graph, every platform's crates included (a
# Windows-only crate is still in the lockfile), which a Linux build never downloads: fetch
# them first, then let cargo-deny work offline.
cargo fetch --locked --quiet
cargo deny --offline --locked check licenses bans sources

# The advisory database is a git repository on a code host, not a package registry: where it
# cannot be fetched the advisories check cannot run, and this says so on every run rather
# than passing quietly. A database fetched once (`cargo deny fetch db`) is used offline.
if timeout 60 cargo deny --locked fetch db >/dev/null 2>&1 || compgen -G "$HOME/.cargo/advisory-dbs/*/.git" >/dev/null; then
  cargo deny --offline --locked check advisories
else
  echo "warning: security advisories NOT checked: the RustSec advisory database could not be fetched" >&2
  echo "  (run 'cargo deny fetch db' on a machine that reaches it; the check then runs offline)" >&2
fi
