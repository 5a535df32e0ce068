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

-- For tens of millions of rows: the procedure commits after every batch and can be resumed
-- from the id its last NOTICE names. (CALL it outside a transaction block.)
CALL identity.backfill_wallet_bindings_in_batches(batch_size => 2);

-- The backstop: every user whose valid wallet is not bound at all gets a binding job.
INSERT INTO public.users VALUES
    ('00000000-0000-4000-8000-00000000b007', 'fay@example.com', '0xdbf03b407c01e7cd3cbea99509d93f8dddc8c6fb');
SELECT identity.backstop();
SELECT identity.backstop() AS queued_again;
SELECT job_key, state FROM identity.binding_jobs WHERE job_key LIKE 'bind:wallet:0xdbF0%';
SELECT state FROM identity.run_binding_jobs() WHERE job_key LIKE 'bind:wallet:0xdbF0%';
SELECT identity.backstop() AS nothing_left;
