#!/bin/sh
# An option as the first argument means "turnserver with these options".
set -e
case "${1:-}" in
    -*) set -- turnserver "$@" ;;
esac
exec "$@"
