#!/usr/bin/env bash
# Backfill of N users (default 1,000,000), side by side in one run on the same data:
#   - the seed application's single-statement backfill: INSERT … ON CONFLICT DO NOTHING RETURNING
#     feeding the event INSERT, one transaction, on tables shaped like the seed's;
#   - identity.backfill_wallet_bindings() (one transaction, batches of 10,000);
#   - CALL identity.backfill_wallet_bindings_in_batches() (a commit per batch of 10,000), in the
#     calling session alone (max_parallel_backfill_workers = 0) and with its default workers (2).
# Each starts from a copy of the same template database, after a CHECKPOINT. Wallets are random
# (real addresses are hashes), so no contestant gets index inserts in key order for free. The
# contestants take turns for ROUNDS rounds (default 3; disk latency drifts on a shared machine) and
# each reports its median wall time, and the peak private memory (RssAnon, sampled; VmHWM would
# count the shared buffers it touched) of the calling backend over the rounds.
# CONTESTANTS="cte workers" runs a subset (cte always, as the reference).
# Run after `make install`: benches/backfill.sh [rows]
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
rounds=${ROUNDS:-3}

. scripts/throwaway.sh
. benches/lib.sh
throwaway_cluster identity_backfill_bench "shared_buffers=1GB" "max_wal_size=8GB" "checkpoint_timeout=30min"
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$cluster" -p 5432 -U postgres)

"${psql[@]}" -d postgres -c "CREATE DATABASE template_users"
"${psql[@]}" -d template_users <<SQL
CREATE EXTENSION identity_bindings;
CREATE TABLE public.users (id uuid PRIMARY KEY, wallet_address text);
INSERT INTO public.users
SELECT gen_random_uuid(), '0x' || left(encode(sha256(int8send(i)), 'hex'), 40)
  FROM generate_series(1, $rows) i;
-- The seed application's tables (Drizzle schema of the TypeScript design).
CREATE TABLE seed_user_bindings (
    id uuid PRIMARY KEY, user_id uuid NOT NULL, provider text NOT NULL, external_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(), UNIQUE (provider, external_id));
CREATE INDEX ON seed_user_bindings (user_id);
CREATE TABLE seed_identity_events (
    id uuid PRIMARY KEY, user_id uuid NOT NULL, event_type text NOT NULL, payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now());
VACUUM ANALYZE;
SQL

timed() {  # timed <name> <settings> <sql>: in a fresh copy of the data, prints "seconds peak_rss_kib"
    local database="bench_$1"
    "${psql[@]}" -d postgres -c "CREATE DATABASE $database TEMPLATE template_users" -c "CHECKPOINT"
    seconds_and_peak "$database" "$2" "$3"
    "${psql[@]}" -d postgres -c "DROP DATABASE $database"
}

CTE="WITH inserted AS (
    INSERT INTO seed_user_bindings (id, user_id, provider, external_id)
    SELECT gen_random_uuid(), u.id, 'wallet', u.wallet_address FROM users u WHERE u.wallet_address IS NOT NULL
    ON CONFLICT (provider, external_id) DO NOTHING
    RETURNING id, user_id, external_id)
INSERT INTO seed_identity_events (id, user_id, event_type, payload)
SELECT gen_random_uuid(), user_id, 'bind',
       jsonb_build_object('provider', 'wallet', 'external_id', external_id, 'binding_id', id,
                          'evidence', jsonb_build_object('method', 'backfill'))
  FROM inserted;"
read -r -a contestants <<< "${CONTESTANTS:-cte function session workers}"  # cte is always needed
declare -A setting=(
    [cte]="" [function]="" [session]="SET identity.max_parallel_backfill_workers = 0;"
    [workers]="RESET identity.max_parallel_backfill_workers;")
declare -A statement=(
    [cte]="$CTE" [function]="SELECT * FROM identity.backfill_wallet_bindings();"
    [session]="CALL identity.backfill_wallet_bindings_in_batches();"
    [workers]="CALL identity.backfill_wallet_bindings_in_batches();")
contestant() { timed "$1" "${setting[$1]}" "${statement[$1]}"; }
declare -A times peaks
take_turns "$rounds" "" contestant "${contestants[@]}"

declare -A med
for name in "${contestants[@]}"; do
    # shellcheck disable=SC2086 # the list of times is meant to split into arguments
    med[$name]=$(median 1 ${times[$name]})
done
row() {  # row <name> <label>
    printf '| %s | %s | %s | %s MiB |\n' "$2" "${med[$1]}" "$(ratio "${med[$1]}" "${med[cte]}")" "$((peaks[$1] / 1024))"
}
echo "| backfill of $rows users (median of $rounds alternating rounds) | seconds | vs the seed's CTE | calling backend's peak memory (RssAnon) |"
echo "|---|---:|---:|---:|"
row cte "seed's single-statement CTE (one transaction)"
if [ -n "${med[function]:-}" ]; then row function "\`identity.backfill_wallet_bindings()\` (one transaction)"; fi
if [ -n "${med[session]:-}" ]; then row session "\`CALL identity.backfill_wallet_bindings_in_batches()\`, the session alone (commit per 10,000)"; fi
if [ -n "${med[workers]:-}" ]; then row workers "\`CALL identity.backfill_wallet_bindings_in_batches()\`, session + 2 workers (commit per 10,000)"; fi
