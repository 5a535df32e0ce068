# Sourced by create_binding.sh and create_binding_instructions.sh (after benches/alternatives.sql
# has made the contestants' tables): contestant_scripts DIR writes one pgbench script per
# contestant and workload, DIR/<contestant>_<new|repeat>.sql:
#   ext     SELECT identity.create_binding(...)                       one round trip
#   app     BEGIN; INSERT … ON CONFLICT DO NOTHING RETURNING; INSERT the event; COMMIT
#           (a repeat: the INSERT returns nothing, so the app looks up the owner instead)
#   plpgsql the same two inserts (or the owner look-up) in a PL/pgSQL function, one round trip
#   floor   one bare INSERT … ON CONFLICT DO NOTHING into a table shaped like user_bindings
# New bindings are a new user's first binding, with random ids far above the repeat pool (a
# collision in a run is a 1-in-10^4 event); repeats bind ids of the pool (bound before the run)
# again to the same user.
contestant_scripts() {
    local dir=$1 kind id_line
    local new_id='\set n random(1000000000, 90000000000000000)'
    local repeat_id="\\set n random(1, $repeat_pool)"
    for kind in new repeat; do
        if [ "$kind" = new ]; then id_line=$new_id; else id_line=$repeat_id; fi
        printf '%s\n%s\n' "$id_line" \
"SELECT created FROM identity.create_binding(md5(:n::text)::uuid, 'github', :n::text, '{\"method\": \"bench\"}');" \
            > "$dir/ext_$kind.sql"
        printf '%s\n%s\n' "$id_line" \
"SELECT created FROM app_bind(md5(:n::text)::uuid, 'github', :n::text, '{\"method\": \"bench\"}');" \
            > "$dir/plpgsql_$kind.sql"
        printf '%s\n%s\n' "$id_line" \
"INSERT INTO floor_bindings (id, user_id, provider, external_id) VALUES (gen_random_uuid(), md5(:n::text)::uuid, 'github', :n::text) ON CONFLICT (provider, external_id) DO NOTHING;" \
            > "$dir/floor_$kind.sql"
    done
    printf '%s\n%s\n' "$new_id" "BEGIN;
INSERT INTO app_bindings (id, user_id, provider, external_id) VALUES (gen_random_uuid(), md5(:n::text)::uuid, 'github', :n::text) ON CONFLICT (provider, external_id) DO NOTHING RETURNING id AS binding_id \\gset
INSERT INTO app_events (id, user_id, event_type, payload) VALUES (gen_random_uuid(), md5(:n::text)::uuid, 'bind', jsonb_build_object('binding_id', :binding_id::uuid, 'provider', 'github', 'external_id', :n::text, 'evidence', '{\"method\": \"bench\"}'::jsonb));
COMMIT;" > "$dir/app_new.sql"
    printf '%s\n%s\n' "$repeat_id" "BEGIN;
INSERT INTO app_bindings (id, user_id, provider, external_id) VALUES (gen_random_uuid(), md5(:n::text)::uuid, 'github', :n::text) ON CONFLICT (provider, external_id) DO NOTHING RETURNING id;
SELECT id, user_id FROM app_bindings WHERE provider = 'github' AND external_id = :n::text;
COMMIT;" > "$dir/app_repeat.sql"
    chmod 0644 "$dir"/*.sql
}
