-- identity_bindings 0.1.0 -> 0.2.0
--
-- Native code changes (no SQL object changes):
--   - backfills bind each batch set-based (bulk binding insert, bulk chain heads and events);
--   - identity.issue_nonce refuses beyond identity.max_outstanding_nonces (a new setting,
--     registered by the library, not an SQL object);
--   - identity.max_parallel_backfill_workers (a new setting) lets the batched backfill start
--     background workers;
--   - SIWE messages longer than 16 kB are refused (22P02) by verify_siwe, siwe_login, siwe_bind;
--   - writing functions refuse a read-only transaction or a hot standby with 25006;
--   - identity.check_integrity() has a fifth check, bound_bindings_are_live.
-- Refused in a database whose encoding is not UTF8 (0A000), as a fresh install is: below.
-- Refused where schema identity is owned by, or open to CREATE for, a role that is not a
-- superuser (42501), as a fresh install is: below.
-- SQL object changes, below:
--   - the backfill and backstop functions take their id_column and wallet_column as `name`, as
--     the SQL contract declares them (0.1.0 declared text): replaced, keeping their EXECUTE grants;
--   - the batched backfill becomes resumable and parallel: its progress table, the three
--     functions its procedure calls, and the procedure's new body;
--   - the single-column CHECK constraints of user_bindings, identity_events and
--     event_chain_heads become domains (identity.external_id, event_type, chain_seq, chain_hash),
--     which PostgreSQL does not re-parse for every statement that writes the tables;
--   - identifier columns (provider names, external ids, job keys, nonces) become COLLATE "C";
--   - providers become permanent (a trigger refuses UPDATE, DELETE and TRUNCATE), and bindings
--     and jobs name them without a foreign key, whose row lock every new binding took.
-- The upgrade test (pgrx-tests/tests/upgrade.rs) checks that a 0.1.0 install updated with this
-- script has exactly the objects of a fresh 0.2.0 install.
\echo Use "ALTER EXTENSION identity_bindings UPDATE TO '0.2.0'" to load this file. \quit

-- The database must be UTF8. Every event's hash is keccak-256 over its payload's text as
-- PostgreSQL prints it, and the extension reads all text as UTF-8: in another encoding, text that
-- is not ASCII (under SQL_ASCII, not UTF-8), in evidence or a custom provider's ids, fails with an
-- internal error, and a dump of a UTF8 database restored there leaves chains it cannot verify. So the update refuses at once,
-- as a fresh install of 0.2.0 does (0.1.0 did not check).
DO $utf8_only$
BEGIN
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'feature_not_supported',
            MESSAGE = pg_catalog.format('identity_bindings needs a database whose encoding is UTF8; database %I is %s',
                                        pg_catalog.current_database(), pg_catalog.getdatabaseencoding()),
            DETAIL = 'Event hashes are computed over the UTF-8 text of each payload, and the extension reads all text as UTF-8.',
            HINT = 'Install it in a database created with ENCODING ''UTF8'' (CREATE DATABASE ... ENCODING ''UTF8'' TEMPLATE template0); move existing data there with pg_dump and pg_restore.';
    END IF;
END
$utf8_only$;

-- Schema identity must be the superusers' own. CREATE EXTENSION takes over an existing schema of
-- that name as it finds it, and the SECURITY DEFINER functions, which run as the superuser who
-- installed them, find their tables in it by name. A role that owns the schema can rename it and
-- create another "identity" whose tables, views and triggers run its own functions as that
-- superuser; a role that may create in it can add overloads of the functions that an
-- application's call with untyped literals would pick instead. So neither is accepted.
DO $superusers_schema$
DECLARE
    other_owner text;
    other_creators text;
BEGIN
    SELECT r.rolname INTO other_owner
      FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) n.nspowner
     WHERE n.nspname OPERATOR(pg_catalog.=) 'identity' AND NOT r.rolsuper;
    SELECT pg_catalog.string_agg(coalesce(pg_catalog.quote_ident(r.rolname), 'PUBLIC'), ', ') INTO other_creators
      FROM pg_catalog.pg_namespace n
     CROSS JOIN LATERAL pg_catalog.aclexplode(n.nspacl) a
      LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.grantee
     WHERE n.nspname OPERATOR(pg_catalog.=) 'identity'
       AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE'
       AND NOT coalesce(r.rolsuper, false);
    IF other_owner IS NOT NULL OR other_creators IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = CASE WHEN other_owner IS NOT NULL
                THEN pg_catalog.format('schema identity is owned by role %I, which is not a superuser', other_owner)
                ELSE pg_catalog.format('roles that are not superusers may create objects in schema identity: %s', other_creators)
            END,
            DETAIL = 'The extension''s SECURITY DEFINER functions run as the superuser who installed it and find their tables in schema identity by name: a role that owns the schema, or may create objects in it, could have them run its own code with that superuser''s rights.',
            HINT = 'Drop the schema if nothing else uses it (the extension creates its own); otherwise give it to a superuser (ALTER SCHEMA identity OWNER TO ...) and REVOKE CREATE ON SCHEMA identity FROM each role named.';
    END IF;
