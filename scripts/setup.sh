#!/usr/bin/env bash
# Installs what building, testing and the demo need, and only what is missing: Debian packages,
# cargo-pgrx (pinned), and pgrx's registration of Debian's PostgreSQL 15. Safe to run again.
set -euo pipefail

PGRX_VERSION=0.18.1
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-15-cron libclang-dev clang pkg-config build-essential sudo procps curl xz-utils)

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh installs Debian packages: run it as root (these machines work as root)." >&2
    exit 1
fi
command -v cargo >/dev/null || { echo "cargo is missing: install the Rust toolchain (rustup) first." >&2; exit 1; }

# Node.js runs the wallet-interop tests (viem); any distribution's node 18+ will do.
command -v node >/dev/null && command -v npm >/dev/null || PACKAGES+=(nodejs npm)

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep "install ok installed" >/dev/null || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -F "$PGRX_VERSION" >/dev/null; then
    say "installing cargo-pgrx $PGRX_VERSION (a few minutes, once)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi

if ! grep -qs '^pg15 = ' "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    say "registering Debian's PostgreSQL 15 with pgrx"
    cargo pgrx init --pg15 "$PG_CONFIG" >/dev/null
fi
