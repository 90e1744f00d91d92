# jit-operator's image: a static binary on distroless, as a non-root user. It cannot be built
# on the project's own machines (they have no container engine); CI elsewhere builds it with
#   docker build -t ghcr.io/jit-operator/jit-operator:0.1.0 .

FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin jit-operator \
    && cp target/x86_64-unknown-linux-musl/release/jit-operator /jit-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /jit-operator /jit-operator
USER 65532:65532
ENTRYPOINT ["/jit-operator"]
