# syntax=docker/dockerfile:1
# wsbridge as a small image: build the release binary, then copy it alone into
# a slim runtime that runs as an unprivileged user.
#
#     docker build -t wsbridge .
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

# ---- build ------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and compiled dependencies between builds;
# the binary is copied out because the target cache is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin wsbridge \
    && install -D -m 0755 target/release/wsbridge /out/wsbridge

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim
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
# The binary drains on SIGTERM (readiness fails, sessions get close 1001) and
# exits 0 within server.drain_timeout; give `docker stop -t` more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["wsbridge"]
CMD ["--config", "/etc/wsbridge/proxy.toml"]
