# pullgate's container image: one static binary on an empty base, run as user 65532.
#
#   docker build -t pullgate .                        # from source (BuildKit, Docker 23 and later)
#
# Without a Docker daemon, or where the golang image cannot be pulled, build the binary outside and use the
# prebuilt target, which needs no base image at all (docs/readme-image.md):
#
#   CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o dist/pullgate ./cmd/pullgate
#   cp /etc/ssl/certs/ca-certificates.crt dist/
#   buildah --storage-driver vfs bud --isolation chroot --target prebuilt -t pullgate .
#
# The two final stages differ only in where /pullgate and the CA bundle come from (TestDockerfileTargets
# checks that). A scratch stage has no shell to chown with: the data directory, owned by 65532, comes from
# build/image/data-dir.tar, which ADD unpacks with the owners and modes it records (TestDockerfileTargets
# checks them too). --chmod keeps a checkout's umask out of the image's modes.

ARG VERSION=dev
ARG REVISION=unknown

FROM golang:1.26-bookworm AS build
WORKDIR /src
# The module download is its own layer: it is rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/pullgate ./cmd/pullgate

# prebuilt: dist/pullgate (built with CGO_ENABLED=0, as above) and dist/ca-certificates.crt from the build
# context.
FROM scratch AS prebuilt
ARG VERSION
ARG REVISION
COPY --chmod=0644 build/image/passwd build/image/group /etc/
COPY --chmod=0644 dist/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --chmod=0755 dist/pullgate /pullgate
ADD build/image/data-dir.tar /
USER 65532:65532
WORKDIR /var/lib/pullgate
VOLUME /var/lib/pullgate
ENV PULLGATE_DATA_DIR=/var/lib/pullgate PULLGATE_METRICS_ADDR=:9090
EXPOSE 5443 9090
LABEL org.opencontainers.image.title="pullgate" \
      org.opencontainers.image.description="A pull-through caching OCI registry proxy" \
      org.opencontainers.image.source="https://github.com/pullgate/pullgate" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
ENTRYPOINT ["/pullgate"]
CMD ["serve"]

# The default target: the binary built above, and Debian's CA bundle from the same image.
FROM scratch AS image
ARG VERSION
ARG REVISION
COPY --chmod=0644 build/image/passwd build/image/group /etc/
COPY --chmod=0644 --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --chmod=0755 --from=build /out/pullgate /pullgate
ADD build/image/data-dir.tar /
USER 65532:65532
WORKDIR /var/lib/pullgate
VOLUME /var/lib/pullgate
ENV PULLGATE_DATA_DIR=/var/lib/pullgate PULLGATE_METRICS_ADDR=:9090
EXPOSE 5443 9090
LABEL org.opencontainers.image.title="pullgate" \
      org.opencontainers.image.description="A pull-through caching OCI registry proxy" \
      org.opencontainers.image.source="https://github.com/pullgate/pullgate" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
ENTRYPOINT ["/pullgate"]
CMD ["serve"]
