# The `datatracing` image: one binary for all-in-one, collector, query and operator.
# Not built in CI (no container engine there); see README "Running on Kubernetes".
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p datatracing-cli

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/datatracing /usr/local/bin/datatracing
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/datatracing"]
CMD ["all-in-one"]
