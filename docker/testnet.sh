#!/usr/bin/env bash
# The walrus-p2p docker compose testnet: 20 storage peers + an HTTP gateway (docs/testnet.md).
#
#   docker/testnet.sh up      build the wheelhouse and the image, generate this testnet's keys
#                             and genesis, start it, wait until GET /status answers 200
#   docker/testnet.sh down    stop it and delete its volumes (keys, genesis, slivers)
#   docker/testnet.sh ci      the whole life cycle, bounded in time, for a CI machine that has no
#                             docker and cannot pull images: install docker.io, docker-compose and
#                             debootstrap if missing, start dockerd if needed, build a bookworm base
#                             image with debootstrap (once), build the wheelhouse (once), build the
#                             image, up, store blobs through the gateway, stop 6 peers, read every
#                             blob back byte-identical, restart them, read again, wait for
#                             three epoch changes (30 s epochs) storing a blob in each epoch and
#                             reading every blob back after each change, `down -v`.
#                             Cleans up on failure too; prints the time of each phase.
#
# Environment (all optional):
#   WALRUS_NET_PREFIX     /24 subnet prefix of the bridge network, e.g. 172.29.0 (ci: a free
#                         random 172.29.x)
#   WALRUS_GATEWAY_PORT   127.0.0.1 port of the gateway (up: 31415; ci: a free port)
#   WALRUS_PROJECT        compose project name (up: walrus-testnet; ci: walrus-ci-<pid>)
#   WALRUS_BASE_IMAGE     base of the image (up: python:3.11-slim-bookworm; ci: the debootstrap
#                         image walrus-p2p-base:bookworm)
#   WALRUS_IMAGE          image tag (walrus-p2p:testnet)
#   WALRUS_PYTHON         host CPython 3.11 that builds the wheelhouse (.venv/bin/python if present)
#   WALRUS_READY_TIMEOUT  seconds to wait for health and /status (900)
#   WALRUS_CI_TIMEOUT     ci: hard limit for the whole run in seconds (2700)
#   WALRUS_EPOCH_DURATION epoch length in seconds written into a new genesis (up: 86400;
#                         ci: 30, so that the run sees epoch changes)
#   WALRUS_EPOCH_CHANGES  ci: epoch changes to wait for while storing and reading (3)
#   WALRUS_KEEP_DOCKERD   ci: 1 leaves a dockerd this script started running (default: stop it)
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
CACHE="$HERE/.cache"               # the build context is docker/, so the wheelhouse lives here
WHEELHOUSE="$CACHE/wheelhouse"
IMAGE="${WALRUS_IMAGE:-walrus-p2p:testnet}"
DEBOOTSTRAP_IMAGE="walrus-p2p-base:bookworm"
READY_TIMEOUT="${WALRUS_READY_TIMEOUT:-900}"
PEERS=20
STOPPED_PEERS=(peer-03 peer-06 peer-09 peer-12 peer-15 peer-18)  # 6 x 5 = 30 shards <= f = 33
BLOB_SIZES=(1000 65543 1048576 4194304)
STORE_ATTEMPTS=3
STORE_RETRIES=0
STORE_EPOCHS=10  # blobs must outlive the epoch changes the ci run waits for
BLOB_IDS=()
BLOB_FILES=()
STORED_SIZES=()

MODE="${1:-}"
COMPOSE=()
STARTED_DOCKERD_PID=""
WATCHDOG_PID=""
TESTNET_UP=0
WORK=""
PHASE_NAMES=()
PHASE_SECONDS=()
PHASE_LOADS=()
PHASE_NAME=""
PHASE_START=0
RUN_START=$(date +%s.%N)

