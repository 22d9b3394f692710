# syntax=docker/dockerfile:1
# One image for every role: `docker run IMAGE users --port 3001`, `docker run IMAGE gateway`.
#
# The base images are build arguments with the real defaults. Where no registry can be reached,
# `make image` (scripts/image.sh) makes local stand-ins for both and passes them in.
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# checkov:skip=CKV_DOCKER_2: no HEALTHCHECK by contract: Kubernetes probes /health/live and /health/ready, and the runtime image has no shell or curl to run one
# checkov:skip=CKV_DOCKER_7: the FROM lines use the ARGs above, pinned to versioned tags (rust:1.95-slim-bookworm, cc-debian12:nonroot); checkov cannot resolve ARGs

# ---- dependencies: compiled once per Cargo.lock change (this layer is cached) ---------------
FROM ${RUST_IMAGE} AS deps
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
COPY Cargo.toml Cargo.lock ./
# Build settings of C dependencies (mimalloc's arena commit): part of the dependency layer.
COPY .cargo ./.cargo
# awc with our one-function patch (vendor/awc/PATCHED.md), a dependency like any other.
COPY vendor ./vendor
# An empty crate with the same manifest builds every dependency; the real sources then only
# rebuild `platform` itself. The crate's own artifacts are removed so they cannot look fresh.
RUN mkdir src \
 && printf 'fn main() {}\n' > src/main.rs \
 && : > src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src target/release/platform target/release/deps/platform-* \
           target/release/deps/libplatform-* target/release/.fingerprint/platform-*

# ---- build ----------------------------------------------------------------------------------
FROM deps AS build
COPY src ./src
RUN cargo build --release --locked \
 && ./target/release/platform --version

# ---- runtime: glibc + libgcc only, no shell, non-root ---------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="platform" \
      org.opencontainers.image.description="One binary, several roles: an API gateway and a users service over Redis" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="https://github.com/example/platform"
COPY --from=build --chown=0:0 --chmod=0555 /src/target/release/platform /usr/local/bin/platform
# distroless' `nonroot` user; numeric so Kubernetes can check runAsNonRoot.
USER 65532:65532
EXPOSE 3000 3001
ENTRYPOINT ["platform"]
CMD ["--help"]
