# syntax=docker/dockerfile:1
# Multi-stage build of the gamemetrics binary into a small non-root runtime image.

# The Rust release the project is built and tested with (scripts/image checks they agree).
FROM rust:1.95-slim-bookworm AS build
# librdkafka is built from source by rdkafka-sys (C toolchain, make); OpenSSL for TLS/SASL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
# Cache mounts keep crates and compiled dependencies between builds (BuildKit and buildah
# both honour them); the binary is copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin gamemetrics \
 && strip -o /usr/local/bin/gamemetrics target/release/gamemetrics

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gamemetrics
COPY --from=build /usr/local/bin/gamemetrics /usr/local/bin/gamemetrics
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/gamemetrics"]
CMD ["serve"]
