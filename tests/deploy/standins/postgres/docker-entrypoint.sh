#!/bin/bash
# What the official postgres image's entrypoint does for `postgres`, in short: as root, own
# PGDATA and step down to the postgres user (then read the settings again, as that user); an
# empty PGDATA is initialised (the superuser POSTGRES_USER with POSTGRES_PASSWORD or the first
# line of POSTGRES_PASSWORD_FILE, the database POSTGRES_DB), listening on every address, with
# scram-sha-256 password logins from anywhere; then postgres runs in the foreground.
set -Eeo pipefail
if [ "${1:0:1}" = '-' ]; then set -- postgres "$@"; fi
if [ "$1" != postgres ]; then exec "$@"; fi
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    exec gosu postgres "$BASH_SOURCE" "$@"
fi
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    POSTGRES_PASSWORD="$(head -n 1 "$POSTGRES_PASSWORD_FILE")"
fi
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo >&2 'Error: the database is uninitialised and no superuser password is set (POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE)'
        exit 1
    fi
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    echo 'host all all all scram-sha-256' >>"$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
        psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
            -c "CREATE DATABASE \"$POSTGRES_DB\"" >/dev/null
        pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    fi
    echo 'PostgreSQL init process complete; ready for start up.'
fi
exec "$@"
