#!/usr/bin/env bash
# Make this machine able to build and run the images for `pytest -m docker` (tests/deploy/
# test_docker.py): Docker, Compose and a base image.
#
#  1. installs docker.io, docker-compose and debootstrap with apt when missing (needs root);
#  2. starts dockerd when no daemon answers (log: /tmp/llmb-dockerd.log; it keeps running);
#  3. the base image: LLMB_BASE_IMAGE, pulled when missing; without it, a Debian bookworm base
#     made with debootstrap (python3, venv, pip, CA certificates) and kept under the name
#     llmb-local-python:bookworm, for machines that cannot reach a registry.
#
# Exits 1, saying why, when any of it is impossible. Variables: LLMB_BASE_IMAGE, LLMB_DOCKER
# (/usr/bin/docker, Debian's client), LLMB_COMPOSE (docker-compose), LLMB_DEBIAN_MIRROR.
set -euo pipefail

DOCKER=${LLMB_DOCKER:-/usr/bin/docker}
COMPOSE=${LLMB_COMPOSE:-docker-compose}
LOCAL_BASE=llmb-local-python:bookworm
BASE=${LLMB_BASE_IMAGE:-$LOCAL_BASE}
MIRROR=${LLMB_DEBIAN_MIRROR:-http://deb.debian.org/debian}

fail() {
  printf 'images/setup-docker.sh: %s\n' "$*" >&2
  exit 1
}

missing=()
[ -x "$DOCKER" ] || missing+=(docker.io)
command -v "$COMPOSE" >/dev/null || missing+=(docker-compose)
if [ "$BASE" = "$LOCAL_BASE" ] && ! command -v debootstrap >/dev/null; then missing+=(debootstrap); fi
if [ ${#missing[@]} -gt 0 ]; then
  { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; } ||
    fail "${missing[*]} missing, and only root with apt-get can install them here"
  echo "installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! "$DOCKER" info >/dev/null 2>&1; then
  { [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null; } ||
    fail "no Docker daemon answers, and this user cannot start dockerd"
  echo "starting dockerd (log: /tmp/llmb-dockerd.log)"
  setsid nohup dockerd >/tmp/llmb-dockerd.log 2>&1 </dev/null &
  for _ in $(seq 60); do
    "$DOCKER" info >/dev/null 2>&1 && break
    sleep 1
  done
  "$DOCKER" info >/dev/null 2>&1 || fail "dockerd did not answer within 60 s (/tmp/llmb-dockerd.log)"
fi

if ! "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
  if [ "$BASE" != "$LOCAL_BASE" ]; then
    "$DOCKER" pull "$BASE" || fail "cannot pull $BASE"
  else
    root=$(mktemp -d /tmp/llmb-rootfs.XXXXXX)
    trap 'rm -rf "$root" "$root.log"' EXIT
    echo "debootstrap bookworm from $MIRROR into $LOCAL_BASE (about a minute)"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "$root" "$MIRROR" >"$root.log" 2>&1 || { tail -20 "$root.log"; fail "debootstrap"; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | "$DOCKER" import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$LOCAL_BASE" >/dev/null
  fi
fi
"$DOCKER" run --rm --network none "$BASE" python3 -c 'import venv' ||
  fail "dockerd answers but cannot run a container (or $BASE has no python3)"
echo "Docker $("$DOCKER" version --format '{{.Server.Version}}'), $("$COMPOSE" version --short), base image $BASE: ready"
