#!/bin/sh
# What the official redis image's entrypoint does, in short: options alone mean redis-server;
# as root, own /data and step down to the redis user; without a config file, protected mode off.
set -e
case "$1" in -*|*.conf) set -- redis-server "$@" ;; esac
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' +
    exec gosu redis "$0" "$@"
fi
if [ "$1" = redis-server ]; then
    case "$2" in *.conf) ;; *) shift; set -- redis-server --protected-mode no "$@" ;; esac
fi
umask 0077
exec "$@"