log() { printf '%s testnet: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
elapsed_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

phase() {  # phase NAME: end the current phase (if any) and start the next
    phase_end
    PHASE_NAME="$1"
    PHASE_START=$(date +%s.%N)
    log "== $PHASE_NAME (load $(loadavg))"
}
phase_end() {
    [ -n "$PHASE_NAME" ] || return 0
    local seconds
    seconds=$(elapsed_since "$PHASE_START")
    PHASE_NAMES+=("$PHASE_NAME")
    PHASE_SECONDS+=("$seconds")
    PHASE_LOADS+=("$(loadavg)")
    log "   $PHASE_NAME: ${seconds}s"
    PHASE_NAME=""
}
print_timings() {
    local index
    printf '\n%-28s %9s   %s\n' "phase" "seconds" "load average at its end" >&2
    for index in "${!PHASE_NAMES[@]}"; do
        printf '%-28s %9s   %s\n' "${PHASE_NAMES[$index]}" "${PHASE_SECONDS[$index]}" \
            "${PHASE_LOADS[$index]}" >&2
    done
    printf '%-28s %9s   %s  (%s cores)\n\n' "total" "$(elapsed_since "$RUN_START")" \
        "$(loadavg)" "$(nproc)" >&2
}

# -- tools ----------------------------------------------------------------------------------

find_compose() {
    if command -v docker-compose >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    elif docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    else
        die "neither docker-compose nor 'docker compose' found"
    fi
    COMPOSE+=(-f "$HERE/compose.yml" -p "$PROJECT")
}

compose() { timeout "${COMPOSE_TIMEOUT:-300}" "${COMPOSE[@]}" "$@"; }

host_python() {
    local python="${WALRUS_PYTHON:-}"
    if [ -z "$python" ]; then
        if [ -x "$ROOT/.venv/bin/python" ]; then python="$ROOT/.venv/bin/python";
        elif command -v python3.11 >/dev/null 2>&1; then python=python3.11;
        else python=python3; fi
    fi
    "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null ||
        die "$python is not CPython 3.11 (set WALRUS_PYTHON): the image runs 3.11"
    echo "$python"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pick_prefix() {  # a 172.29.x.0/24 that neither the host's routes nor docker networks use
    local used candidate attempt
    used="$(ip -4 route 2>/dev/null || true) $(docker network inspect \
        --format '{{range .IPAM.Config}}{{.Subnet}} {{end}}' \
        $(docker network ls -q) 2>/dev/null || true)"
    for attempt in $(seq 1 50); do
        candidate="172.29.$((RANDOM % 200 + 20))"
        case "$used" in *"$candidate."*) continue ;; esac
        echo "$candidate"
        return 0
    done
    die "no free 172.29.x.0/24 subnet found; set WALRUS_NET_PREFIX"
}

# -- CI machine set-up ----------------------------------------------------------------------

install_tools() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    if [ "${#missing[@]}" -eq 0 ]; then
        log "docker.io, docker-compose, debootstrap: present"
        return 0
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq || log "apt-get update failed; trying the cached lists"
    timeout 900 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start_dockerd() {
    if timeout 20 docker info >/dev/null 2>&1; then
        log "dockerd already running"
        return 0
    fi
    command -v dockerd >/dev/null 2>&1 || die "dockerd not installed"
    log "starting dockerd (log: /var/log/walrus-testnet-dockerd.log)"
    dockerd >>/var/log/walrus-testnet-dockerd.log 2>&1 &
    STARTED_DOCKERD_PID=$!
    local deadline=$((SECONDS + 60))
    until timeout 10 docker info >/dev/null 2>&1; do
        kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || die "dockerd exited; see its log"
        [ "$SECONDS" -lt "$deadline" ] || die "dockerd did not answer within 60s"
        sleep 1
    done
}

apt_mirror() {  # the Debian mirror of the machine's apt sources (deb822 or one-line format)
    local mirror
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }')
    if [ -z "$mirror" ]; then
        mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++)
                 if ($i ~ /^(https?|file):/) { print $i; exit } }')
    fi
    echo "${mirror:-http://deb.debian.org/debian}"
}

