#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster, run as the postgres user (initdb refuses root).
#
#   scripts/cluster.sh start DIR [extra postgres -c settings...]   # prints nothing; socket in DIR
#   scripts/cluster.sh standby DIR PRIMARY_DIR [settings...]   # a hot standby of PRIMARY_DIR's cluster
#   scripts/cluster.sh restart DIR   # starts it again (after a crash or a halt) with the same settings
#   scripts/cluster.sh halt DIR      # stops it cleanly (a shutdown checkpoint) and keeps its data
#   scripts/cluster.sh upgrade DIR OLD_DIR [settings...]   # pg_upgrade of OLD_DIR's halted cluster
#   scripts/cluster.sh stop DIR      # stops it at once and removes it
#
# The cluster listens only on a Unix socket in DIR (no TCP), so it never collides with another
# cluster on this machine: connect with host=DIR port=5432 user=postgres.
set -euo pipefail

# Debian's PostgreSQL 15 unless PG_BINDIR names another build's programs (scripts/other-versions.sh).
# A cluster remembers the programs that made it (DIR/bindir): every later action uses those.
BIN=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
PORT=5432

programs_of() {
    cat "$1/bindir" 2>/dev/null || echo "$BIN"
}

# initdb needs the data of the cluster's locale (CLUSTER_LOCALE, C.UTF-8 unless set; e.g.
# en_US.UTF-8 to measure under a linguistic collation): Debian generates a missing one on demand.
ensure_locale() {
    local wanted=$1
    local compact=${wanted/UTF-8/utf8}
    if locale -a | grep -ix -e "$wanted" -e "$compact" >/dev/null; then return; fi
    command -v locale-gen >/dev/null || { apt-get update -qq && apt-get install -y -qq locales >/dev/null; }
    sed -i "s/^# *\($wanted \)/\1/" /etc/locale.gen
    grep -q "^$wanted " /etc/locale.gen || { echo "no locale $wanted in /etc/locale.gen" >&2; exit 1; }
    locale-gen >/dev/null
}

start() {
    local dir=$1; shift
    initialize "$dir"
    remember_settings "$dir" "$@"
    launch "$dir"
}

# An empty cluster's data directory in DIR/data (initdb's further options after DIR).
initialize() {
    local dir=$1; shift
    local locale=${CLUSTER_LOCALE:-C.UTF-8}
    ensure_locale "$locale"
    install -d -o postgres -g postgres -m 0700 "$dir"
    echo "$BIN" > "$dir/bindir"
    runuser -u postgres -- "$BIN/initdb" -D "$dir/data" -A trust -U postgres --locale="$locale" \
        --no-sync "$@" >/dev/null
}

remember_settings() {
    local dir=$1; shift
    local settings=(-c "listen_addresses=" -c "unix_socket_directories=$dir" -p "$PORT")
    for setting in "$@"; do settings+=(-c "$setting"); done
    printf '%q ' "${settings[@]}" > "$dir/settings"
}

launch() {
    local dir=$1
    # Started without RUST_BACKTRACE, as a production server is: with it, every error raised
    # through SPI would carry a Rust backtrace in its DETAIL.
    env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE \
        runuser -u postgres -- "$(programs_of "$dir")/pg_ctl" -D "$dir/data" -l "$dir/server.log" \
        -w -t 60 -o "$(cat "$dir/settings")" start >/dev/null
    # The socket directory must be reachable by the (root) client.
    chmod 0755 "$dir"
}

# A hot standby of the cluster in $2: a base backup of it, streaming from it (pg_basebackup -R
# writes primary_conninfo and standby.signal), started with its own settings.
standby() {
    local dir=$1 primary=$2; shift 2
    install -d -o postgres -g postgres -m 0700 "$dir"
    echo "$BIN" > "$dir/bindir"
    runuser -u postgres -- "$BIN/pg_basebackup" -h "$primary" -p "$PORT" -U postgres \
        -D "$dir/data" -R -X stream --checkpoint=fast --no-sync
    remember_settings "$dir" "$@"
    launch "$dir"
}

# What a DBA does to move to another major version: a new cluster of $BIN's version, made by its
# pg_upgrade from the halted cluster in OLD_DIR (whose own programs it runs for the old side),
# then started with SETTINGS. pg_upgrade copies the files, so the old cluster is left as it was.
upgrade() {
    local dir=$1 old=$2; shift 2
    local old_bin checksums
    old_bin=$(programs_of "$old")
    # pg_upgrade requires the same data checksum setting, whose default changed in 18.
    checksums=$("$old_bin/pg_controldata" "$old/data" | awk -F: '/checksum version/ {print $2 + 0}')
    if [ "$checksums" != 0 ]; then
        initialize "$dir" --data-checksums
    elif "$BIN/initdb" --help | grep -- --no-data-checksums >/dev/null; then
        initialize "$dir" --no-data-checksums
    else
        initialize "$dir"
    fi
    # The old cluster's ALTER SYSTEM settings (shared_preload_libraries, say) carry over, as a DBA
    # configures the new cluster before running pg_upgrade, which starts it with its own settings.
    install -o postgres -g postgres -m 0600 "$old/data/postgresql.auto.conf" "$dir/data/"
    # pg_upgrade runs as the clusters' owner, from a directory it may write its logs into.
    if ! (cd "$dir" && runuser -u postgres -- "$BIN/pg_upgrade" --old-bindir "$old_bin" \
        --new-bindir "$BIN" --old-datadir "$old/data" --new-datadir "$dir/data" \
        --username postgres --socketdir "$dir" >"$dir/pg_upgrade.out" 2>&1); then
        cat "$dir/pg_upgrade.out" >&2
        find "$dir" -name '*.log' -path '*pg_upgrade*' -exec tail -n 40 {} + >&2
        exit 1
    fi
    remember_settings "$dir" "$@"
    launch "$dir"
}

halt() {
    runuser -u postgres -- "$(programs_of "$1")/pg_ctl" -D "$1/data" -m fast -w stop >/dev/null
}

stop() {
    local dir=$1
    if [ -f "$dir/data/postmaster.pid" ]; then
        runuser -u postgres -- "$(programs_of "$dir")/pg_ctl" -D "$dir/data" -m immediate -w stop \
            >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}

case "${1:-}" in
    start) shift; start "$@" ;;
    standby) shift; standby "$@" ;;
    restart) shift; launch "$@" ;;
    halt) shift; halt "$@" ;;
    upgrade) shift; upgrade "$@" ;;
    stop) shift; stop "$@" ;;
    *) echo "usage: $0 start DIR [setting=value...] | standby DIR PRIMARY_DIR [setting=value...] | restart DIR | halt DIR | upgrade DIR OLD_DIR [setting=value...] | stop DIR" >&2; exit 2 ;;
esac
