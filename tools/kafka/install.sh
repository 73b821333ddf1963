#!/usr/bin/env bash
# Installs the Apache Kafka broker jars the Kafka tests run (tools/kafka/pom.xml) into
# ~/.cache/datatracing/kafka/<version>/libs with Maven, once; prints that directory.
# Needs Java 17+ and Maven. Test infrastructure only.
set -euo pipefail
cd "$(dirname "$0")"
version="$(sed -n 's:.*<version>\(3\.[0-9.]*\|4\.[0-9.]*\)</version>.*:\1:p' pom.xml | head -1)"
dir="$HOME/.cache/datatracing/kafka/$version"
if [ ! -f "$dir/.complete" ]; then
  command -v java >/dev/null || { echo "error: Java 17+ is required (Debian: apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
  command -v mvn >/dev/null || { echo "error: Maven is required (Debian: apt-get install maven)" >&2; exit 1; }
  rm -rf "$dir"
  mkdir -p "$dir"
  mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$dir/libs" >&2
  touch "$dir/.complete"
fi
echo "$dir"
