#!/bin/sh
# As the official haproxy image's entrypoint: options alone mean haproxy; haproxy runs in
# master-worker mode (-W) in the foreground (-db).
set -e
case "$1" in -*) set -- haproxy "$@" ;; esac
if [ "$1" = haproxy ]; then
    shift
    set -- haproxy -W -db "$@"
fi
exec "$@"
