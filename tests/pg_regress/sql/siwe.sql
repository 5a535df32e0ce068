-- Sign-In with Ethereum, verified inside the database: one round trip from a signed message to
-- the user it identifies. The message below is the public spruceid "example message", signed by
-- 0x9D85…37D4 in 2022, expiring in 2100.
\set SHOW_CONTEXT never
\set message '''login.xyz wants you to sign in with your Ethereum account:\n0x9D85ca56217D2bb651b00f15e694EB7E713637D4\n\nSign-In With Ethereum Example Statement\n\nURI: https://login.xyz\nVersion: 1\nChain ID: 1\nNonce: bTyXgcQxn2htgkjJn\nIssued At: 2022-01-27T17:09:38.578Z\nExpiration Time: 2100-01-07T14:31:43.952Z'''
\set signature '''0xdc35c7f8ba2720df052e0092556456127f00f7707eaa8e3bbff7e56774e7f2e05a093cfc9e02964c33d86e8e066e221b7d153d27e5a2e97ccd5ca7d3f2ce06cb1b'''
SET timezone = 'UTC';

-- verify_siwe parses and verifies, consuming nothing: every field of the message comes back.
SELECT (m).* FROM (SELECT identity.verify_siwe(E:message, :signature, 'login.xyz',
                                                'bTyXgcQxn2htgkjJn', '2022-01-27T17:09:38.578Z') AS m) x;

-- Refusals name their reason. A malformed message is 22P02 and says which line and field...
SELECT identity.verify_siwe(replace(E:message, 'Chain ID: 1', 'Chain ID: one'), :signature);
\echo :LAST_ERROR_SQLSTATE
-- ...a well-formed one that does not pass is 28000.
SELECT identity.verify_siwe(E:message, :signature, 'example.com');
\echo :LAST_ERROR_SQLSTATE
SELECT identity.verify_siwe(E:message, :signature, NULL, 'aDifferentNonce');
\echo :LAST_ERROR_SQLSTATE
SELECT identity.verify_siwe(E:message, :signature, at => '2100-01-07T14:31:43.952Z');
\echo :LAST_ERROR_SQLSTATE
SELECT identity.verify_siwe(replace(E:message, 'Example Statement', 'Sample Statement'), :signature);
\echo :LAST_ERROR_SQLSTATE
SELECT identity.verify_siwe(E:message, '0x' || repeat('ab', 66));
\echo :LAST_ERROR_SQLSTATE
-- A message longer than 16 kB is refused for that before it is parsed (22P02): a wallet's
-- message is a few hundred bytes, and a login's message is kept for good in its bind event.
SELECT identity.verify_siwe(replace(E:message, 'Example Statement', repeat('x', 16384)), :signature);
\echo :LAST_ERROR_SQLSTATE

-- Nonces come from PostgreSQL's CSPRNG, are single use, and expire (10 minutes by default).
SELECT identity.issue_nonce() ~ '^[A-Za-z0-9]{22}$' AS nonce_shape;
SELECT identity.issue_nonce('1 day 1 second');
\echo :LAST_ERROR_SQLSTATE

-- A login consumes the message's nonce. This message was signed long ago, so its nonce is
-- stored here as if identity.issue_nonce had just issued it.
INSERT INTO identity.siwe_nonces (nonce, expires_at) VALUES ('bTyXgcQxn2htgkjJn', now() + interval '10 minutes');

-- First login: the wallet is bound to the new user, with the full message as evidence.
SELECT user_id, address, chain_id, status
  FROM identity.siwe_login(E:message, :signature, 'login.xyz', '00000000-0000-4000-8000-0000000051e0');
SELECT payload->'evidence'->>'method' AS method, payload->'evidence'->>'nonce' AS nonce,
       payload->'evidence'->>'domain' AS domain, payload->'evidence'->>'verifier' AS verifier
  FROM identity.identity_events WHERE user_id = '00000000-0000-4000-8000-0000000051e0';
SELECT identity.verify_binding(id) AS evidence_reverifies
  FROM identity.user_bindings WHERE user_id = '00000000-0000-4000-8000-0000000051e0';

-- The same signed message again is a replay, refused.
SELECT * FROM identity.siwe_login(E:message, :signature, 'login.xyz');
\echo :LAST_ERROR_SQLSTATE

-- With a new nonce, the same wallet logs in as the same user.
INSERT INTO identity.siwe_nonces (nonce, expires_at) VALUES ('bTyXgcQxn2htgkjJn', now() + interval '10 minutes');
SELECT user_id, status FROM identity.siwe_login(E:message, :signature, 'login.xyz');

-- A login for another domain is refused, and does not use up the nonce.
INSERT INTO identity.siwe_nonces (nonce, expires_at) VALUES ('bTyXgcQxn2htgkjJn', now() + interval '10 minutes');
SELECT * FROM identity.siwe_login(E:message, :signature, 'evil.example');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS nonce_still_there FROM identity.siwe_nonces WHERE nonce = 'bTyXgcQxn2htgkjJn';

-- siwe_bind links the signing wallet to a user who already exists, here one who signed up with
-- GitHub, with the same checks as a login. This wallet is 51e0's, so linking it to another user
-- is refused as create_binding refuses it, and the nonce is not used up.
SELECT created FROM identity.create_binding('00000000-0000-4000-8000-00000000617b', 'github', '583231',
                                            '{"method": "oauth"}');
SELECT * FROM identity.siwe_bind('00000000-0000-4000-8000-00000000617b', E:message, :signature, 'login.xyz');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS nonce_still_there FROM identity.siwe_nonces WHERE nonce = 'bTyXgcQxn2htgkjJn';

-- Once its owner has revoked it, the wallet can be linked to the GitHub user, who then owns it;
-- the signed message is the new binding's evidence.
SELECT user_id AS revoked_from
  FROM identity.revoke_binding('wallet', '0x9D85ca56217D2bb651b00f15e694EB7E713637D4',
                               '{"reason": "wallet moved to another account"}');
SELECT canonical_id, created
  FROM identity.siwe_bind('00000000-0000-4000-8000-00000000617b', E:message, :signature, 'login.xyz');
SELECT identity.resolve('wallet', '0x9d85ca56217d2bb651b00f15e694eb7e713637d4') AS owner;

-- verify_binding re-verifies the wallet's evidence; a GitHub binding has no SIWE evidence (NULL).
-- An id that names no live binding is P0002, whether it never did or was revoked.
SELECT provider, identity.verify_binding(id) AS evidence_reverifies
  FROM identity.user_bindings WHERE user_id = '00000000-0000-4000-8000-00000000617b'
 ORDER BY provider;
SELECT identity.verify_binding('00000000-0000-4000-8000-000000000000');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY sqlstate
SELECT identity.verify_binding((payload->>'binding_id')::uuid)
  FROM identity.identity_events
 WHERE event_type = 'revoke' AND user_id = '00000000-0000-4000-8000-0000000051e0';
\set VERBOSITY default

-- Its nonce is spent: the same message cannot link the wallet again.
SELECT * FROM identity.siwe_bind('00000000-0000-4000-8000-00000000617b', E:message, :signature, 'login.xyz');
\echo :LAST_ERROR_SQLSTATE
