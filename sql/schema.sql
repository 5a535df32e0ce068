-- identity_bindings: tables.
--
-- users.id (a UUID, owned by the application) is the only identity. A wallet, a Discord
-- snowflake, a GitHub id are bindings attached to a user; the proof of each binding lives only in
-- the append-only event log. The functions of the extension are the only writers.

-- The database must be UTF8. Every event's hash is keccak-256 over its payload's text as
-- PostgreSQL prints it, and the extension reads all text as UTF-8: in another encoding, text that
-- is not ASCII (under SQL_ASCII, not UTF-8), in evidence or a custom provider's ids, fails with an
-- internal error, and a dump of a UTF8 database restored there leaves chains it cannot verify. So the install refuses at once.
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

-- Identifiers (provider names, external ids, job keys, nonces) are COLLATE "C": they compare byte
-- for byte, which is what equality of identifiers means anyway. Their unique indexes then do not
-- depend on the operating system's locale data, which can change order in an upgrade of the C
-- library and so corrupt a unique index built under the old order; and a look-up compares with
-- memcmp instead of strcoll (BENCHMARKS.md: 8% of a repeat bind under en_US.UTF-8).

-- Who can be bound: built-in providers are canonicalized natively; custom ones by a pattern that
-- must match the whole external id. A provider is permanent (append_only.sql refuses UPDATE,
-- DELETE and TRUNCATE for every role), so the provider a binding or a job names, checked when it
-- was written, stays registered. That is why user_bindings and binding_jobs have no foreign key
-- to this table: a foreign key locks the referenced row FOR KEY SHARE in every inserting
-- transaction, so every new binding of a provider would lock the same row, and concurrent ones
-- would turn that lock into a MultiXact each (thousands a second under load; BENCHMARKS.md).
CREATE TABLE identity.providers (
    name        text COLLATE "C" PRIMARY KEY
                CONSTRAINT provider_name_is_identifier CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    builtin     boolean NOT NULL DEFAULT false,
    pattern     text,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT custom_provider_has_pattern CHECK (builtin OR pattern IS NOT NULL)
);
COMMENT ON TABLE identity.providers IS
    'Providers whose external ids can be bound. Register custom ones with identity.register_provider(name, pattern).';

INSERT INTO identity.providers (name, builtin, description) VALUES
    ('wallet',  true, 'EVM account address; stored EIP-55 checksummed, all-lowercase or all-uppercase input accepted'),
    ('discord', true, 'Discord user id (snowflake): unsigned 64-bit decimal, no sign or leading zeros'),
    ('github',  true, 'GitHub numeric user id (not the login): unsigned 64-bit decimal, no sign or leading zeros'),
    ('google',  true, 'Google OpenID Connect subject (sub): 1 to 255 printable ASCII characters, case sensitive');

-- The columns' value rules, as domains rather than table CHECK constraints: PostgreSQL parses and
-- plans a table's CHECK expressions again for every statement that writes the table, but a
-- domain's checks once per backend. On create_binding's path, three tables written per new
-- binding, that re-parsing was about a quarter of the call (BENCHMARKS.md).
CREATE DOMAIN identity.external_id AS text COLLATE "C" CHECK (octet_length(VALUE) BETWEEN 1 AND 512);
CREATE DOMAIN identity.event_type AS text CHECK (VALUE IN ('bind', 'revoke', 'merge'));
-- A link's number in its user's chain, from 1.
CREATE DOMAIN identity.chain_seq AS bigint CHECK (VALUE >= 1);
-- A keccak-256 digest.
CREATE DOMAIN identity.chain_hash AS bytea CHECK (octet_length(VALUE) = 32);

-- The current state: one row per live (provider, external_id). No evidence column: proof lives
-- in identity.identity_events.
CREATE TABLE identity.user_bindings (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL,
    provider    text COLLATE "C" NOT NULL,  -- a registered provider (see identity.providers)
    external_id identity.external_id NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT user_bindings_provider_external_id_key UNIQUE (provider, external_id)
);
CREATE INDEX user_bindings_user_id_idx ON identity.user_bindings (user_id);
COMMENT ON TABLE identity.user_bindings IS
    'Live bindings of external accounts to users. Written only by identity.create_binding, revoke_binding and merge_users.';

-- The audit trail. Append-only (a trigger refuses UPDATE, DELETE and TRUNCATE); each event is a
-- link of its user's keccak-256 hash chain: seq numbers it, prev_hash points at the previous link.
CREATE TABLE identity.identity_events (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL,
    seq         identity.chain_seq NOT NULL,
    event_type  identity.event_type NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL,
    prev_hash   identity.chain_hash,
    hash        identity.chain_hash NOT NULL,
    CONSTRAINT identity_events_user_seq_key UNIQUE (user_id, seq),
    CONSTRAINT identity_events_chain_link CHECK ((seq = 1) = (prev_hash IS NULL))
);
COMMENT ON TABLE identity.identity_events IS
    'Append-only log of bind, revoke and merge events with their evidence, hash-chained per user. Check with identity.verify_event_chain().';

-- The newest link of every chain: the per-user append lock, and the anchor that makes removing a
-- chain's newest events detectable. Export it (or its hashes) to anchor the log outside the database.
CREATE TABLE identity.event_chain_heads (
    user_id       uuid PRIMARY KEY,
    last_seq      identity.chain_seq NOT NULL,
    last_hash     identity.chain_hash NOT NULL,
    last_event_id uuid NOT NULL
);
COMMENT ON TABLE identity.event_chain_heads IS
    'Newest link of each user''s event chain: lock for appends, anchor for verification.';

-- pg_dump keeps the data of every table; built-in providers come back with CREATE EXTENSION.
SELECT pg_catalog.pg_extension_config_dump('identity.providers', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('identity.user_bindings', '');
SELECT pg_catalog.pg_extension_config_dump('identity.identity_events', '');
SELECT pg_catalog.pg_extension_config_dump('identity.event_chain_heads', '');
