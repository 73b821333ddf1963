#!/usr/bin/env bash
# Builds the real Kubernetes API server, etcd, kubectl and helm from the Go module proxy, for
# tests that need a real control plane on a machine without containers (test infrastructure
# only). With --node it also builds what a real one-node cluster needs (e2e/src/cluster):
# kubelet, kube-controller-manager, kube-scheduler, kube-proxy and a static pause program
# for the pod sandboxes (there is no registry to pull one from).
# Binaries are cached under $DATATRACING_K8S_DIR (default ~/.cache/datatracing/k8s/<version>)
# and rebuilt only when missing. Prints the directory on success.
set -euo pipefail

node=0
case "${1:-}" in
  --node) node=1 ;;
  "") ;;
  *) echo "usage: $0 [--node]" >&2; exit 2 ;;
esac
# Static binaries, all built with the same settings so the packages the binaries share are
# compiled once (kubelet pays for most of them; the rest then take seconds).
export CGO_ENABLED=0

K8S_VERSION="${DATATRACING_K8S_VERSION:-1.34.4}"
ETCD_VERSION="${DATATRACING_ETCD_VERSION:-3.6.16}"
HELM_VERSION="${DATATRACING_HELM_VERSION:-3.19.0}"
out="${DATATRACING_K8S_DIR:-$HOME/.cache/datatracing/k8s/$K8S_VERSION}"

have() { [ -x "$out/$1" ]; }
have_node() { [ "$node" = 0 ] || { have kubelet && have kube-controller-manager && have kube-scheduler && have kube-proxy && have pause; }; }
if have kube-apiserver && have etcd && have kubectl && have helm && have_node; then
  echo "$out"
  exit 0
fi
command -v go >/dev/null 2>&1 || { echo "error: Go is required to build the test API server: install Go 1.24+" >&2; exit 1; }
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# kube-apiserver and kubectl: k8s.io/kubernetes requires its staging modules at v0.0.0 and resolves them
# with replace lines Go ignores in dependencies, so this wrapper replaces each one with the
# published v0.N.x. Only exact v0.0.0 requirements are staging modules (k8s.io/utils and
# friends use pseudo-versions and must stay as they are).
mkdir -p "$work/apiserver"
cd "$work/apiserver"
go mod init datatracing.test/apiserver >/dev/null 2>&1
module_json="$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION")"
gomod="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])' <<<"$module_json")"
echo "require k8s.io/kubernetes v$K8S_VERSION" >> go.mod
grep -E '^\s*k8s.io/[a-z0-9-]+ v0\.0\.0$' "$gomod" | awk '{print $1}' | sort -u | while read -r m; do
  echo "replace $m => $m v0.${K8S_VERSION#1.}" >> go.mod
done
cat > main.go <<'GO'
package main

import (
	"os"

	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	if err := app.NewAPIServerCommand().Execute(); err != nil {
		os.Exit(1)
	}
}
GO
mkdir kubectl
cat > kubectl/main.go <<'GO'
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
		util.CheckErr(err)
	}
}
GO
if [ "$node" = 1 ]; then
  # The node's programs are the module's own main packages, copied next to the wrapper's
  # go.mod (before `go mod tidy`, which must see their imports) so they build with its
  # replace lines.
  src="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])' <<<"$module_json")/cmd"
  for cmd in kubelet kube-controller-manager kube-scheduler kube-proxy; do
    mkdir -p "node/$cmd"
    cp "$src/$cmd"/*.go "node/$cmd/"
    chmod u+w "node/$cmd"/*.go
  done
fi
go mod tidy >/dev/null
minor="${K8S_VERSION#1.}"; minor="${minor%%.*}"
# -s -w: no symbol table or DWARF, which the tests never read; it shortens the links of
# these large binaries on a cold machine.
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
have kube-apiserver || go build -trimpath -o "$out/kube-apiserver" -ldflags "$ldflags" .
have kubectl || go build -trimpath -o "$out/kubectl" -ldflags "$ldflags" ./kubectl
if [ "$node" = 1 ]; then
  # kubelet first: it compiles most of what the others share.
  for cmd in kubelet kube-controller-manager kube-scheduler kube-proxy; do
    have "$cmd" || go build -trimpath -o "$out/$cmd" -ldflags "$ldflags" "./node/$cmd"
  done
fi

# etcd
if ! have etcd; then
mkdir -p "$work/etcd"
cd "$work/etcd"
go mod init datatracing.test/etcd >/dev/null 2>&1
cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
GO
go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >/dev/null
go mod tidy >/dev/null
go build -trimpath -ldflags "-s -w" -o "$out/etcd" .
fi

# The pod sandbox ("pause") image's one program: it holds the pod's namespaces, reaps the
# orphans it inherits as a PID namespace's init, and exits on SIGTERM or SIGINT. The e2e
# cluster also runs it as the init of its own namespaces with --until-stdin-closes, so the
# whole cluster dies with the test process that holds the other end of its stdin.
if [ "$node" = 1 ] && ! have pause; then
mkdir -p "$work/pause"
cd "$work/pause"
go mod init datatracing.test/pause >/dev/null 2>&1
cat > main.go <<'GO'
package main

import (
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	stdinClosed := make(chan struct{})
	if len(os.Args) > 1 && os.Args[1] == "--until-stdin-closes" {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			close(stdinClosed)
		}()
	}
	for {
		select {
		case s := <-signals:
			if s != syscall.SIGCHLD {
				return
			}
			for {
				var status syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		case <-stdinClosed:
			return
		}
	}
}
GO
go build -trimpath -ldflags "-s -w" -o "$out/pause" .
fi

# helm (its module has no replace lines, so `go install` builds it as published)
have helm || GOBIN="$out" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"

"$out/kube-apiserver" --version >&2
# Not `| head -1`: under pipefail, etcd writing after head exited (SIGPIPE) failed the build.
etcd_version="$("$out/etcd" --version)"
echo "${etcd_version%%$'\n'*}" >&2
"$out/kubectl" version --client >&2
"$out/helm" version --short >&2
if [ "$node" = 1 ]; then
  "$out/kubelet" --version >&2
fi
echo "$out"
