#!/usr/bin/env bash
# Re-fetches the vendored layout library named in vendor.lock with `npm pack` (the npm
# registry the machine's npm is configured for) and copies the pinned files into
# assets/vendor/, failing when a file's sha256 differs from the pin.
#
#   ui/vendor.sh            fetch the pinned version, verify, copy
#   ui/vendor.sh --check    fetch and verify only (the committed files are left alone)
#
# To move to a new version: edit `version` in vendor.lock, run with UPDATE_PINS=1 (prints
# the new sha256 lines to paste into vendor.lock after reviewing the diff), run again.
set -euo pipefail
cd "$(dirname "$0")"
package="$(awk '$1 == "package" { print $2 }' vendor.lock)"
version="$(awk '$1 == "version" { print $2 }' vendor.lock)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "fetching $package@$version" >&2
(cd "$work" && npm pack --silent "$package@$version" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work"
status=0
while read -r kind src dest sha; do
  [ "$kind" = file ] || continue
  got="$(sha256sum "$work/package/$src" | cut -d' ' -f1)"
  if [ "${UPDATE_PINS:-}" = 1 ]; then
    echo "file $src $dest $got"
  elif [ "$got" != "$sha" ]; then
    echo "error: $src of $package@$version has sha256 $got, vendor.lock pins $sha" >&2
    status=1
  elif [ "${1:-}" != --check ]; then
    cp "$work/package/$src" "assets/vendor/$dest"
  fi
done < vendor.lock
[ "$status" = 0 ] && [ "${UPDATE_PINS:-}" != 1 ] && echo "ok: $package@$version matches vendor.lock" >&2
exit "$status"
