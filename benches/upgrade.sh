#!/usr/bin/env bash
# ALTER EXTENSION identity_bindings UPDATE from 0.1.0 on a database of USERS users (2,000,000 by
# default; filler rows, benches/filler.sql), against the obvious way to make the same change.
# 0.2.0 turns single-column CHECK constraints into domains; it also drops the foreign keys to
# identity.providers and makes identifier columns COLLATE "C", which both contestants do the same
# way (only the unique indexes on those columns are rebuilt). The update retypes the columns to
# domains that have no check yet (binary compatible: no table is rewritten), then adds the
# checks, which only scan. The obvious way, ALTER COLUMN ... TYPE to domains created with their
# checks, rewrites the tables and rebuilds their indexes (binding_jobs is empty here). Each
# contestant runs in a transaction that is rolled back, so all start from the same data; they
# take turns for ROUNDS rounds and each figure is the median. Run after `make install`; prints a
# Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
users=${USERS:-2000000}
rounds=${ROUNDS:-3}

. scripts/throwaway.sh
. benches/lib.sh
throwaway_cluster identity_upgrade_bench "shared_buffers=2GB" "max_wal_size=16GB"
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$cluster" -p 5432 -U postgres -d postgres)
"${psql[@]}" -c "CREATE EXTENSION identity_bindings VERSION '0.1.0'"
"${psql[@]}" -v from=1 -v to="$users" -f benches/filler.sql

update='ALTER EXTENSION identity_bindings UPDATE TO '"'0.2.0'"';'
rewrite="
ALTER TABLE identity.user_bindings DROP CONSTRAINT user_bindings_provider_fkey;
ALTER TABLE identity.binding_jobs DROP CONSTRAINT binding_jobs_provider_fkey;
ALTER TABLE identity.providers ALTER COLUMN name TYPE text COLLATE \"C\";
ALTER TABLE identity.binding_jobs ALTER COLUMN job_key TYPE text COLLATE \"C\",
    ALTER COLUMN provider TYPE text COLLATE \"C\", ALTER COLUMN external_id TYPE text COLLATE \"C\";
ALTER TABLE identity.siwe_nonces ALTER COLUMN nonce TYPE text COLLATE \"C\";
CREATE DOMAIN identity.external_id AS text COLLATE \"C\" CHECK (octet_length(VALUE) BETWEEN 1 AND 512);
CREATE DOMAIN identity.event_type AS text CHECK (VALUE IN ('bind', 'revoke', 'merge'));
CREATE DOMAIN identity.chain_seq AS bigint CHECK (VALUE >= 1);
CREATE DOMAIN identity.chain_hash AS bytea CHECK (octet_length(VALUE) = 32);
CREATE DOMAIN identity.job_state AS text CHECK (VALUE IN ('pending', 'succeeded', 'failed'));
CREATE DOMAIN identity.attempt_count AS integer CHECK (VALUE >= 0);
ALTER TABLE identity.user_bindings
    DROP CONSTRAINT user_bindings_external_id_check, ALTER COLUMN provider TYPE text COLLATE \"C\",
    ALTER COLUMN external_id TYPE identity.external_id;
ALTER TABLE identity.identity_events
    DROP CONSTRAINT identity_events_seq_check, DROP CONSTRAINT identity_events_event_type_check,
    DROP CONSTRAINT identity_events_hash_check, DROP CONSTRAINT identity_events_chain_link,
    ALTER COLUMN seq TYPE identity.chain_seq, ALTER COLUMN event_type TYPE identity.event_type,
    ALTER COLUMN prev_hash TYPE identity.chain_hash, ALTER COLUMN hash TYPE identity.chain_hash,
    ADD CONSTRAINT identity_events_chain_link CHECK ((seq = 1) = (prev_hash IS NULL));
ALTER TABLE identity.event_chain_heads
    DROP CONSTRAINT event_chain_heads_last_seq_check, DROP CONSTRAINT event_chain_heads_last_hash_check,
    ALTER COLUMN last_seq TYPE identity.chain_seq, ALTER COLUMN last_hash TYPE identity.chain_hash;
ALTER TABLE identity.binding_jobs
    DROP CONSTRAINT binding_jobs_state_check, DROP CONSTRAINT binding_jobs_attempts_check,
    ALTER COLUMN state TYPE identity.job_state, ALTER COLUMN attempts TYPE identity.attempt_count;"

rolled_back() { "${psql[@]}" -c "BEGIN; $1 ROLLBACK;"; }
declare -a update_times=() rewrite_times=()
for round in $(seq 1 "$rounds"); do
    "${psql[@]}" -c CHECKPOINT
    update_times+=("$(seconds_of rolled_back "$update")")
    "${psql[@]}" -c CHECKPOINT
    rewrite_times+=("$(seconds_of rolled_back "$rewrite")")
done
sizes=$("${psql[@]}" -At -c "SELECT pg_size_pretty(sum(pg_total_relation_size(c))) FROM unnest(
    ARRAY['identity.user_bindings', 'identity.identity_events', 'identity.event_chain_heads']::regclass[]) c")

update_median=$(median 1 "${update_times[@]}")
rewrite_median=$(median 1 "${rewrite_times[@]}")
echo "| 0.1.0 → 0.2.0 on $users users ($sizes of tables and indexes), median of $rounds | seconds | vs the update |"
echo "|---|---:|---:|"
echo "| \`ALTER EXTENSION identity_bindings UPDATE\` (retype, then validate) | $update_median | 1.00× |"
echo "| the same domains created with their checks (table rewrite) | $rewrite_median | $(ratio "$rewrite_median" "$update_median") |"
echo
echo "Per round (seconds; the update, the rewrite): ${update_times[*]} / ${rewrite_times[*]}"
