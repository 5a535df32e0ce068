# Sourced by resolve_many.sh and resolve_many_instructions.sh, on a fresh throwaway cluster with
# ${psql[@]} and $work set: resolve_many_contestants makes $bindings (default 100,000) wallet
# bindings and a table `wanted` holding one array of 10,000 of their ids, in random order, and
# writes the two contestants' pgbench scripts, each one call for all 10,000 ids:
#   $work/ext.sql    identity.resolve_many('wallet', ids)
#   $work/plain.sql  the plain WHERE provider = 'wallet' AND external_id = ANY (ids)
resolve_many_contestants() {
    "${psql[@]}" <<SQL
SET client_min_messages = warning;
CREATE EXTENSION identity_bindings;
CREATE TABLE public.users (id uuid PRIMARY KEY, wallet_address text);
INSERT INTO public.users
SELECT gen_random_uuid(), '0x' || left(encode(sha256(int8send(i)), 'hex'), 40)
  FROM generate_series(1, ${bindings:-100000}) i;
SELECT * FROM identity.backfill_wallet_bindings();
CREATE TABLE wanted AS
    SELECT array_agg(external_id) AS ids
      FROM (SELECT external_id FROM identity.user_bindings ORDER BY random() LIMIT 10000) s;
VACUUM ANALYZE;
SQL

    cat > "$work/ext.sql" <<'SQL'
SELECT count(r.user_id) FROM wanted w, identity.resolve_many('wallet', w.ids) r;
SQL
    cat > "$work/plain.sql" <<'SQL'
SELECT count(b.user_id) FROM wanted w, identity.user_bindings b
 WHERE b.provider = 'wallet' AND b.external_id = ANY (w.ids);
SQL
    chmod 0644 "$work/ext.sql" "$work/plain.sql"
    # Both must find all 10,000.
    local script found
    for script in ext plain; do
        found=$("${psql[@]}" -At -f "$work/$script.sql")
        [ "$found" = 10000 ] || { echo "$script found $found of 10000" >&2; exit 1; }
    done
}
