# Berth as a container image: FROM scratch, one static binary, non-root.
#
# Nothing is pulled or compiled inside: the binary is built first, then
# copied in. From the repository's root:
#
#   CGO_ENABLED=0 GOFLAGS=-buildvcs=true go build -trimpath -o dist/berth ./cmd/berth && mkdir -p dist/data && cp /etc/ssl/certs/ca-certificates.crt dist/ && docker build -t berth -f Dockerfile dist
#
# (the CA bundle lets Berth reach an S3 endpoint over TLS; dist/data becomes
# /data, owned by Berth's user). Run it:
#
#   docker run -e BERTH_API_KEY=… -e BERTH_PUBLIC_URL=http://127.0.0.1:7080 -p 7070:7070 -p 7080:7080 -v berth-data:/data berth
#
# (BERTH_PUBLIC_URL: the proxy as browsers reach it, which connect URLs name.)
#
# See README.md ("Deploying Berth") for the backends it can run (process
# backends from its own filesystem), PostgreSQL and S3 (docker-compose.yml),
# and systemd.
FROM scratch
COPY berth /berth
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --chown=65532:65532 data /data
USER 65532:65532
ENV BERTH_DATA_DIR=/data \
    BERTH_API_ADDR=0.0.0.0:7070 \
    BERTH_PROXY_ADDR=0.0.0.0:7080 \
    TMPDIR=/data
VOLUME /data
EXPOSE 7070 7080
ENTRYPOINT ["/berth"]
CMD ["serve"]
