-- Migrations: bind the wallets an application already keeps on its users table. The table
-- is the application's own; the extension only reads the id and wallet columns.
\set SHOW_CONTEXT never
CREATE TABLE public.users (id uuid PRIMARY KEY, email text, wallet_address text);
INSERT INTO public.users VALUES
    ('00000000-0000-4000-8000-00000000b001', 'ann@example.com', '0xde709f2102306220921060314715629080e2fb77'),
    ('00000000-0000-4000-8000-00000000b002', 'ben@example.com', '0x27B1FDB04752BBC536007A920D24ACB045561C26'),
    ('00000000-0000-4000-8000-00000000b003', 'cat@example.com', '0xde709f2102306220921060314715629080e2fb77'),
    ('00000000-0000-4000-8000-00000000b004', 'dan@example.com', '0x27b1fdb04752bbc536007a920d24acb04556'),
    ('00000000-0000-4000-8000-00000000b005', 'eve@example.com', NULL);

-- Defaults: public.users, columns id and wallet_address, batches of 10,000. Conflicts and
-- invalid rows are counted and the first few named, never an abort.
SELECT * FROM identity.backfill_wallet_bindings();

-- Idempotent: a second run only finds what the first one bound.
SELECT * FROM identity.backfill_wallet_bindings();

-- Each binding's evidence names where it came from.
SELECT external_id, payload->'evidence' AS evidence
  FROM identity.identity_events e JOIN identity.user_bindings b ON e.payload->>'binding_id' = b.id::text
 WHERE e.payload->'evidence'->>'method' = 'backfill'
 ORDER BY external_id;

-- Any table and column names, text ids too.
CREATE TABLE public.accounts (account_id text PRIMARY KEY, eth text);
INSERT INTO public.accounts VALUES ('00000000-0000-4000-8000-00000000b006', '0xd1220a0cf47c7b9be7a2e6ba89f429762e7b9adb');
SELECT * FROM identity.backfill_wallet_bindings('public.accounts', 'account_id', 'eth', batch_size => 100);
SELECT * FROM identity.backfill_wallet_bindings('public.accounts', 'no_such_column', 'eth');
\echo :LAST_ERROR_SQLSTATE

-- Batches follow the id column's order, so without an index on it each batch reads the whole
-- table: harmless on a small one, hours on a large one. The backfill warns. A row with no id has
-- no user to bind its wallet to: invalid, counted once after every other row.
CREATE TABLE public.legacy_wallets (user_id text, eth text);
INSERT INTO public.legacy_wallets VALUES
    ('00000000-0000-4000-8000-00000000b009', '0x000000000000000000000000000000000000b009'),
    (NULL, '0x000000000000000000000000000000000000b00a');
SELECT * FROM identity.backfill_wallet_bindings('public.legacy_wallets', 'user_id', 'eth');

-- The backfill reads the table with the caller's rights, and only if the caller may read every
-- row: the id and wallet columns, with no row hidden by row-level security.
CREATE ROLE regress_tenant_admin;
GRANT USAGE ON SCHEMA identity TO regress_tenant_admin;
GRANT EXECUTE ON FUNCTION identity.backfill_wallet_bindings(regclass, name, name, integer),
                          identity.backstop(regclass, name, name) TO regress_tenant_admin;
CREATE TABLE public.tenant_users (id uuid PRIMARY KEY, tenant text, wallet text);
INSERT INTO public.tenant_users VALUES
    ('00000000-0000-4000-8000-00000000c001', 'north', '0x1111111111111111111111111111111111111111'),
    ('00000000-0000-4000-8000-00000000c002', 'south', '0x2222222222222222222222222222222222222222');
