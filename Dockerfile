# syntax=docker/dockerfile:1
# roost in a container: a static-ish binary on distroless, as a non-root
# user, its store and password file on the /data volume.
#
#   docker build -t roost .
#   echo "$PW" | docker run --rm -i -v roost-data:/data roost passwd add alice
#   docker run -d --name roost -p 1883:1883 -v roost-data:/data roost
#   docker kill -s HUP roost       # re-read configuration, certificates, passwords, ACLs
#
# The configuration is packaging/docker/roost.toml, at /etc/roost/roost.toml:
# mount your own there (-v ./roost.toml:/etc/roost/roost.toml:ro) to change it.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
# The release profile keeps line tables for profiling; the image does not
# need them.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=true
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p roost-tokio \
    && install -D -m 755 target/release/roost /out/usr/local/bin/roost \
    && install -d -m 750 /out/data

# glibc and libgcc, nothing else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/roost /usr/local/bin/roost
COPY --from=build --chown=65532:65532 /out/data /data
COPY packaging/docker/roost.toml /etc/roost/roost.toml
USER 65532:65532
VOLUME ["/data"]
EXPOSE 1883
ENTRYPOINT ["/usr/local/bin/roost", "--config", "/etc/roost/roost.toml"]
