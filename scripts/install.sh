#!/usr/bin/env bash
# Installs the release build into the PostgreSQL whose pg_config is $1 (make install; and
# scripts/other-versions.sh for 16-18).
#
# cargo pgrx installs the current version's script and the upgrade scripts (sql/*--*--*.sql);
# the frozen install scripts of earlier releases go in by hand, for upgrade tests.
set -euo pipefail
cd "$(dirname "$0")/.."

pg_config=$1
cargo pgrx install --release --pg-config "$pg_config"
install -m 0644 sql/identity_bindings--0.1.0.sql "$("$pg_config" --sharedir)/extension/"
