#!/usr/bin/env bash
# Two loopback registries for the build/push tests, from Debian's docker-registry (nothing is
# pulled): an open one on 127.0.0.1:5000 and an htpasswd-protected one on 127.0.0.1:5001.
# Idempotent: a registry already listening is left alone.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
ROOT=${MLSHIP_REGISTRY_ROOT:-/var/tmp/mlship-registry}
USER_NAME=${MLSHIP_TEST_REGISTRY_USER:-mlship}
PASSWORD=${MLSHIP_TEST_REGISTRY_PASSWORD:-mlship-test-password}

need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v htpasswd >/dev/null || need+=(apache2-utils)
if [ ${#need[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {  # port, extra YAML for the auth section
  local port=$1 auth=$2 dir="$ROOT/$1"
  listening "$port" && return 0
  mkdir -p "$dir/data"
  cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
$auth
YAML
  nohup /usr/bin/docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
  for _ in $(seq 40); do listening "$port" && return 0; sleep 0.25; done
  tail -20 "$dir/registry.log"
  return 1
}

start 5000 ""
mkdir -p "$ROOT/5001"
htpasswd -Bbn "$USER_NAME" "$PASSWORD" >"$ROOT/5001/htpasswd"
start 5001 "auth:
  htpasswd:
    realm: mlship-test
    path: $ROOT/5001/htpasswd"

source "$(dirname "$0")/lib.sh"
ci_env_set MLSHIP_TEST_AUTH_REGISTRY 127.0.0.1:5001
ci_env_set MLSHIP_TEST_REGISTRY_USER "$USER_NAME"
ci_env_set MLSHIP_TEST_REGISTRY_PASSWORD "$PASSWORD"
