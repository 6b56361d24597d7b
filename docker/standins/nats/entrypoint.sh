#!/bin/sh
# An option as the first argument means "nats-server with these options".
set -e
case "${1:-}" in
    -*) set -- nats-server "$@" ;;
esac
exec "$@"
