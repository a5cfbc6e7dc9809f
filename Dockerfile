# syntax=docker/dockerfile:1
#
# secrets-webhook: a static (musl) binary on distroless, non-root.
#
#   DOCKER_BUILDKIT=1 docker build -t secrets-webhook:latest .
#
# The binary embeds its wasm policy: host/build.rs builds guest/component for wasm32-wasip2 itself.

FROM rust:1.95-bookworm AS builder

# musl-tools follows the pinned bookworm base image; pinning its Debian revision here only breaks rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# rust-toolchain.toml pins the exact toolchain; install it (and the two targets) in a layer of its own.
COPY rust-toolchain.toml ./
RUN rustup toolchain install \
 && rustup target add x86_64-unknown-linux-musl wasm32-wasip2 \
 && rustc --version

# Every workspace member must be in the context, or cargo cannot load the workspace; .ci/run
# builds exactly these paths in an empty directory (.ci/docker-context) to prove it.
COPY Cargo.toml Cargo.lock ./
COPY wit ./wit
COPY guest ./guest
COPY host ./host
COPY e2e ./e2e
COPY load ./load
COPY examples ./examples

# ring's C/assembly parts for the musl target.
ENV CC_x86_64_unknown_linux_musl=musl-gcc

# Cache mounts keep the registry and the build between builds; the binary is copied out of the
# cached target dir, since cache mounts are not part of the image layer.
RUN --mount=type=cache,id=secrets-webhook-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=secrets-webhook-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=secrets-webhook-target,target=/src/target \
    cargo build --release --locked -p secrets-webhook --target x86_64-unknown-linux-musl \
 && install -D -m 0755 target/x86_64-unknown-linux-musl/release/secrets-webhook /out/secrets-webhook

FROM gcr.io/distroless/static-debian12:nonroot

LABEL org.opencontainers.image.title="secrets-webhook" \
      org.opencontainers.image.description="Kubernetes mutating admission webhook that injects Flyte secrets into pods" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/secrets-webhook /usr/local/bin/secrets-webhook

USER 65532:65532
# 9443: HTTPS admission reviews (and /healthz, /readyz); 9090: plain-HTTP /metrics, /healthz, /readyz.
EXPOSE 9443 9090
ENTRYPOINT ["/usr/local/bin/secrets-webhook"]
CMD ["serve"]
