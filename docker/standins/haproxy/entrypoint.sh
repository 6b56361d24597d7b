#!/bin/sh
# An option as the first argument means "haproxy with these options";
# haproxy itself runs in the foreground (-db) as master-worker (-W).
set -e
case "${1:-}" in
    -*) set -- haproxy "$@" ;;
esac
if [ "${1:-}" = haproxy ]; then
    shift
    set -- haproxy -W -db "$@"
fi
exec "$@"
