#!/usr/bin/env bash
# A real Kubernetes control plane for the tests, built from Go modules the way envtest does:
# etcd, kube-apiserver and kube-controller-manager from .ci/k8s/kube (k8s.io/kubernetes with its
# staging modules replaced by their published versions), kube-scheduler and kubectl from the same
# module, and kwok (fake nodes and pod lifecycle) from .ci/k8s/kwok.
# tests/k8s/controlplane/ starts them; docs/testing.md explains the whole setup.
#
# Idempotent: the binaries go to $MLSHIP_K8S_BIN (default /var/cache/mlship/k8s/bin) and are
# rebuilt only when they are missing or the pins (go.mod, go.sum, this script) changed; a second
# run returns in well under a second. Builds run one at a time under `nice -n 19`.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
BIN=${MLSHIP_K8S_BIN:-/var/cache/mlship/k8s/bin}

GO=$(command -v go || true)
[ -n "$GO" ] || GO=/usr/local/go/bin/go
[ -x "$GO" ] || { echo "install-k8s: Go >= 1.26 is needed (looked for go on PATH and $GO)" >&2; exit 1; }
# Only the machine's Go is used (never a downloaded toolchain); the go.mod files need 1.26.
export GOTOOLCHAIN=local
case "$("$GO" env GOVERSION)" in
  go1.2[6-9]* | go1.[3-9][0-9]* | go[2-9]*) ;;
  *) echo "install-k8s: Go >= 1.26 is needed, $GO is $("$GO" env GOVERSION)" >&2; exit 1 ;;
esac

# The pins live in the go.mod files (and go.sum); the Kubernetes version is read from there.
KUBE_VERSION=$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$repo/.ci/k8s/kube/go.mod")
[ -n "$KUBE_VERSION" ] || { echo "install-k8s: no k8s.io/kubernetes in .ci/k8s/kube/go.mod" >&2; exit 1; }
stamp_of() {
  cat "$repo/.ci/install-k8s.sh" "$repo"/.ci/k8s/kube/go.mod "$repo"/.ci/k8s/kube/go.sum \
    "$repo"/.ci/k8s/kwok/go.mod "$repo"/.ci/k8s/kwok/go.sum | sha256sum | cut -d' ' -f1
}
want=$(stamp_of)
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

write_env() {
  # .ci/run sources .ci/env after every install script ran; keep one line of ours in it.
  source "$repo/.ci/lib.sh"
  ci_env_set MLSHIP_K8S_BIN "$BIN"
}

# tests/k8s/controlplane/certs.py makes its certificates with the openssl CLI.
if ! command -v openssl >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssl >/dev/null
fi

up_to_date=1
for b in "${binaries[@]}"; do [ -x "$BIN/$b" ] || up_to_date=0; done
if [ "$up_to_date" = 1 ] && [ "$(cat "$BIN/.stamp" 2>/dev/null)" = "$want" ]; then
  echo "install-k8s: binaries in $BIN are up to date ($KUBE_VERSION)"
  write_env
  exit 0
fi

mkdir -p "$BIN"
rm -f "$BIN/.stamp"
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
"$GO" version

now() { date +%s; }
total_start=$(now)
build() { # build MODULE_DIR LDFLAGS PACKAGE... : one `go build` for all of a module's binaries,
  # so compiling and linking overlap on both cores; then each binary moves into $BIN.
  local dir=$1 ldflags=$2 t0 out name
  shift 2
  t0=$(now)
  out="$BIN/.new"
  rm -rf "$out" && mkdir -p "$out"
  (cd "$repo/.ci/k8s/$dir" && nice -n 19 "$GO" build -ldflags "-s -w $ldflags" -o "$out/" "$@")
  for pkg in "$@"; do
    case "$pkg" in
      go.etcd.io/etcd/server/v3) name=etcd; mv -f "$out/server" "$BIN/etcd" ;;
      *) name=${pkg##*/}; mv -f "$out/$name" "$BIN/$name" ;;
    esac
  done
  rmdir "$out"
  echo "install-k8s: built $(echo "$@" | sed 's|[^ ]*/cmd/||g; s|go.etcd.io/etcd/server/v3|etcd|') in $(( $(now) - t0 ))s"
}

# Module downloads first, so their time shows on its own line.
t0=$(now)
(cd "$repo/.ci/k8s/kube" && "$GO" mod download)
(cd "$repo/.ci/k8s/kwok" && "$GO" mod download)
echo "install-k8s: modules downloaded in $(( $(now) - t0 ))s"

# What `kubectl version` and the discovery /version endpoint report; as hack/lib/version.sh sets.
minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
kube_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

# kubectl of the same version is for people debugging a test and for the `k8s` marker's probe.
build kube "$kube_ldflags" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3
build kwok "" sigs.k8s.io/kwok/cmd/kwok

echo "$want" >"$BIN/.stamp"
"$BIN/kube-apiserver" --version
"$BIN/etcd" --version | head -1
"$BIN/kwok" --version 2>/dev/null | head -1 || true
echo "install-k8s: all built in $(( $(now) - total_start ))s into $BIN"
write_env
