# chatd container image: a Rust builder stage, then a minimal distroless runtime as a non-root user.
# Build: docker build -t chatd .     Run: docker compose up

FROM rust:1.95-slim-bookworm AS build
# The official slim image has gcc and libc6-dev but no make, and jemalloc's build (our allocator,
# tikv-jemalloc-sys) runs make: without it the build stops at exit 101. Its version is the base
# image's Debian release's, like gcc's.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The image gets stripped binaries (chatd: 91 MB with debug info, 10 MB without); the repo's release
# profile keeps debug info for profiling.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
# Dependencies first, built on their own layer from stub sources: editing src/ rebuilds only
# chatd itself, not the ~200 crates under it.
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
RUN mkdir -p src/bin \
    && echo 'fn main() {}' > src/bin/chatd.rs \
    && echo 'fn main() {}' > src/bin/chatctl.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bins \
    && rm -rf src
COPY src ./src
# The HTTP API serves its description (/v1/openapi.json) from the binary.
COPY docs/openapi.json ./docs/openapi.json
# Newer than the stubs' build, so cargo rebuilds the crate itself.
RUN touch src/lib.rs src/bin/chatd.rs src/bin/chatctl.rs \
    && cargo build --release --locked --bins \
    && mkdir -p /state/var/lib/chatd

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/chatd /usr/local/bin/chatd
# The console client too: `docker compose exec chatd chatctl connect henry` (distroless has no
# shell, and no one should need a Rust toolchain to chat).
COPY --from=build /src/target/release/chatctl /usr/local/bin/chatctl
COPY chat.toml /etc/chatd/chat.toml
# Durable history lives on a volume (compose mounts a named one here), so it outlives the container
# and image upgrades. The directory is the runtime user's so a fresh volume is writable.
COPY --from=build --chown=65532:65532 /state/var/lib/chatd /var/lib/chatd
VOLUME ["/var/lib/chatd"]
# Inside the container chatd listens on every interface; publish the ports you need.
ENV CHATD_CONFIG=/etc/chatd/chat.toml \
    CHATD_SERVER__HOST=0.0.0.0 \
    CHATD_ADMIN__LISTEN=0.0.0.0:8002 \
    CHATD_LOG__FORMAT=json \
    CHATD_STORAGE__PATH=/var/lib/chatd/chatd.db
EXPOSE 8000 8002
# distroless "nonroot" (65532), by number so any runtime can resolve it.
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/chatd", "healthcheck"]
# Exec form: chatd is PID 1 and receives SIGTERM directly for its graceful shutdown.
ENTRYPOINT ["/usr/local/bin/chatd"]
