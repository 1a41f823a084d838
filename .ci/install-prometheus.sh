#!/usr/bin/env bash
# Prometheus for the canary-analysis tests, from Debian's package (2.42 on bookworm).
# The tests start their own `prometheus --web.listen-address=127.0.0.1:<free port>` with a
# throwaway TSDB; the packaged service (which would listen on 0.0.0.0:9090) is never started:
# a policy-rc.d refuses it during the install, and it is stopped and disabled if systemd runs.
# Idempotent: an installed binary returns at once.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

if ! command -v prometheus >/dev/null && [ ! -x /usr/bin/prometheus ]; then
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT  # also when the install fails
  fi
  # No recommends: node-exporter and friends would be more services listening on 0.0.0.0.
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

if [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
prometheus --version 2>&1 | head -1