build_base_image() {  # a bookworm image from debootstrap, for machines that cannot pull images
    if docker image inspect "$DEBOOTSTRAP_IMAGE" >/dev/null 2>&1; then
        log "base image $DEBOOTSTRAP_IMAGE: cached"
        return 0
    fi
    local mirror rootfs
    mirror=$(apt_mirror)
    rootfs=$(mktemp -d /var/tmp/walrus-rootfs.XXXXXX)
    WORK_ROOTFS="$rootfs"
    log "debootstrap bookworm from $mirror into $rootfs"
    timeout 900 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 ||
        { tail -n 20 "$rootfs.log" >&2; die "debootstrap failed"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs.log"
    tar -C "$rootfs" -c . | timeout 600 docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$DEBOOTSTRAP_IMAGE" >/dev/null
    rm -rf "$rootfs"
    WORK_ROOTFS=""
}

# -- wheelhouse and image -------------------------------------------------------------------

build_wheelhouse() {
    # Dependencies: built once per (pyproject.toml, pinned versions, python), cached.
    # The project wheel: rebuilt every time, but replaced only when its contents changed, so
    # the image layer (and the venv install in it) stays cached when the code did not change.
    local python key constraints
    python=$(host_python)
    mkdir -p "$WHEELHOUSE"
    constraints="$CACHE/constraints.txt"
    : >"$constraints.new"
    if "$python" -c 'import walrus_p2p' 2>/dev/null; then
        # A development environment of this project: give the image the very versions it runs.
        "$python" -m pip freeze --exclude-editable 2>/dev/null |
            grep -v -i -E '^(walrus-p2p|pip|setuptools|wheel)[=@ ]' >"$constraints.new" || true
    fi
    key=$( (cat "$ROOT/pyproject.toml" "$constraints.new"; "$python" -VV) | sha256sum | cut -c1-16)
    if [ "$(cat "$CACHE/wheelhouse.key" 2>/dev/null)" != "$key" ]; then
        log "building dependency wheels (pip wheel; fastecdsa needs gcc and libgmp-dev)"
        rm -rf "$WHEELHOUSE.new"
        mv "$constraints.new" "$constraints"
        timeout 1200 "$python" -m pip wheel --quiet --wheel-dir "$WHEELHOUSE.new" \
            --constraint "$constraints" "$ROOT" 2>"$WORK/pip-wheel.log" ||
            { grep -v 'is ignored: it is neither' "$WORK/pip-wheel.log" | tail -n 30 >&2
              die "pip wheel failed (needs the package index, gcc and libgmp-dev)"; }
        rm -f "$WHEELHOUSE.new"/walrus_p2p-*.whl
        rm -rf "$WHEELHOUSE"
        mv "$WHEELHOUSE.new" "$WHEELHOUSE"
        echo "$key" >"$CACHE/wheelhouse.key"
    else
        rm -f "$constraints.new"
        log "dependency wheels: cached ($(ls "$WHEELHOUSE" | wc -l) wheels)"
    fi
    rm -f "$WHEELHOUSE"/walrus_p2p-*.whl   # (left by an older layout of this cache)
    local fresh
    fresh=$(mktemp -d /var/tmp/walrus-wheel.XXXXXX)
    timeout 600 "$python" -m pip wheel --quiet --no-deps --wheel-dir "$fresh" "$ROOT" \
        2>"$WORK/pip-wheel.log" ||
        { tail -n 30 "$WORK/pip-wheel.log" >&2; rm -rf "$fresh"; die "building the walrus-p2p wheel failed"; }
    mkdir -p "$CACHE/project"
    "$python" - "$fresh" "$CACHE/project" <<'EOF'
import pathlib, shutil, sys, zipfile
fresh, kept = (pathlib.Path(p) for p in sys.argv[1:])
new = next(fresh.glob("walrus_p2p-*.whl"))
def contents(path):
    with zipfile.ZipFile(path) as z:
        return sorted((i.filename, i.CRC) for i in z.infolist())
old = list(kept.glob("*.whl"))
if len(old) == 1 and old[0].name == new.name and contents(old[0]) == contents(new):
    print("walrus-p2p wheel: unchanged", file=sys.stderr)
else:
    for path in old:
        path.unlink()
    shutil.copy2(new, kept / new.name)
    print(f"walrus-p2p wheel: {new.name} (new contents)", file=sys.stderr)
EOF
    rm -rf "$fresh"
}

build_image() {
    local base="$1"
    if ! docker buildx version >/dev/null 2>&1; then
        export DOCKER_BUILDKIT=0   # no buildx plugin: the classic builder
    fi
    log "docker build $IMAGE from $base"
    timeout 1200 docker build --build-arg "BASE_IMAGE=$base" -t "$IMAGE" "$HERE" \
        >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log" >&2; die "docker build failed"; }
    grep -q -i 'using cache' "$WORK/build.log" && ! grep -q -E '^ ---> Running in' "$WORK/build.log" &&
        log "image: every layer cached" || true
    # The image this build replaced is now dangling: remove it (only ours, by label).
    timeout 120 docker image prune -f --filter label=org.walrus-p2p.image=testnet >/dev/null || true
}

# -- the testnet ----------------------------------------------------------------------------

testnet_up() {
    export WALRUS_NET_PREFIX WALRUS_GATEWAY_PORT WALRUS_IMAGE="$IMAGE"
    log "up: project=$PROJECT subnet=$WALRUS_NET_PREFIX.0/24 gateway=127.0.0.1:$WALRUS_GATEWAY_PORT"
    TESTNET_UP=1
    COMPOSE_TIMEOUT=600 compose up -d --no-build >/dev/null 2>"$WORK/up.log" ||
        { cat "$WORK/up.log" >&2; compose logs --no-color --tail 40 init >&2 || true;
          die "docker-compose up failed"; }
}

unhealthy_services() {  # prints the storage peers (or gateway) not yet healthy
    local ids id state
    ids=$(compose ps -q "$@") || return 0
    for id in $ids; do
        state=$(timeout 20 docker inspect --format '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id") || continue
        case "$state" in *" running healthy") ;; *) echo "$state" ;; esac
    done
}

