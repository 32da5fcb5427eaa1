# syntax=docker/dockerfile:1
# wsbridge as a small image: build the release binary (symbols stripped by
# the release profile), then copy it alone into a slim runtime that runs as
# an unprivileged user, with a HEALTHCHECK from `wsbridge health`.
#
#     docker build -t wsbridge --build-arg WSBRIDGE_GIT_COMMIT=$(git rev-parse --short=12 HEAD) .
#     docker run --rm -p 8080:8080 --add-host=host.docker.internal:host-gateway \
#         wsbridge --upstream http://host.docker.internal:3000
#
# (arguments replace the CMD: with --upstream alone, no file and no routes,
# every path bridges to the app with every transport allowed).
#
# The shipped proxy.toml is at /etc/wsbridge/proxy.toml; mount your own over it
# (-v $PWD/proxy.toml:/etc/wsbridge/proxy.toml:ro). Its upstream
# http://127.0.0.1:3000 means "the app in the same pod or network namespace"
# (a Kubernetes sidecar, or docker run --network container:APP).
#
# Base images are pinned by version; to pin by digest as well, resolve them
# with `docker buildx imagetools inspect rust:1.95.0-bookworm` and write
# `FROM rust:1.95.0-bookworm@sha256:...`. Build and runtime are both Debian 12
# (bookworm), so the binary finds the glibc it was linked against.

ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=debian:12.12-slim

# ---- build ------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
# .git is not in the build context: the commit for `wsbridge --version` and
# the image label comes in as a build argument.
ARG WSBRIDGE_GIT_COMMIT=unknown
WORKDIR /src
COPY . .
# The cache mounts keep the registry and compiled dependencies between builds;
# the binary is copied out because the target cache is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    WSBRIDGE_GIT_COMMIT="${WSBRIDGE_GIT_COMMIT}" \
    cargo build --release --locked --bin wsbridge \
    && install -D -m 0755 target/release/wsbridge /out/wsbridge

# ---- runtime ----------------------------------------------------------------
FROM ${RUNTIME_IMAGE}
ARG WSBRIDGE_GIT_COMMIT=unknown
ARG WSBRIDGE_VERSION=0.1.0
LABEL org.opencontainers.image.title="wsbridge" \
      org.opencontainers.image.description="Reverse proxy that re-exposes WebSocket backends to browsers over SSE, NDJSON streaming and long-polling" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.version="${WSBRIDGE_VERSION}" \
      org.opencontainers.image.revision="${WSBRIDGE_GIT_COMMIT}" \
      org.opencontainers.image.base.name="docker.io/library/debian:12.12-slim"
# ca-certificates: system roots for upstream.ca_file setups and for tools run
# in the container; wsbridge itself also carries the webpki roots.
# Unpinned on purpose: bookworm's security updates replace old versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 wsbridge \
    && useradd --system --uid 10001 --gid wsbridge --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin wsbridge
COPY --from=build /out/wsbridge /usr/local/bin/wsbridge
COPY proxy.toml /etc/wsbridge/proxy.toml
# Numeric, so Kubernetes runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
EXPOSE 8080
# `wsbridge health` asks {prefix}/healthz on the [admin] listener if the file
# has one, else on server.listen (0.0.0.0 is asked on 127.0.0.1), and exits 0
# only on a 200. WSBRIDGE_LISTEN in the environment applies to it as to the
# server; a different --listen on the command line needs
# `--health-cmd "wsbridge health --url http://127.0.0.1:PORT/_bridge/healthz"`.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["wsbridge", "health", "--config", "/etc/wsbridge/proxy.toml", "--timeout", "3s"]
# The binary drains on SIGTERM (readiness fails, sessions get close 1001) and
# exits 0 within server.drain_timeout; give `docker stop -t` more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["wsbridge"]
CMD ["--config", "/etc/wsbridge/proxy.toml"]
