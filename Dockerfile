# syntax=docker/dockerfile:1
# Multi-stage build of the dyconit-chat server.
#
#   docker build -t dyconit-chat:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9090:9090 -e DYCONIT_ADMIN_TOKEN=... dyconit-chat:0.1.0
#
# No protoc is needed: build.rs compiles proto/chat.proto with protox (pure Rust).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
# The registry and target caches survive between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin dyconit-chat \
    && install -D -m 0755 target/release/dyconit-chat /out/dyconit-chat

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN groupadd --system --gid 10001 dyconit \
    && useradd --system --uid 10001 --gid dyconit --no-create-home --shell /usr/sbin/nologin dyconit \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/dyconit-chat
COPY --from=builder /out/dyconit-chat /usr/local/bin/dyconit-chat
USER 10001:10001
# Listen on all interfaces inside the container. A non-loopback admin
# address makes the server require DYCONIT_ADMIN_TOKEN (it refuses to start
# without one), so set it when running the image.
# Messages are stored (SQLite) in /var/lib/dyconit-chat: mount a volume
# there so they survive the container.
ENV DYCONIT_LISTEN=0.0.0.0:50051 \
    DYCONIT_ADMIN_LISTEN=0.0.0.0:9090 \
    DYCONIT_DATA_DIR=/var/lib/dyconit-chat \
    DYCONIT_LOG=info
VOLUME /var/lib/dyconit-chat
EXPOSE 50051 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/dyconit-chat"]
CMD ["serve"]
