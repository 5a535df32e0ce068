#!/usr/bin/env bash
# Backfill of N users (default 1,000,000), side by side in one run on the same data:
#   - the seed application's single-statement backfill: INSERT … ON CONFLICT DO NOTHING RETURNING
#     feeding the event INSERT, one transaction, on tables shaped like the seed's;
#   - identity.backfill_wallet_bindings() (one transaction, batches of 10,000);
#   - CALL identity.backfill_wallet_bindings_in_batches() (a commit per batch of 10,000).
# Each starts from a copy of the same template database. Reports wall time and the backend's peak
# memory (VmHWM). Run after `make install`: benches/backfill.sh [rows]
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
SELECT gen_random_uuid(), '0x' || lpad(to_hex(i), 40, '0') FROM generate_series(1, $rows) i;
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

run() {  # run <name> <sql>: prints "seconds peak_kib"
    local database="bench_$1"
    "${psql[@]}" -d postgres -c "CREATE DATABASE $database TEMPLATE template_users"
    "${psql[@]}" -d "$database" -At <<SQL
SELECT pg_backend_pid() AS pid \gset
\o /dev/null
\timing on
$2
\timing off
\o
\setenv BACKEND_PID :pid
\! awk '/VmHWM/ {print \$2}' /proc/\$BACKEND_PID/status > $work/$1.hwm
SQL
}

timed() {  # timed <name> <sql>: wall seconds and peak memory of the backend
    local start end
    start=$(date +%s.%N)
    run "$1" "$2" >/dev/null
    end=$(date +%s.%N)
    printf '%s %s\n' "$(python3 -c "print(f'{$end - $start:.1f}')")" "$(cat "$work/$1.hwm")"
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
| backfill of $rows users | seconds | vs the seed's CTE | backend peak memory |
|---|---:|---:|---:|
| seed's single-statement CTE (one transaction) | $cte_s | 1.00× | $((cte_kib / 1024)) MiB |
| \`identity.backfill_wallet_bindings()\` (one transaction) | $fn_s | $(ratio "$fn_s" "$cte_s") | $((fn_kib / 1024)) MiB |
| \`CALL identity.backfill_wallet_bindings_in_batches()\` (commit per 10,000) | $proc_s | $(ratio "$proc_s" "$cte_s") | $((proc_kib / 1024)) MiB |
EOF2