END
$superusers_schema$;

-- Progress of the batched backfill (CALL identity.backfill_wallet_bindings_in_batches): a run
-- splits the source table's id range into parts; a part's resume point and counts are updated in
-- the same transaction as each batch it binds, so an interrupted run resumes exactly where its
-- last committed batch ended. Operational state, not evidence: the bind events are the record.
CREATE SEQUENCE identity.backfill_run_id_seq;
CREATE TABLE identity.backfill_parts (
    run_id        bigint NOT NULL,
    part          integer NOT NULL CHECK (part >= 1),
    source        text NOT NULL,
    id_column     name NOT NULL,
    wallet_column name NOT NULL,
    batch_size    integer NOT NULL CHECK (batch_size >= 1),
    run_as        name NOT NULL,
    -- Ids are kept as text, as the source's own type prints them.
    after_id      text,
    upto_id       text,
    done          boolean NOT NULL DEFAULT false,
    scanned       bigint NOT NULL DEFAULT 0,
    created       bigint NOT NULL DEFAULT 0,
    existing      bigint NOT NULL DEFAULT 0,
    conflicts     bigint NOT NULL DEFAULT 0,
    invalid       bigint NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, part)
);
COMMENT ON TABLE identity.backfill_parts IS
    'Parts of each batched backfill run: the ids after after_id up to upto_id, with the counts so far. A CALL on the same source resumes an unfinished run.';

SELECT pg_catalog.pg_extension_config_dump('identity.backfill_parts', '');
SELECT pg_catalog.pg_extension_config_dump('identity.backfill_run_id_seq', '');

CREATE FUNCTION identity.backfill_plan(
	"users" regclass, /* Option < PgRelation > */
	"id_column" name, /* Option < ColumnName > */
	"wallet_column" name, /* Option < ColumnName > */
	"batch_size" INT, /* Option < i32 > */
	"resume_after_id" TEXT /* Option < & str > */
) RETURNS bigint /* Result < i64, ErrorReport > */
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'backfill_plan_wrapper';

CREATE FUNCTION identity.backfill_launch_workers(
	"run_id" bigint /* i64 */
) RETURNS INT /* Result < i32, ErrorReport > */
STRICT VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'backfill_launch_workers_wrapper';

CREATE FUNCTION identity.backfill_step(
	"run_id" bigint /* i64 */
) RETURNS TEXT /* Result < & '_ str, ErrorReport > */
STRICT VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'backfill_step_wrapper';

-- As privileges.sql does at install: nothing is reachable by default.
REVOKE ALL ON TABLE identity.backfill_parts FROM PUBLIC;
REVOKE ALL ON FUNCTION identity.backfill_plan(regclass, name, name, integer, text),
                       identity.backfill_launch_workers(bigint),
                       identity.backfill_step(bigint) FROM PUBLIC;

-- The backfill and the backstop take their columns as `name`, as the contract declares them.
-- A function's argument types cannot be altered: each is created anew, granted EXECUTE to whoever
-- could execute the one it replaces, and the old one dropped.
CREATE FUNCTION identity.backfill_wallet_batch(
	"users" regclass, /* Option < PgRelation > */
	"id_column" name, /* Option < ColumnName > */
	"wallet_column" name, /* Option < ColumnName > */
	"batch_size" INT, /* Option < i32 > */
	"after_id" TEXT /* Option < & str > */
) RETURNS TABLE (
	"scanned" bigint,  /* i64 */
	"created" bigint,  /* i64 */
	"existing" bigint,  /* i64 */
	"conflicts" bigint,  /* i64 */
	"invalid" bigint,  /* i64 */
	"last_id" TEXT  /* Option < String > */
)
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'backfill_wallet_batch_wrapper';

CREATE FUNCTION identity.backfill_wallet_bindings(
	"users" regclass DEFAULT to_regclass('public.users'), /* Option < PgRelation > */
	"id_column" name DEFAULT 'id', /* Option < ColumnName > */
	"wallet_column" name DEFAULT 'wallet_address', /* Option < ColumnName > */
	"batch_size" INT DEFAULT 10000 /* Option < i32 > */
) RETURNS TABLE (
	"scanned" bigint,  /* i64 */
	"created" bigint,  /* i64 */
	"existing" bigint,  /* i64 */
	"conflicts" bigint,  /* i64 */
	"invalid" bigint  /* i64 */
)
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'backfill_wallet_bindings_wrapper';

