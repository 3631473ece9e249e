# syntax=docker/dockerfile:1
#
# redis-sidecar: a RESP proxy in front of Redis.
#
#   docker build --build-arg GIT_COMMIT=$(git rev-parse --short=12 HEAD) -t redis-sidecar .
#   docker run --rm -p 127.0.0.1:6380:6380 -e AUTOBOT_REDIS_HOST=redis redis-sidecar
#
# Needs BuildKit (the default builder of current Docker) for the cache mounts.

############################ build ############################
FROM rust:1-bookworm AS builder
# The commit for `redis-sidecar --version` and PROXY INFO (build.rs): .git is not in
# the build context, so pass it: --build-arg GIT_COMMIT=$(git rev-parse --short=12 HEAD).
# Without it the commit reads `unknown`.
ARG GIT_COMMIT=
ENV REDIS_SIDECAR_GIT_COMMIT=${GIT_COMMIT}
WORKDIR /build
COPY . .
# The same release build as everywhere else; --locked keeps it on Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/redis-sidecar /out/redis-sidecar

############################ runtime ############################
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sidecar \
    && useradd --system --uid 10001 --gid sidecar --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sidecar

COPY --from=builder /out/redis-sidecar /usr/local/bin/redis-sidecar
COPY config/redis-databases.yaml /etc/redis-sidecar/redis-databases.yaml

# Numeric, so Kubernetes' runAsNonRoot can verify it (deploy/kubernetes/pod.yaml).
USER 10001:10001
EXPOSE 6380

# Healthy when the proxy answers PING (NOAUTH also proves it is serving when clients
# must authenticate).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD redis-cli -h 127.0.0.1 -p 6380 PING | grep -qE 'PONG|NOAUTH' || exit 1

ENTRYPOINT ["redis-sidecar"]
# Clients reach the container through its published port (from the bridge, not
# loopback), so protected mode is off here, as in Redis's own image: publish the
# port on the host's loopback only (as docker-compose.yml does), or set
# client_password.
CMD ["--config", "/etc/redis-sidecar/redis-databases.yaml", "--listen", "0.0.0.0:6380", "--no-protected-mode"]
