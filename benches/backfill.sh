#!/usr/bin/env bash
# Backfill of N users (default 1,000,000), side by side in one run on the same data:
#   - the seed application's single-statement backfill: INSERT … ON CONFLICT DO NOTHING RETURNING
#     feeding the event INSERT, one transaction, on tables shaped like the seed's;
#   - identity.backfill_wallet_bindings() (one transaction, batches of 10,000);
#   - CALL identity.backfill_wallet_bindings_in_batches() (a commit per batch of 10,000).
# Each starts from a copy of the same template database. Wallets are random (real addresses are
# hashes), so no contestant gets index inserts in key order for free. Reports wall time and the
# backend's own peak memory (RssAnon, sampled; VmHWM would count the shared buffers it touched).
# Run after `make install`: benches/backfill.sh [rows]
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}

. scripts/throwaway.sh
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

timed() {  # timed <name> <sql>: in a fresh copy of the data, prints "seconds peak_rss_kib"
    local database="bench_$1" ms
    "${psql[@]}" -d postgres -c "CREATE DATABASE $database TEMPLATE template_users"
    ms=$("${psql[@]}" -d "$database" -At <<SQL | awk '/^Time:/ {t = $2} END {print t}'
SET client_min_messages = warning;
SELECT pg_backend_pid() AS pid \gset
\setenv BACKEND_PID :pid
\! scripts/peak_rss.sh \$BACKEND_PID > $work/$1.rss &
\o /dev/null
\timing on
$2
SQL
)
    while [ ! -s "$work/$1.rss" ]; do sleep 0.2; done  # the sampler ends with the backend
    printf '%s %s\n' "$(python3 -c "print(f'{$ms / 1000:.1f}')")" "$(cat "$work/$1.rss")"
}

read -r cte_s cte_kib < <(timed cte "WITH inserted AS (
    INSERT INTO seed_user_bindings (id, user_id, provider, external_id)
    SELECT gen_random_uuid(), u.id, 'wallet', u.wallet_address FROM users u WHERE u.wallet_address IS NOT NULL
    ON CONFLICT (provider, external_id) DO NOTHING
    RETURNING id, user_id, external_id)
INSERT INTO seed_identity_events (id, user_id, event_type, payload)
SELECT gen_random_uuid(), user_id, 'bind',
       jsonb_build_object('provider', 'wallet', 'external_id', external_id, 'binding_id', id,
                          'evidence', jsonb_build_object('method', 'backfill'))
  FROM inserted;")
read -r fn_s fn_kib < <(timed function "SELECT * FROM identity.backfill_wallet_bindings();")
read -r proc_s proc_kib < <(timed procedure "CALL identity.backfill_wallet_bindings_in_batches();")

ratio() { python3 -c "print(f'{$1 / $2:.2f}×')"; }
cat <<EOF2
| backfill of $rows users | seconds | vs the seed's CTE | backend's own peak memory (RssAnon) |
|---|---:|---:|---:|
| seed's single-statement CTE (one transaction) | $cte_s | 1.00× | $((cte_kib / 1024)) MiB |
| \`identity.backfill_wallet_bindings()\` (one transaction) | $fn_s | $(ratio "$fn_s" "$cte_s") | $((fn_kib / 1024)) MiB |
| \`CALL identity.backfill_wallet_bindings_in_batches()\` (commit per 10,000) | $proc_s | $(ratio "$proc_s" "$cte_s") | $((proc_kib / 1024)) MiB |
EOF2
