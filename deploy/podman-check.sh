#!/usr/bin/env bash
# Builds the Dockerfile's runtime stage with podman and runs the image against this machine's
# Postgres and Redis: `outbox-relay demo` in the container, then `migrate`, `run` (HEALTHCHECK,
# /readyz, /metrics, one message published and read back from its stream) and a clean SIGTERM.
#
# For machines that can pull no image and whose Rust cannot build in a container: the base image
# is made with debootstrap (Debian bookworm, minbase) and `podman import`, and the binary is the
# one `cargo build --release` makes here, copied into the same runtime stage (BINARY=prebuilt).
# Needs root and Debian's packages: apt-get install -y podman runc debootstrap
# Not part of `cargo test`. Run from anywhere:  bash deploy/podman-check.sh
#
# Environment: DATABASE (default shipdemo; dropped and created again), PG_URL (the server,
# default postgres://postgres@127.0.0.1:5432), REDIS_URL (default redis://127.0.0.1:6379),
# HTTP_PORT (default 19187), SKIP_CARGO_BUILD=1 (use target/release/outbox-relay as it is).
set -euo pipefail
cd "$(dirname "$0")/.."

database=${DATABASE:-shipdemo}
pg_url=${PG_URL:-postgres://postgres@127.0.0.1:5432}
redis_url=${REDIS_URL:-redis://127.0.0.1:6379}
http_port=${HTTP_PORT:-19187}
image=localhost/outbox-relay:check
base=docker.io/library/debian:bookworm-slim
container=outbox-relay-check-$$
key_prefix="podman-check-$$:"

log() { printf '\n== %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

work=$(mktemp -d /tmp/outbox-relay-podman-check.XXXXXX)
cleanup() {
    podman rm -f "$container" >/dev/null 2>&1 || true
    redis-cli -u "$redis_url" --scan --pattern "${key_prefix}*" 2>/dev/null |
        xargs -r redis-cli -u "$redis_url" del >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# podman as this machine allows it: runc, vfs storage, cgroupfs, no default ulimits.
printf '[containers]\ndefault_ulimits = []\n' >"$work/containers.conf"
export CONTAINERS_CONF="$work/containers.conf"
podman() { command podman --runtime runc --storage-driver vfs --cgroup-manager cgroupfs "$@"; }

log "base image $base"
if podman image exists "$base"; then
    echo "present"
else
    echo "\$ debootstrap --variant=minbase bookworm <rootfs> http://deb.debian.org/debian"
    debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
        { tail -20 "$work/debootstrap.log"; exit 1; }
    echo "\$ tar -C <rootfs> -c . | podman import - $base"
    tar -C "$work/rootfs" -c . | podman import - "$base"
    rm -rf "$work/rootfs"
fi

log "binary"
if [ "${SKIP_CARGO_BUILD:-}" != 1 ]; then
    show cargo build --release --locked --bin outbox-relay
fi
ls -l target/release/outbox-relay
mkdir "$work/context"
cp Dockerfile "$work/context/Dockerfile"
cp target/release/outbox-relay "$work/context/outbox-relay"

log "build (runtime stage, prebuilt binary)"
podman rmi -f "$image" >/dev/null 2>&1 || true
echo "\$ podman build --format docker --pull=never --network host --build-arg BINARY=prebuilt --target runtime -t $image <context>"
podman build --format docker --pull=never --network host --build-arg BINARY=prebuilt --target runtime \
    -t "$image" "$work/context" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
grep -E "STEP|COMMIT|Successfully|WARN" "$work/build.log"
podman image inspect "$image" --format \
    'user={{.Config.User}} entrypoint={{.Config.Entrypoint}} cmd={{.Config.Cmd}} healthcheck={{.Config.Healthcheck.Test}} size={{.Size}}'

log "fresh database $database"
show dropdb --if-exists -h 127.0.0.1 -U postgres "$database"
show createdb -h 127.0.0.1 -U postgres "$database"
database_url="$pg_url/$database"

log "outbox-relay demo in the container"
show podman run --rm --no-healthcheck --network host "$image" \
    --database-url "$database_url" --redis-url "$redis_url" demo --messages 2000

log "outbox-relay migrate, then run with deploy/relay.toml mounted"
show podman run --rm --no-healthcheck --network host "$image" --database-url "$database_url" migrate
# The HEALTHCHECK runs from `podman healthcheck run` below (podman's timers need systemd).
show podman run -d --name "$container" --network host --health-interval disable \
    -v "$PWD/deploy/relay.toml:/etc/outbox-relay/relay.toml:ro" \
    -e OUTBOX_DATABASE_URL="$database_url" -e OUTBOX_REDIS_URL="$redis_url" \
    -e OUTBOX_HTTP__LISTEN="127.0.0.1:$http_port" -e OUTBOX_REDIS__KEY_PREFIX="$key_prefix" \
    "$image" --config /etc/outbox-relay/relay.toml run >/dev/null
for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$http_port/readyz" 2>/dev/null && break
    sleep 0.2
done
show podman healthcheck run "$container" && echo "healthcheck: healthy"
show curl -sS "http://127.0.0.1:$http_port/readyz"
id=$(podman run --rm --no-healthcheck --network host "$image" --database-url "$database_url" \
    publish --topic orders.created '{"order_id": 7}')
echo "published $id"
stream="${key_prefix}events.orders.created"
for _ in $(seq 1 50); do
    [ "$(redis-cli -u "$redis_url" xlen "$stream")" -ge 1 ] && break
    sleep 0.2
done
show redis-cli -u "$redis_url" xrange "$stream" - + | grep -A1 -E '^(id|topic|payload)$' | grep -v -- '--'
curl -sS "http://127.0.0.1:$http_port/metrics" | grep -E '^outbox_(messages_forwarded_total|lease_active|lag_seconds)' || true

log "SIGTERM"
show podman stop --time 15 "$container" >/dev/null
echo "exit code: $(podman inspect "$container" --format '{{.State.ExitCode}}')"
podman logs "$container" 2>&1 | tail -4
[ "$(podman inspect "$container" --format '{{.State.ExitCode}}')" = 0 ]
log "ok"
