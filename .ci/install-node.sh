#!/usr/bin/env bash
# A real Kubernetes node for the `pods` tests, beside the control plane of install-k8s.sh:
# kubelet and kube-proxy built with one `go build` from .ci/k8s/node (the same k8s.io/kubernetes
# and staging versions as .ci/k8s/kube, so the control plane's build cache serves most of it),
# Debian's containerd, runc and CNI plugins, and a static pause binary from .ci/k8s/node/pause.c
# (the fixture turns it into the sandbox image in the loopback registry: nothing is pulled).
# tests/k8s/controlplane/node.py starts them; docs/testing.md explains the whole setup.
#
# Idempotent: the binaries go to $MLSHIP_K8S_BIN (default /var/cache/mlship/k8s/bin) and are
# rebuilt only when one is missing or the pins (go.mod, go.sum, pause.c, this script) changed;
# a second run returns in about a second. The build runs under `nice -n 19`.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
BIN=${MLSHIP_K8S_BIN:-/var/cache/mlship/k8s/bin}
export DEBIAN_FRONTEND=noninteractive

now() { date +%s; }
total_start=$(now)

# Debian 12's containerd 1.6, runc 1.1 and CNI plugins 1.1; iptables for the fixture's firewall.
need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
command -v gcc >/dev/null || need+=(gcc)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ -f /usr/lib/aarch64-linux-gnu/libc.a ] \
  || need+=(libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  t0=$(now)
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  echo "install-node: apt-get installed ${need[*]} in $(( $(now) - t0 ))s"
fi

GO=$(command -v go || true)
[ -n "$GO" ] || GO=/usr/local/go/bin/go
[ -x "$GO" ] || { echo "install-node: Go >= 1.26 is needed (looked for go on PATH and $GO)" >&2; exit 1; }
export GOTOOLCHAIN=local

version_of() { awk '$1 == "k8s.io/kubernetes" { print $2 }' "$repo/.ci/k8s/$1/go.mod"; }
KUBE_VERSION=$(version_of node)
if [ "$KUBE_VERSION" != "$(version_of kube)" ]; then
  echo "install-node: .ci/k8s/node pins k8s.io/kubernetes $KUBE_VERSION but .ci/k8s/kube pins" \
    "$(version_of kube): keep them equal (the node and the control plane are built alike)" >&2
  exit 1
fi
stamp_of() {
  cat "$repo/.ci/install-node.sh" "$repo"/.ci/k8s/node/go.mod "$repo"/.ci/k8s/node/go.sum \
    "$repo"/.ci/k8s/node/pause.c | sha256sum | cut -d' ' -f1
}
want=$(stamp_of)
binaries=(kubelet kube-proxy pause)

up_to_date=1
for b in "${binaries[@]}"; do [ -x "$BIN/$b" ] || up_to_date=0; done
if [ "$up_to_date" = 1 ] && [ "$(cat "$BIN/.node-stamp" 2>/dev/null)" = "$want" ]; then
  echo "install-node: kubelet, kube-proxy and pause in $BIN are up to date ($KUBE_VERSION," \
    "$(containerd --version | awk '{print $3}'))"
  exit 0
fi

mkdir -p "$BIN"
rm -f "$BIN/.node-stamp"

# The sandbox process: static, so the image needs nothing else.
gcc -Os -static -Wall -Wextra -Werror -o "$BIN/pause.new" "$repo/.ci/k8s/node/pause.c"
strip "$BIN/pause.new"
mv -f "$BIN/pause.new" "$BIN/pause"

export CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
t0=$(now)
(cd "$repo/.ci/k8s/node" && "$GO" mod download)
echo "install-node: modules downloaded in $(( $(now) - t0 ))s"

# What the node reports as its kubelet and kube-proxy versions; as install-k8s.sh sets them.
minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
t0=$(now)
out="$BIN/.node-new"
rm -rf "$out" && mkdir -p "$out"
(cd "$repo/.ci/k8s/node" && nice -n 19 "$GO" build -ldflags "$ldflags" -o "$out/" \
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
mv -f "$out/kubelet" "$out/kube-proxy" "$BIN/"
rmdir "$out"
echo "install-node: built kubelet and kube-proxy in $(( $(now) - t0 ))s"

echo "$want" >"$BIN/.node-stamp"
"$BIN/kubelet" --version
containerd --version
runc --version | head -1
echo "install-node: done in $(( $(now) - total_start ))s into $BIN"
