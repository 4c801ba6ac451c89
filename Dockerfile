# syntax=docker/dockerfile:1
# The Portcullis image: one static binary on an empty base, run as a numeric non-root user.
#
#   docker buildx build --platform linux/amd64 --build-arg REVISION="$(git rev-parse --short=12 HEAD)" -t portcullis .
#   docker buildx build --platform linux/arm64 --build-arg TARGET=aarch64-unknown-linux-musl .
#
# The build stage runs on the platform being built, so TARGET defaults to that machine's own
# musl triple; the release workflow builds each platform on a runner of its architecture.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# The Rust target triple to build for: x86_64-unknown-linux-musl or aarch64-unknown-linux-musl.
ARG TARGET=""
# The commit built (`--build-arg REVISION=$(git rev-parse --short=12 HEAD)`): the binary reports
# it in portcullis_build_info and the image in its revision label.
ARG REVISION=unknown
# cmake builds Pingora's zlib-ng; musl-tools gives the C compiler for ring and zlib-ng on musl.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake musl-tools \
    && rm -rf /var/lib/apt/lists/*
# The release profile of Cargo.toml (whole-program LTO, one codegen unit), symbols stripped.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never
# cargo-auditable embeds the dependency list in the binary, so that image scanners (Trivy) and
# the SBOM see the crates inside it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo install --locked cargo-auditable@0.7.7
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eu; \
    target="${TARGET:-$(uname -m)-unknown-linux-musl}"; \
    rustup target add "$target"; \
    PORTCULLIS_COMMIT="$REVISION" cargo auditable build --locked --release --target "$target" --bin portcullis; \
    mkdir -p /out; \
    cp "target/$target/release/portcullis" /out/portcullis

# Listener ports 80 and 443 are privileged: the binary carries CAP_NET_BIND_SERVICE as a file
# capability, so a non-root process gets that one capability and no other. A pod grants it with
# `capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}`, which also lets it through with
# allowPrivilegeEscalation: false.
FROM debian:bookworm-slim AS caps
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libcap2-bin \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/portcullis /portcullis
RUN setcap cap_net_bind_service=+ep /portcullis && getcap /portcullis

FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="portcullis" \
      org.opencontainers.image.description="A Kubernetes Gateway API implementation on a Pingora data plane" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/portcullis-dev/portcullis" \
      org.opencontainers.image.url="https://portcullis.dev" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
# The CA roots: Pingora loads them when the gateway starts (and stops the process without them);
# they verify backends whose BackendTLSPolicy asks for well-known CAs.
COPY --from=caps /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=caps /portcullis /portcullis
USER 65532:65532
EXPOSE 80 443 9901
# checkov:skip=CKV_DOCKER_2: the image has no shell or client to run a HEALTHCHECK with; Kubernetes probes /healthz and /readyz on the admin port instead
ENTRYPOINT ["/portcullis"]
CMD ["run"]
