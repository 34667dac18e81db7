# Gantry: one image for `gantry serve` and `gantry worker`.
# docker build -t gantry .

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin gantry

FROM debian:bookworm-slim
# git fetches sources; bubblewrap sandboxes every phase of a run.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates git bubblewrap \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /var/lib/gantry gantry
COPY --from=build /src/target/release/gantry /usr/local/bin/gantry
USER gantry
WORKDIR /var/lib/gantry
ENV GANTRY_DATA_DIR=/var/lib/gantry/data
EXPOSE 8080
ENTRYPOINT ["gantry"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