CREATE FUNCTION identity.backstop(
	"users" regclass DEFAULT to_regclass('public.users'), /* Option < PgRelation > */
	"id_column" name DEFAULT 'id', /* Option < ColumnName > */
	"wallet_column" name DEFAULT 'wallet_address' /* Option < ColumnName > */
) RETURNS bigint /* Result < i64, ErrorReport > */
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'backstop_wrapper';

DO $$
DECLARE
    replaced record;
    grant_ record;
BEGIN
    FOR replaced IN
        SELECT r.new, p.oid::regprocedure AS old, p.proacl, p.proowner
          FROM (VALUES
                ('identity.backfill_wallet_batch(regclass, text, text, integer, text)',
                 'identity.backfill_wallet_batch(regclass, name, name, integer, text)'),
                ('identity.backfill_wallet_bindings(regclass, text, text, integer)',
                 'identity.backfill_wallet_bindings(regclass, name, name, integer)'),
                ('identity.backstop(regclass, text, text)',
                 'identity.backstop(regclass, name, name)')) AS r (old, new)
          JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) r.old::regprocedure
    LOOP
        -- As privileges.sql does at install; then every EXECUTE the old function granted.
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', replaced.new);
        FOR grant_ IN
            SELECT acl.grantee, acl.is_grantable
              FROM pg_catalog.aclexplode(COALESCE(replaced.proacl,
                                                  pg_catalog.acldefault('f', replaced.proowner))) acl
             WHERE acl.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
               AND acl.grantee OPERATOR(pg_catalog.<>) replaced.proowner
        LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s%s', replaced.new,
                           CASE WHEN grant_.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                                ELSE grant_.grantee::regrole::text END,
                           CASE WHEN grant_.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
        EXECUTE format('DROP FUNCTION %s', replaced.old);
    END LOOP;
END
$$;

-- The batched form: commits after each batch, so a table of tens of millions of users never
-- needs one long transaction. Background workers (identity.max_parallel_backfill_workers, 2 by
-- default) bind parts of the table beside this session. Interrupted, it is resumed by calling it
-- again on the same table; resume_after_id starts a new run after that id instead. CALL it outside
-- a transaction block.
-- No SET search_path here: PostgreSQL forbids COMMIT in a procedure with SET clauses. It runs
-- with the caller's rights and search_path, so it names every object with its schema, operators
-- too: a schema listed before pg_catalog would otherwise give a superuser's call its own `=`.
CREATE OR REPLACE PROCEDURE identity.backfill_wallet_bindings_in_batches(
    users regclass DEFAULT to_regclass('public.users'),
    id_column name DEFAULT 'id',
    wallet_column name DEFAULT 'wallet_address',
    batch_size integer DEFAULT 10000,
    resume_after_id text DEFAULT NULL
)
LANGUAGE plpgsql
AS $$
DECLARE
    run bigint;
    outcome text;
BEGIN
    run := identity.backfill_plan(users, id_column, wallet_column, batch_size, resume_after_id);
    COMMIT;  -- the workers read the plan
    PERFORM identity.backfill_launch_workers(run);
    LOOP
        outcome := identity.backfill_step(run);
        COMMIT;
        EXIT WHEN outcome OPERATOR(pg_catalog.=) 'done';
        IF outcome OPERATOR(pg_catalog.=) 'waiting' THEN
            PERFORM pg_catalog.pg_sleep(0.05);
        END IF;
    END LOOP;
END
$$;

-- Roles that may CALL the procedure now need EXECUTE on what it calls (it runs with their rights).
DO $$
DECLARE
    grantee regrole;
BEGIN
    FOR grantee IN
        SELECT DISTINCT acl.grantee::regrole
          FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) acl
         WHERE p.oid = 'identity.backfill_wallet_bindings_in_batches(regclass, name, name, integer, text)'::regprocedure
           AND acl.privilege_type = 'EXECUTE' AND acl.grantee <> 0 AND acl.grantee <> p.proowner
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION identity.backfill_plan(regclass, name, name, integer, text),
                        identity.backfill_launch_workers(bigint), identity.backfill_step(bigint) TO %s', grantee);
    END LOOP;
END
$$;

