#!/usr/bin/env bash
# fake-gcs-server, the Google Cloud Storage emulator the gs:// tests start on loopback, built
# from its Go module through the Go module proxy (no image pulled, no binary downloaded from a
# release page). Needs Go >= 1.24 (/usr/local/go/bin/go, or `go` on PATH).
# Idempotent: an installed binary returns at once.
set -euo pipefail
VERSION=${MLSHIP_FAKE_GCS_VERSION:-v1.56.1}
BIN_DIR=${MLSHIP_TOOLS_BIN:-$HOME/.cache/mlship-tools/bin}
target="$BIN_DIR/fake-gcs-server"

if [ ! -x "$target" ]; then
  go=$(command -v go || true)
  [ -n "$go" ] || go=/usr/local/go/bin/go
  [ -x "$go" ] || { echo "install-gcs: Go not found (needed to build fake-gcs-server)" >&2; exit 1; }
  mkdir -p "$BIN_DIR"
  # Only the machine's Go (never a downloaded toolchain); a static binary.
  GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$BIN_DIR" GOFLAGS="-trimpath -buildvcs=false" \
    nice -n 19 "$go" install -ldflags "-s -w" "github.com/fsouza/fake-gcs-server@$VERSION"
fi
"$target" -help >/dev/null 2>&1 || true
echo "fake-gcs-server: $target"
