# Sourced by the scripts that need a throwaway cluster or the interop npm packages.
# Run from the repository root.

# throwaway_cluster PREFIX [setting=value...]: starts a cluster (see cluster.sh) in a fresh work
# directory; sets $work and $cluster (the socket directory) and removes both on every exit path.
throwaway_cluster() {
    local prefix=$1
    shift
    work=$(mktemp -d "/tmp/$prefix.XXXXXX")
    chmod 0755 "$work"  # the cluster inside runs as postgres
    cluster="$work/cluster"
    trap 'scripts/cluster.sh stop "$cluster"; rm -rf "$work"' EXIT
    scripts/cluster.sh start "$cluster" "$@"
}

# interop_packages: installs tests/interop's pinned npm packages when missing or outdated.
interop_packages() {
    if [ ! -d tests/interop/node_modules ] || [ tests/interop/package-lock.json -nt tests/interop/node_modules ]; then
        (cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
    fi
}
