-- The contestants of benches/create_binding.sh and benches/create_binding_instructions.sh: the
-- extension, and what an application or a DBA would write instead. Run with -v repeat_pool=N: the
-- ids the repeats bind again are user md5(n)::uuid, GitHub id n, for n in 1..N, bound beforehand
-- by every contestant.
CREATE EXTENSION identity_bindings;

-- Without the extension: the tables an application would create (the seed's design).
CREATE TABLE app_bindings (
    id uuid PRIMARY KEY, user_id uuid NOT NULL, provider text NOT NULL, external_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(), UNIQUE (provider, external_id));
CREATE INDEX ON app_bindings (user_id);
CREATE TABLE app_events (
    id uuid PRIMARY KEY, user_id uuid NOT NULL, event_type text NOT NULL, payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE floor_bindings (LIKE app_bindings INCLUDING ALL);

-- What a DBA would write instead: the same two inserts, and the owner check, in one function.
CREATE FUNCTION app_bind(p_user uuid, p_provider text, p_external_id text, p_evidence jsonb,
                         OUT binding_id uuid, OUT created boolean)
LANGUAGE plpgsql AS $$
DECLARE
    owner uuid;
BEGIN
    INSERT INTO app_bindings (id, user_id, provider, external_id)
    VALUES (gen_random_uuid(), p_user, p_provider, p_external_id)
    ON CONFLICT (provider, external_id) DO NOTHING RETURNING id INTO binding_id;
    IF binding_id IS NOT NULL THEN
        INSERT INTO app_events (id, user_id, event_type, payload)
        VALUES (gen_random_uuid(), p_user, 'bind',
                jsonb_build_object('binding_id', binding_id, 'provider', p_provider,
                                   'external_id', p_external_id, 'evidence', p_evidence));
        created := true;
        RETURN;
    END IF;
    SELECT b.id, b.user_id INTO binding_id, owner
      FROM app_bindings b WHERE b.provider = p_provider AND b.external_id = p_external_id;
    IF owner IS DISTINCT FROM p_user THEN
        RAISE EXCEPTION 'bound to another user' USING ERRCODE = '23505';
    END IF;
    created := false;
END
$$;

-- What a DBA would write for a revoke and a merge (benches/revoke_merge_instructions.sh): the
-- binding deleted or moved, and the events that record it.
CREATE FUNCTION app_revoke(p_provider text, p_external_id text, p_evidence jsonb,
                           OUT binding_id uuid, OUT user_id uuid)
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM app_bindings b WHERE b.provider = p_provider AND b.external_id = p_external_id
    RETURNING b.id, b.user_id INTO binding_id, user_id;
    IF binding_id IS NULL THEN
        RAISE EXCEPTION 'not bound' USING ERRCODE = 'P0002';
    END IF;
    INSERT INTO app_events (id, user_id, event_type, payload)
    VALUES (gen_random_uuid(), user_id, 'revoke',
            jsonb_build_object('binding_id', binding_id, 'provider', p_provider,
                               'external_id', p_external_id, 'evidence', p_evidence));
END
$$;

CREATE FUNCTION app_merge(p_from uuid, p_into uuid, p_evidence jsonb) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    moved jsonb;
BEGIN
    WITH m AS (UPDATE app_bindings b SET user_id = p_into WHERE b.user_id = p_from
               RETURNING b.id, b.provider, b.external_id)
    SELECT coalesce(jsonb_agg(jsonb_build_object('binding_id', m.id, 'provider', m.provider,
                                                 'external_id', m.external_id)), '[]')
      INTO moved FROM m;
    INSERT INTO app_events (id, user_id, event_type, payload)
    SELECT gen_random_uuid(), side.user_id, 'merge',
           jsonb_build_object('role', side.role, 'from_user', p_from, 'into_user', p_into,
                              'bindings', moved, 'evidence', p_evidence)
      FROM (VALUES (p_from, 'from'), (p_into, 'into')) side (user_id, role);
    RETURN jsonb_array_length(moved);
END
$$;

-- The ids the repeats bind again, bound by every contestant.
SELECT count(*) FROM (
    SELECT identity.create_binding(md5(n::text)::uuid, 'github', n::text, '{"method": "bench"}')
      FROM generate_series(1, :repeat_pool) n) s;
SELECT count(*) FROM (SELECT app_bind(md5(n::text)::uuid, 'github', n::text, '{"method": "bench"}')
                        FROM generate_series(1, :repeat_pool) n) s;
INSERT INTO floor_bindings (id, user_id, provider, external_id)
SELECT gen_random_uuid(), md5(n::text)::uuid, 'github', n::text FROM generate_series(1, :repeat_pool) n;
VACUUM ANALYZE;
