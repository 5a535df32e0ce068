#!/usr/bin/env bash
# The audits over N users (SIZES, default "100000 1000000"), each user with one wallet binding
# made by the backfill, and a thousand users merged into others:
#   - identity.verify_event_chain(), every chain;
#   - identity.check_integrity(), every check;
# against the floor of any audit, one plain read of every event's payload. Each reports its median
# wall time over ROUNDS rounds (default 3), taking turns, and the peak private memory (RssAnon) of
# its backend over the rounds: a peak that stays put from one size to the next means the audit's
# memory does not grow with the users.
# Run after `make install`: benches/audit.sh
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a sizes <<< "${SIZES:-100000 1000000}"
rounds=${ROUNDS:-3}

. scripts/throwaway.sh
. benches/lib.sh
throwaway_cluster identity_audit_bench "shared_buffers=1GB" "max_wal_size=8GB" "checkpoint_timeout=30min"
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$cluster" -p 5432 -U postgres)

contestants=(floor chains integrity)
declare -A statement=(
    [floor]="SELECT count(*), sum(octet_length(payload::text)) FROM identity.identity_events;"
    [chains]="SELECT count(*) FROM identity.verify_event_chain();"
    [integrity]="SELECT * FROM identity.check_integrity();")
declare -A label=(
    [floor]="plain read of every event's payload (the floor)"
    [chains]="\`identity.verify_event_chain()\`"
    [integrity]="\`identity.check_integrity()\`")

audit() { seconds_and_peak "$database" "" "${statement[$1]}"; }

users_database() {  # users_database <users>: a database of that many bound users, a thousand merged
    local database="audit_$1"
    "${psql[@]}" -d postgres -c "CREATE DATABASE $database"
    "${psql[@]}" -d "$database" >/dev/null <<SQL
SET client_min_messages = warning;
CREATE EXTENSION identity_bindings;
CREATE TABLE public.users (id uuid PRIMARY KEY, wallet_address text);
INSERT INTO public.users
SELECT gen_random_uuid(), '0x' || left(encode(sha256(int8send(i)), 'hex'), 40)
  FROM generate_series(1, $1) i;
SELECT * FROM identity.backfill_wallet_bindings();
WITH numbered AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM public.users LIMIT 2000)
SELECT identity.merge_users(a.id, b.id, '{"reason": "benchmark"}')
  FROM numbered a JOIN numbered b ON b.n = a.n + 1
 WHERE a.n % 2 = 1;
VACUUM ANALYZE;
CHECKPOINT;
SQL
    echo "$database"
}

echo "| users | audit | seconds (median of $rounds) | vs the floor | backend's peak memory (RssAnon) |"
echo "|---:|---|---:|---:|---:|"
for users in "${sizes[@]}"; do
    database=$(users_database "$users")
    declare -A times=() peaks=()
    take_turns "$rounds" "$users users, " audit "${contestants[@]}"
    for name in "${contestants[@]}"; do
        # shellcheck disable=SC2086 # the list of times is meant to split into arguments
        seconds=$(median 2 ${times[$name]})
        # shellcheck disable=SC2086
        printf '| %s | %s | %s | %s | %s MiB |\n' "$users" "${label[$name]}" "$seconds" \
            "$(ratio "$seconds" "$(median 2 ${times[floor]})")" "$((peaks[$name] / 1024))"
    done
    "${psql[@]}" -d postgres -c "DROP DATABASE $database"
done
