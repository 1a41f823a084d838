#!/usr/bin/env bash
# A Docker engine, a registry and a locally made base image, all on loopback.
# Idempotent: a second run on the same machine finds everything up and returns in seconds.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
BASE_IMAGE=${MLSHIP_TEST_BASE_IMAGE:-mlship-test/base:bookworm}

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v htpasswd >/dev/null || need+=(apache2-utils)
if [ ${#need[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# No bridge, no iptables: containers and builds use the host's network, and nothing leaves
# loopback.
if ! docker info >/dev/null 2>&1; then
  nohup dockerd --bridge=none --iptables=false --ip-masq=false --userland-proxy=false \
    >/var/log/mlship-dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { tail -20 /var/log/mlship-dockerd.log; exit 1; }
fi

# Nothing can be pulled from Docker Hub here, so the base image is made from Debian packages.
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" \
    http://deb.debian.org/debian >/tmp/mlship-debootstrap.log 2>&1 \
    || { tail -20 /tmp/mlship-debootstrap.log; exit 1; }
  # apt lists and docs are not needed at run time; keep the base small.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
fi

source "$(dirname "$0")/lib.sh"
ci_env_set MLSHIP_TEST_BASE_IMAGE "$BASE_IMAGE"