-- A registered provider is permanent, so bindings and jobs need no foreign key to it (see
-- schema.sql for why there is none). Dropped first: the collation change below then has no
-- foreign key to check again.
CREATE FUNCTION identity."refuse_provider_change"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'refuse_provider_change_wrapper';
REVOKE ALL ON FUNCTION identity.refuse_provider_change() FROM PUBLIC;
CREATE TRIGGER providers_are_permanent
    BEFORE UPDATE OR DELETE OR TRUNCATE ON identity.providers
    FOR EACH STATEMENT EXECUTE FUNCTION identity.refuse_provider_change();
ALTER TABLE identity.providers ENABLE ALWAYS TRIGGER providers_are_permanent;
ALTER TABLE identity.user_bindings DROP CONSTRAINT user_bindings_provider_fkey;
ALTER TABLE identity.binding_jobs DROP CONSTRAINT binding_jobs_provider_fkey;

-- Identifiers compare byte for byte (COLLATE "C"; see schema.sql for why). A collation change is
-- binary compatible, so no table is rewritten; the unique indexes on these columns are rebuilt.
-- user_bindings' provider changes in the next step, together with external_id, so that their
-- unique index, the one large index to rebuild, is built once.
ALTER TABLE identity.providers ALTER COLUMN name TYPE text COLLATE "C";
ALTER TABLE identity.binding_jobs
    ALTER COLUMN job_key TYPE text COLLATE "C",
    ALTER COLUMN provider TYPE text COLLATE "C",
    ALTER COLUMN external_id TYPE text COLLATE "C";
ALTER TABLE identity.siwe_nonces ALTER COLUMN nonce TYPE text COLLATE "C";

-- The column rules as domains (see schema.sql for why). Done without rewriting the tables: the
-- columns first change to the domains while these have no check (binary compatible, so no
-- table is rewritten), with the old CHECK constraints dropped in the same statement; then each
-- domain gets its check, which scans the tables once to validate the rows the old constraints
-- already guarded. The tables stay locked until the update commits. external_id's domain is
-- COLLATE "C", so the unique index on (provider, external_id) is rebuilt here.
CREATE DOMAIN identity.external_id AS text COLLATE "C";
CREATE DOMAIN identity.event_type AS text;
CREATE DOMAIN identity.chain_seq AS bigint;
CREATE DOMAIN identity.chain_hash AS bytea;
CREATE DOMAIN identity.job_state AS text;
CREATE DOMAIN identity.attempt_count AS integer;

ALTER TABLE identity.user_bindings
    DROP CONSTRAINT user_bindings_external_id_check,
    ALTER COLUMN provider TYPE text COLLATE "C",
    ALTER COLUMN external_id TYPE identity.external_id;
ALTER TABLE identity.identity_events
    DROP CONSTRAINT identity_events_seq_check,
    DROP CONSTRAINT identity_events_event_type_check,
    DROP CONSTRAINT identity_events_hash_check,
    DROP CONSTRAINT identity_events_chain_link,
    ALTER COLUMN seq TYPE identity.chain_seq,
    ALTER COLUMN event_type TYPE identity.event_type,
    ALTER COLUMN prev_hash TYPE identity.chain_hash,
    ALTER COLUMN hash TYPE identity.chain_hash,
    ADD CONSTRAINT identity_events_chain_link CHECK ((seq = 1) = (prev_hash IS NULL));
ALTER TABLE identity.event_chain_heads
    DROP CONSTRAINT event_chain_heads_last_seq_check,
    DROP CONSTRAINT event_chain_heads_last_hash_check,
    ALTER COLUMN last_seq TYPE identity.chain_seq,
    ALTER COLUMN last_hash TYPE identity.chain_hash;
ALTER TABLE identity.binding_jobs
    DROP CONSTRAINT binding_jobs_state_check,
    DROP CONSTRAINT binding_jobs_attempts_check,
    ALTER COLUMN state TYPE identity.job_state,
    ALTER COLUMN attempts TYPE identity.attempt_count;

ALTER DOMAIN identity.external_id
    ADD CONSTRAINT external_id_check CHECK (octet_length(VALUE) BETWEEN 1 AND 512);
ALTER DOMAIN identity.event_type
    ADD CONSTRAINT event_type_check CHECK (VALUE IN ('bind', 'revoke', 'merge'));
ALTER DOMAIN identity.chain_seq ADD CONSTRAINT chain_seq_check CHECK (VALUE >= 1);
ALTER DOMAIN identity.chain_hash ADD CONSTRAINT chain_hash_check CHECK (octet_length(VALUE) = 32);
ALTER DOMAIN identity.job_state
    ADD CONSTRAINT job_state_check CHECK (VALUE IN ('pending', 'succeeded', 'failed'));
ALTER DOMAIN identity.attempt_count ADD CONSTRAINT attempt_count_check CHECK (VALUE >= 0);
