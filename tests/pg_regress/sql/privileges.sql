-- Privileges: applications reach the data only through the functions, and only the functions
-- the DBA grants. This is the set-up README.md recommends.
\set SHOW_CONTEXT never
\set dave '''00000000-0000-4000-8000-00000000da7e'''

CREATE ROLE regress_app LOGIN;
GRANT USAGE ON SCHEMA identity TO regress_app;
GRANT EXECUTE ON FUNCTION
    identity.create_binding(uuid, text, text, jsonb),
    identity.revoke_binding(text, text, jsonb),
    identity.resolve(text, text),
    identity.resolve_many(text, text[]),
    identity.canonical_external_id(text, text),
    identity.issue_nonce(interval),
    identity.siwe_login(text, text, text, uuid),
    identity.siwe_bind(uuid, text, text, text),
    identity.verify_siwe(text, text, text, text, timestamptz)
TO regress_app;

SET ROLE regress_app;

-- Through the functions: allowed.
SELECT created FROM identity.create_binding(:dave, 'github', '2001', '{"method": "oauth"}');
SELECT identity.resolve('github', '2001') = :dave AS resolved;
SELECT length(identity.issue_nonce()) AS nonce_length;

-- Around them: refused. No direct read, no forged event, no re-pointed binding.
SELECT count(*) FROM identity.user_bindings;
\echo :LAST_ERROR_SQLSTATE
INSERT INTO identity.identity_events (id, user_id, seq, event_type, payload, created_at, hash)
VALUES (gen_random_uuid(), :dave, 99, 'bind', '{}', now(), '\x00');
\echo :LAST_ERROR_SQLSTATE
UPDATE identity.user_bindings SET user_id = gen_random_uuid();
\echo :LAST_ERROR_SQLSTATE
SELECT nonce FROM identity.siwe_nonces;
\echo :LAST_ERROR_SQLSTATE
-- And functions not granted stay closed.
SELECT identity.merge_users(:dave, gen_random_uuid(), '{}');
\echo :LAST_ERROR_SQLSTATE
-- Nor can it loosen a bound: the extension's settings are a superuser's.
SET identity.max_outstanding_nonces = 100000000;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- search_path tricks: objects in a schema the caller controls never change what the functions
-- do, because each function runs with search_path = pg_catalog, pg_temp.
CREATE SCHEMA regress_attack;
GRANT ALL ON SCHEMA regress_attack TO regress_app;
SET ROLE regress_app;
CREATE TABLE regress_attack.user_bindings
    (id uuid, user_id uuid, provider text, external_id text, created_at timestamptz);
CREATE FUNCTION regress_attack.now() RETURNS timestamptz
    LANGUAGE sql AS $$ SELECT 'epoch'::timestamptz $$;
CREATE FUNCTION regress_attack.always_true(text, text) RETURNS boolean
    LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR regress_attack.= (LEFTARG = text, RIGHTARG = text,
                                  FUNCTION = regress_attack.always_true);
SET search_path = regress_attack, pg_catalog;
SELECT created FROM identity.create_binding(:dave, 'github', '2002', '{"method": "oauth"}');
SELECT identity.resolve('github', '2003') IS NULL AS still_unbound;
SELECT count(*) AS rows_in_the_decoy FROM regress_attack.user_bindings;
RESET search_path;
RESET ROLE;
SELECT external_id, created_at > 'epoch'::timestamptz + interval '1 day' AS real_timestamp
  FROM identity.user_bindings WHERE user_id = :dave ORDER BY external_id;

-- A table the caller controls: the backfill and the backstop are SECURITY DEFINER, but they read
-- the table with the caller's rights, so code that reading it runs (a view's functions, a CHECK of
-- the id column's domain) runs as the caller, never as the extension's owner.
GRANT EXECUTE ON FUNCTION identity.backfill_wallet_bindings(regclass, name, name, integer)
    TO regress_app;
SET ROLE regress_app;
CREATE TABLE regress_attack.readers (reader name);
CREATE FUNCTION regress_attack.promote_me() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO regress_attack.readers VALUES (current_user);
    BEGIN
        EXECUTE 'ALTER ROLE regress_app SUPERUSER';
    EXCEPTION WHEN insufficient_privilege THEN
        NULL;  -- as the caller, refused
    END;
    RETURN true;
END $$;
CREATE VIEW regress_attack.users AS
    SELECT :dave::uuid AS id, '0x000000000000000000000000000000000000da7e' AS wallet_address
     WHERE regress_attack.promote_me();
SELECT scanned, created FROM identity.backfill_wallet_bindings('regress_attack.users');
SELECT DISTINCT reader FROM regress_attack.readers;
RESET ROLE;
SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_app';

-- The batched backfill cannot pin its search_path (a procedure that commits may not have one), so
-- it names pg_catalog's operators itself. A caller's search_path that puts another `=` first
-- (regress_attack's above, for which every text equals every other) does not end its run after
-- the first batch as if it were done: every row is bound.
CREATE TABLE regress_attack.more_users (id uuid PRIMARY KEY, wallet_address text);
INSERT INTO regress_attack.more_users VALUES
    ('00000000-0000-4000-8000-00000000f001', '0x000000000000000000000000000000000000f001'),
    ('00000000-0000-4000-8000-00000000f002', '0x000000000000000000000000000000000000f002'),
    ('00000000-0000-4000-8000-00000000f003', '0x000000000000000000000000000000000000f003');
SET identity.max_parallel_backfill_workers = 0;
SET search_path = regress_attack, pg_catalog;
CALL identity.backfill_wallet_bindings_in_batches('regress_attack.more_users', batch_size => 1);
RESET search_path;
RESET identity.max_parallel_backfill_workers;
SELECT count(*) AS bound FROM regress_attack.more_users u
 WHERE identity.resolve('wallet', u.wallet_address) = u.id;

DROP SCHEMA regress_attack CASCADE;
DROP OWNED BY regress_app;
DROP ROLE regress_app;
