-- identity_bindings demo: one user, several accounts, every link proven and kept.
\set ON_ERROR_STOP 1
\set VERBOSITY default
\set SHOW_CONTEXT never
\pset footer off
\set alice '''7d0c6f1e-3b7a-4c55-9f0e-2b8a1d3c4e5f'''
\set bob   '''2f9e8d7c-6b5a-4c3d-8e1f-0a9b8c7d6e5f'''

\echo
\echo '== 1. Alice links her wallet (typed in lower case: stored EIP-55 checksummed) =='
SELECT canonical_id, created
  FROM identity.create_binding(:alice, 'wallet', '0xfb6916095ca1df60bb79ce92ce3ea74c37c5d359',
                               '{"method": "support_verified", "ticket": "DEMO-1"}');

\echo '== 2. The same link again, in upper case: idempotent, nothing written =='
SELECT canonical_id, created
  FROM identity.create_binding(:alice, 'wallet', '0xFB6916095CA1DF60BB79CE92CE3EA74C37C5D359');

\echo '== 3. Alice links GitHub and Discord =='
SELECT canonical_id, created FROM identity.create_binding(:alice, 'github', '583231', '{"method": "oauth"}');
SELECT canonical_id, created FROM identity.create_binding(:alice, 'discord', '80351110224678912', '{"method": "oauth"}');

\echo '== 4. Bob tries to claim Alice''s wallet: refused (23505), nothing written, Alice not named =='
\set ON_ERROR_STOP 0
SELECT * FROM identity.create_binding(:bob, 'wallet', '0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359');
\echo 'SQLSTATE:' :LAST_ERROR_SQLSTATE
\set ON_ERROR_STOP 1

\echo '== 5. Resolve: who is this wallet? who are these GitHub ids? =='
SELECT identity.resolve('wallet', '0xfb6916095ca1df60bb79ce92ce3ea74c37c5d359') AS wallet_owner;
SELECT * FROM identity.resolve_many('github', ARRAY['583231', '9999999']);

\echo '== 6. Alice unlinks GitHub; Bob can then link that account, with evidence on both sides =='
SELECT user_id AS revoked_from FROM identity.revoke_binding('github', '583231', '{"reason": "user unlinked"}');
SELECT canonical_id, created FROM identity.create_binding(:bob, 'github', '583231', '{"method": "oauth"}');

\echo '== 7. The audit trail: append-only, every event hash-chained per user =='
SELECT CASE user_id WHEN :alice THEN 'alice' ELSE 'bob' END AS who, seq, event_type,
       payload->>'provider' AS provider, payload->>'external_id' AS external_id,
       payload->'evidence' AS evidence, left(encode(hash, 'hex'), 16) || '…' AS hash
  FROM identity.identity_events ORDER BY who, seq;

\echo '== 8. Nobody can rewrite it, not even a superuser through SQL (42501) =='
\set ON_ERROR_STOP 0
DELETE FROM identity.identity_events;
\echo 'SQLSTATE:' :LAST_ERROR_SQLSTATE
\set ON_ERROR_STOP 1

\echo '== 9. Verification: every chain recomputes, every binding has its evidence =='
SELECT CASE user_id WHEN :alice THEN 'alice' ELSE 'bob' END AS who, events, ok FROM identity.verify_event_chain() ORDER BY who;
SELECT * FROM identity.check_integrity();
