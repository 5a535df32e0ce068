-- Bindings attach external accounts to a user. users.id (a UUID the application owns) is the
-- only identity; a binding is never the identity and never moves silently.
\set SHOW_CONTEXT never
\set alice '''00000000-0000-4000-8000-00000000a11c'''
\set bob   '''00000000-0000-4000-8000-000000000b0b'''

-- A new binding: the binding row and its bind event are written in one atomic step.
SELECT binding_id IS NOT NULL AS has_id, canonical_id, created
  FROM identity.create_binding(:alice, 'wallet', '0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed',
                               '{"method": "siwe", "chain_id": 1}');

-- The same account again for the same user, in any spelling: nothing is written.
SELECT canonical_id, created
  FROM identity.create_binding(:alice, 'wallet', '0x5AAEB6053F3E94C9B9A09F33669435E7EF1BEAED');
SELECT count(*) AS bindings FROM identity.user_bindings;
SELECT count(*) AS events FROM identity.identity_events;
-- Such a repeat is only a read: it takes no transaction id, so an idempotent re-bind consumes
-- no XID and writes no commit record.
BEGIN;
SELECT created
  FROM identity.create_binding(:alice, 'wallet', '0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed');
SELECT pg_current_xact_id_if_assigned() IS NULL AS took_no_transaction_id;
COMMIT;

-- The same account for another user is refused, naming the account but never its owner
-- (NO_AUTO_MERGE), and nothing is written.
SELECT * FROM identity.create_binding(:bob, 'wallet', '0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS events FROM identity.identity_events;

-- Providers are separate namespaces: GitHub id 42 and Discord id 42 are different accounts.
SELECT created FROM identity.create_binding(:alice, 'github', '42', '{"method": "oauth"}');
SELECT created FROM identity.create_binding(:bob, 'discord', '42', '{"method": "oauth"}');

-- Bad input is an error with its own SQLSTATE, never a silent no-op.
SELECT * FROM identity.create_binding(NULL, 'github', '1');
\echo :LAST_ERROR_SQLSTATE
-- NULL never stands for an argument's default: leave the argument out to get it.
SELECT * FROM identity.create_binding(:alice, 'github', '1', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM identity.create_binding(:alice, 'github', '1', '"signed"');
\echo :LAST_ERROR_SQLSTATE
-- Evidence may nest objects and arrays 127 levels deep, no deeper.
SELECT * FROM identity.create_binding(:alice, 'github', '1',
                                      jsonb_build_object('deep', (repeat('[', 127) || repeat(']', 127))::jsonb));
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM identity.create_binding(:alice, 'twitter', '1');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM identity.create_binding(:alice, 'github', '-1');
\echo :LAST_ERROR_SQLSTATE

-- Resolving: the user an account is bound to, NULL when it is unbound.
SELECT identity.resolve('wallet', '0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed') = :alice AS is_alice;
SELECT identity.resolve('github', '7') IS NULL AS unbound;

-- Resolving many: one row per input, in input order, NULL where unresolved.
SELECT external_id, user_id
  FROM identity.resolve_many('github', ARRAY['7', '42', NULL, '42']);

-- Reads answer in a read-only transaction, as on a hot standby, where every transaction is one.
-- Every function that writes is refused there with 25006 (read_only_sql_transaction), even a
-- repeat that would write nothing; on a standby the message and hint say to use the primary.
BEGIN READ ONLY;
SELECT identity.resolve('github', '42') = :alice AS alice_reads;
SELECT created FROM identity.create_binding(:alice, 'github', '42');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- Revoking removes the live binding and records why; the account can then be bound again,
-- to anyone. This is how an account moves between users: revoke, then bind, both evidenced.
SELECT user_id = :alice AS was_alice
  FROM identity.revoke_binding('github', '42', '{"reason": "user unlinked GitHub"}');
SELECT * FROM identity.revoke_binding('github', '42', '{"reason": "twice"}');
\echo :LAST_ERROR_SQLSTATE
-- A revoke has no default evidence: say why the link ends.
SELECT * FROM identity.revoke_binding('github', '42', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT created FROM identity.create_binding(:bob, 'github', '42', '{"method": "oauth"}');

-- Merging two users who turn out to be one person: explicit, evidenced, recorded on both.
SELECT identity.merge_users(:alice, :bob, '{"ticket": "SUP-1729", "approved_by": "support"}')
       AS bindings_moved;
SELECT provider, external_id, user_id = :bob AS now_bob
  FROM identity.user_bindings ORDER BY provider;
SELECT identity.merge_users(:bob, :bob, '{}');
\echo :LAST_ERROR_SQLSTATE

-- The whole history, per user, in chain order: every binding has its evidence here.
SELECT CASE user_id WHEN :alice THEN 'alice' WHEN :bob THEN 'bob' END AS who, seq, event_type,
       payload->>'provider' AS provider, payload->>'external_id' AS external_id,
       payload->>'role' AS merge_role, payload->'evidence' AS evidence
  FROM identity.identity_events
 ORDER BY who, seq;