GRANT SELECT (id) ON public.tenant_users TO regress_tenant_admin;
SET ROLE regress_tenant_admin;
SELECT * FROM identity.backfill_wallet_bindings('public.tenant_users', 'id', 'wallet');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT SELECT ON public.tenant_users TO regress_tenant_admin;
ALTER TABLE public.tenant_users ENABLE ROW LEVEL SECURITY;
CREATE POLICY north_only ON public.tenant_users TO regress_tenant_admin USING (tenant = 'north');
SET ROLE regress_tenant_admin;
SELECT count(*) AS rows_regress_tenant_admin_sees FROM public.tenant_users;
SELECT * FROM identity.backfill_wallet_bindings('public.tenant_users', 'id', 'wallet');
\echo :LAST_ERROR_SQLSTATE
SELECT identity.backstop('public.tenant_users', 'id', 'wallet');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- The table's owner (or a role with BYPASSRLS) reads every row.
SELECT * FROM identity.backfill_wallet_bindings('public.tenant_users', 'id', 'wallet');

-- For tens of millions of rows: the procedure commits after every batch. (CALL it outside a
-- transaction block.) Its progress is kept in identity.backfill_parts, in the transaction of each
-- batch: an interrupted run is resumed by calling it again on the same table.
-- In the calling session alone:
SET identity.max_parallel_backfill_workers = 0;
CALL identity.backfill_wallet_bindings_in_batches(batch_size => 2);
SELECT run_id, part, after_id, upto_id, done, scanned, created, existing, conflicts, invalid
  FROM identity.backfill_parts;

-- With background workers (by default up to 2) binding parts of the table beside the session,
-- on a table large enough to split: 1,000 accounts in batches of 50.
RESET identity.max_parallel_backfill_workers;
CREATE TABLE public.imported (id uuid PRIMARY KEY, wallet text);
INSERT INTO public.imported
SELECT ('00000000-0000-4000-9000-' || lpad(to_hex(i), 12, '0'))::uuid, '0x' || lpad(to_hex(i), 40, '0')
  FROM generate_series(1, 1000) i;
SET client_min_messages = warning;  -- which process binds which batch varies from run to run
CALL identity.backfill_wallet_bindings_in_batches('public.imported', 'id', 'wallet', batch_size => 50);
RESET client_min_messages;
SELECT count(*) > 1 AS split_into_parts, bool_and(done) AS done, sum(scanned) AS scanned,
       sum(created) AS created
  FROM identity.backfill_parts WHERE source = 'public.imported';
SELECT count(*) AS bound FROM identity.user_bindings b JOIN public.imported i ON b.user_id = i.id;

-- A view works too, as one part (a view cannot be sampled to split it): here, the accounts that
-- signed up since the import.
CREATE TABLE public.signups (id uuid PRIMARY KEY, wallet text, signed_up date);
INSERT INTO public.signups VALUES
    ('00000000-0000-4000-8000-00000000d001', '0x000000000000000000000000000000000000d001', '2026-01-05'),
    ('00000000-0000-4000-8000-00000000d002', '0x000000000000000000000000000000000000d002', '2025-12-24');
CREATE VIEW public.recent_signups AS SELECT id, wallet FROM public.signups WHERE signed_up >= '2026-01-01';
SET client_min_messages = warning;
CALL identity.backfill_wallet_bindings_in_batches('public.recent_signups', 'id', 'wallet', batch_size => 50);
RESET client_min_messages;
SELECT count(*) AS parts, sum(scanned) AS scanned, sum(created) AS created
  FROM identity.backfill_parts WHERE source = 'public.recent_signups';

-- The backstop: every user whose valid wallet is not bound at all gets a binding job.
INSERT INTO public.users VALUES
    ('00000000-0000-4000-8000-00000000b007', 'fay@example.com', '0xdbf03b407c01e7cd3cbea99509d93f8dddc8c6fb');
SELECT identity.backstop();
SELECT identity.backstop() AS queued_again;
SELECT job_key, state FROM identity.binding_jobs WHERE job_key LIKE 'bind:wallet:0xdbF0%';
SELECT state FROM identity.run_binding_jobs() WHERE job_key LIKE 'bind:wallet:0xdbF0%';
SELECT identity.backstop() AS nothing_left;