wait_healthy() {  # wait_healthy SERVICE...: every container running and healthy
    local deadline=$((SECONDS + READY_TIMEOUT)) pending
    while true; do
        pending=$(unhealthy_services "$@")
        [ -n "$pending" ] || return 0
        if echo "$pending" | grep -q -E ' (exited|dead) '; then
            echo "$pending" >&2
            die "a container exited"
        fi
        [ "$SECONDS" -lt "$deadline" ] ||
            { echo "$pending" >&2; die "not healthy within ${READY_TIMEOUT}s"; }
        sleep 3
    done
}

gateway_url() { echo "http://127.0.0.1:$WALRUS_GATEWAY_PORT"; }

wait_status_200() {
    local deadline=$((SECONDS + READY_TIMEOUT)) code
    while true; do
        code=$(curl -s -o "$WORK/status.json" -w '%{http_code}' --max-time 10 \
            "$(gateway_url)/status" || true)
        [ "$code" = 200 ] && { log "GET /status 200: $(head -c 300 "$WORK/status.json")"; return 0; }
        [ "$SECONDS" -lt "$deadline" ] || die "GET /status did not answer 200 within ${READY_TIMEOUT}s (last: $code)"
        sleep 3
    done
}

store_blobs() {  # store_blobs SIZE...: appends to BLOB_IDS / BLOB_FILES / STORED_SIZES
    local size index file code blob_id
    for size in "$@"; do
        index=${#BLOB_IDS[@]}
        file="$WORK/blob-$index.bin"
        head -c "$size" /dev/urandom >"$file"
        local started attempt
        started=$(date +%s.%N)
        # A store is idempotent (same bytes, same blob id), so a 5xx is retried, at most
        # STORE_ATTEMPTS times in all and loudly: on a machine loaded far beyond its cores the
        # peers' stream negotiation can time out (504 NOT_ENOUGH_PEERS). Reads never retry.
        for attempt in $(seq 1 "$STORE_ATTEMPTS"); do
            code=$(curl -s -o "$WORK/store-$index.json" -w '%{http_code}' --max-time 300 \
                -X PUT --data-binary "@$file" -H 'Content-Type: application/octet-stream' \
                "$(gateway_url)/v1/blobs?epochs=$STORE_EPOCHS") || code="curl-failed"
            [ "$code" = 200 ] && break
            log "STORE RETRY: PUT of a $size-byte blob answered HTTP $code (attempt $attempt," \
                "load $(loadavg)): $(head -c 200 "$WORK/store-$index.json" 2>/dev/null)"
            STORE_RETRIES=$((STORE_RETRIES + 1))
            case "$code" in 5*) ;; *) break ;; esac
            [ "$attempt" -lt "$STORE_ATTEMPTS" ] && sleep 10
        done
        [ "$code" = 200 ] || die "PUT of a $size-byte blob: HTTP $code"
        blob_id=$(python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
o = d.get("newlyCreated", {}).get("blobObject") or d["alreadyCertified"]
print(o["blobId"])' "$WORK/store-$index.json")
        log "stored $size bytes as $blob_id in $(elapsed_since "$started")s"
        BLOB_IDS+=("$blob_id")
        BLOB_FILES+=("$file")
        STORED_SIZES+=("$size")
    done
}

status_epoch() {  # the epoch the gateway's GET /status reports (-1 if it does not answer)
    curl -s --max-time 10 "$(gateway_url)/status" 2>/dev/null |
        python3 -c 'import json, sys
try:
    print(int(json.load(sys.stdin)["epoch"]))
except Exception:
    print(-1)'
}

