# syntax=docker/dockerfile:1
# The outbox-relay container image: a Rust builder stage and a slim Debian runtime that runs the
# binary as a non-root user (uid 10001), `outbox-relay` as the entrypoint, `run` as the default
# command, /metrics, /healthz and /readyz on port 9187.
#
#   docker build -t outbox-relay .
#   docker run --rm --network host -v "$PWD/deploy/relay.toml:/etc/outbox-relay/relay.toml:ro" \
#       -e OUTBOX_DATABASE_URL=postgres://postgres@127.0.0.1:5432/app \
#       -e OUTBOX_REDIS_URL=redis://127.0.0.1:6379 \
#       outbox-relay --config /etc/outbox-relay/relay.toml run
#
# BINARY=prebuilt skips the builder and copies a binary built elsewhere (a file `outbox-relay` at
# the root of the build context) into the same runtime stage: deploy/podman-check.sh uses it on
# machines whose Rust cannot run in a container. See docs/deployment.md.

ARG RUST_VERSION=1.94
ARG DEBIAN_RELEASE=bookworm
# Where the binary comes from: `builder` (compiled below) or `prebuilt` (from the context).
ARG BINARY=builder

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock README.md ./
COPY migrations migrations
COPY src src
# The registry and target caches survive between builds (BuildKit / buildah cache mounts).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin outbox-relay \
 && cp target/release/outbox-relay /usr/local/bin/outbox-relay

FROM scratch AS prebuilt
COPY outbox-relay /usr/local/bin/outbox-relay

FROM ${BINARY} AS binary

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: the system trust store for rediss:// and sslmode=verify-full (next to the
# bundled public roots); curl: the HEALTHCHECK below.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 outbox \
 && useradd --system --uid 10001 --gid outbox --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin outbox
COPY --from=binary --chmod=0755 /usr/local/bin/outbox-relay /usr/local/bin/outbox-relay
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
# `run` serves /metrics, /healthz and /readyz here (the variable beats `[http] listen` in the
# config file; change the port with it and the HEALTHCHECK follows).
ENV OUTBOX_HTTP__LISTEN=0.0.0.0:9187
EXPOSE 9187
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD curl -fsS -o /dev/null "http://127.0.0.1:${OUTBOX_HTTP__LISTEN##*:}/healthz" || exit 1
ENTRYPOINT ["outbox-relay"]
CMD ["run"]