epoch_changes() {  # epoch_changes N: N epoch changes, a store in each epoch, reads after each
    local wanted="$1" first epoch seen deadline
    first=$(status_epoch)
    [ "$first" -ge 0 ] || die "GET /status gave no epoch"
    seen=$first
    deadline=$((SECONDS + (wanted + 4) * EPOCH_DURATION + 300))
    log "epoch $first: waiting for $wanted epoch changes (epochs of ${EPOCH_DURATION}s)"
    while [ "$seen" -lt $((first + wanted)) ]; do
        [ "$SECONDS" -lt "$deadline" ] ||
            die "only $((seen - first)) of $wanted epoch changes within the deadline"
        sleep 3
        epoch=$(status_epoch)
        if [ "$epoch" -gt "$seen" ]; then
            log "epoch change: $seen -> $epoch (load $(loadavg))"
            seen=$epoch
            store_blobs 300000
            read_blobs "epoch $epoch"
        fi
    done
    log "epoch changes: $first -> $seen"
}

read_blobs() {  # read_blobs LABEL: every blob through the gateway, compared byte for byte
    local label="$1" index code started
    for index in "${!BLOB_IDS[@]}"; do
        started=$(date +%s.%N)
        code=$(curl -s -o "$WORK/read-$index.bin" -w '%{http_code}' --max-time 300 \
            "$(gateway_url)/v1/blobs/${BLOB_IDS[$index]}") || code="curl-failed"
        [ "$code" = 200 ] || { head -c 500 "$WORK/read-$index.bin" >&2 2>/dev/null || true;
            die "$label: GET ${BLOB_IDS[$index]}: HTTP $code"; }
        cmp -s "$WORK/read-$index.bin" "${BLOB_FILES[$index]}" ||
            die "$label: blob ${BLOB_IDS[$index]} read back DIFFERENT"
        log "$label: ${BLOB_IDS[$index]} ${STORED_SIZES[$index]} bytes identical in $(elapsed_since "$started")s"
    done
}

report_exit_codes() {  # 0 is a clean stop; 137 means SIGKILL after the grace period
    local codes
    codes=$(timeout 30 docker inspect --format '{{.State.ExitCode}}' $(compose ps -q "$@") |
        sort | uniq -c | awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }')
    log "stopped: exit codes $codes"
}

save_logs() {
    local dir="$CACHE/logs/$PROJECT"
    mkdir -p "$dir"
    timeout 60 "${COMPOSE[@]}" ps >"$dir/ps.txt" 2>&1 || true
    timeout 120 "${COMPOSE[@]}" logs --no-color --timestamps >"$dir/all.log" 2>&1 || true
    log "container logs saved in $dir"
}

testnet_down() {
    COMPOSE_TIMEOUT=300 compose down -v --remove-orphans -t 30 >/dev/null 2>&1 ||
        log "docker-compose down failed"
    TESTNET_UP=0
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    if [ -n "$WATCHDOG_PID" ]; then  # the watchdog subshell and its sleep
        pkill -P "$WATCHDOG_PID" 2>/dev/null
        kill "$WATCHDOG_PID" 2>/dev/null
    fi
    if [ "$status" -ne 0 ] && [ -n "$PHASE_NAME" ]; then
        log "failed during phase: $PHASE_NAME"
    fi
    phase_end
    if [ "$MODE" = ci ] && [ "$TESTNET_UP" = 1 ]; then
        [ "$status" -ne 0 ] && save_logs
        local started
        started=$(date +%s.%N)
        log "tearing the testnet down (down -v)"
        testnet_down
        PHASE_NAMES+=("cleanup down -v"); PHASE_SECONDS+=("$(elapsed_since "$started")")
        PHASE_LOADS+=("$(loadavg)")
    fi
    if [ "$MODE" = up ] && [ "$status" -ne 0 ] && [ "$TESTNET_UP" = 1 ]; then
        log "left running for inspection: ${COMPOSE[*]} ps / logs; '$0 down' removes it"
    fi
    [ -n "${WORK_ROOTFS:-}" ] && rm -rf "$WORK_ROOTFS" "$WORK_ROOTFS.log"
    [ -n "$WORK" ] && rm -rf "$WORK"
    if [ -n "$STARTED_DOCKERD_PID" ] && [ "${WALRUS_KEEP_DOCKERD:-0}" != 1 ]; then
        log "stopping the dockerd this script started (pid $STARTED_DOCKERD_PID)"
        kill "$STARTED_DOCKERD_PID" 2>/dev/null
        timeout 30 tail --pid="$STARTED_DOCKERD_PID" -f /dev/null
    fi
    [ "${#PHASE_NAMES[@]}" -gt 0 ] && print_timings
    [ "$STORE_RETRIES" -gt 0 ] && log "NOTE: $STORE_RETRIES store request(s) had to be retried"
    if [ "$status" -eq 0 ]; then log "done"; else log "FAILED (exit $status)"; fi
    exit "$status"
}

# -- modes ----------------------------------------------------------------------------------

mode_up() {
    PROJECT="${WALRUS_PROJECT:-walrus-testnet}"
    WALRUS_NET_PREFIX="${WALRUS_NET_PREFIX:-172.29.0}"
    WALRUS_GATEWAY_PORT="${WALRUS_GATEWAY_PORT:-31415}"
    WORK=$(mktemp -d /var/tmp/walrus-testnet.XXXXXX)
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    find_compose
    phase "wheelhouse";  build_wheelhouse
    phase "image";       build_image "${WALRUS_BASE_IMAGE:-python:3.11-slim-bookworm}"
    phase "up";          testnet_up
    phase "healthy";     wait_healthy $(seq -f 'peer-%02g' 1 "$PEERS")
    phase "status 200";  wait_status_200
    phase_end
    cat >&2 <<EOF

testnet up: $PEERS peers, project $PROJECT, subnet $WALRUS_NET_PREFIX.0/24
  curl -X PUT --data-binary @FILE '$(gateway_url)/v1/blobs?epochs=5'
  curl $(gateway_url)/v1/blobs/BLOB_ID -o OUT
  ${COMPOSE[*]} ps | logs -f gateway | stop peer-03 | start peer-03
  $0 down          # stop and delete every volume
EOF
}

mode_down() {
    PROJECT="${WALRUS_PROJECT:-walrus-testnet}"
    find_compose
    testnet_down
    log "down: project $PROJECT removed with its volumes"
}

mode_ci() {
    [ "$(id -u)" = 0 ] || die "ci mode installs packages and starts dockerd: run it as root"
    PROJECT="${WALRUS_PROJECT:-walrus-ci-$$}"
    EPOCH_DURATION="${WALRUS_EPOCH_DURATION:-30}"
    EPOCH_CHANGES="${WALRUS_EPOCH_CHANGES:-3}"
    export WALRUS_EPOCH_DURATION="$EPOCH_DURATION"
    WORK=$(mktemp -d /var/tmp/walrus-testnet.XXXXXX)
    trap cleanup EXIT
    trap 'log "interrupted"; exit 130' INT TERM
    # Hard limit: the watchdog sends TERM to this script, whose trap tears everything down.
    ( sleep "${WALRUS_CI_TIMEOUT:-2700}"; log "hard time limit reached"; kill -TERM $$ ) &
    WATCHDOG_PID=$!
    disown "$WATCHDOG_PID"   # no "Terminated" job notice when cleanup ends it
    log "ci run on $(nproc) cores, load $(loadavg)"

    phase "install tools";      install_tools
    phase "dockerd";            start_dockerd
    find_compose
    WALRUS_NET_PREFIX="${WALRUS_NET_PREFIX:-$(pick_prefix)}"
    WALRUS_GATEWAY_PORT="${WALRUS_GATEWAY_PORT:-$(free_port)}"
    phase "base image";         build_base_image
    phase "wheelhouse";         build_wheelhouse
    phase "image";              build_image "${WALRUS_BASE_IMAGE:-$DEBOOTSTRAP_IMAGE}"
    phase "up (init + create)"; testnet_up
    phase "peers healthy";      wait_healthy $(seq -f 'peer-%02g' 1 "$PEERS")
    phase "gateway /status 200"; wait_status_200
    phase "store ${#BLOB_SIZES[@]} blobs";     store_blobs "${BLOB_SIZES[@]}"
    phase "read all";           read_blobs "read"
    phase "stop 6 peers";       compose stop -t 30 "${STOPPED_PEERS[@]}" >/dev/null 2>&1
                                report_exit_codes "${STOPPED_PEERS[@]}"
    phase "read with 6 down";   read_blobs "6 peers down"
    phase "restart 6 peers";    compose start "${STOPPED_PEERS[@]}" >/dev/null 2>&1
                                wait_healthy "${STOPPED_PEERS[@]}"
    phase "read after restart"; read_blobs "after restart"
    phase "$EPOCH_CHANGES epoch changes"; epoch_changes "$EPOCH_CHANGES"
    phase "down -v";            testnet_down
    phase_end
    log "stats: $(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "image %.0f MB", $1 / 1e6 }')"
}

case "$MODE" in
    up) mode_up ;;
    down) mode_down ;;
    ci) mode_ci ;;
    *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2 ;;
esac
