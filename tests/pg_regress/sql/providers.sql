-- External ids are stored in one canonical form per provider, so the same account is one
-- binding however it is spelled. identity.canonical_external_id shows the form.
\set SHOW_CONTEXT never

-- Wallets: EIP-55 checksummed. All-lowercase and all-uppercase input carry no checksum and
-- are accepted; mixed case must be the exact checksum.
SELECT identity.canonical_external_id('wallet', '0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed');
SELECT identity.canonical_external_id('wallet', '0x5AAEB6053F3E94C9B9A09F33669435E7EF1BEAED');
SELECT identity.canonical_external_id('wallet', '0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed');
SELECT identity.canonical_external_id('wallet', '0x5AAeb6053F3E94C9b9A09f33669435E7Ef1BeAed');
\echo :LAST_ERROR_SQLSTATE
SELECT identity.canonical_external_id('wallet', '0x5aaeb6053f3e94c9b9a09f33669435e7ef1bea');
\echo :LAST_ERROR_SQLSTATE

-- Discord and GitHub: unsigned 64-bit decimal ids, no sign, spaces or leading zeros.
SELECT identity.canonical_external_id('discord', '80351110224678912');
SELECT identity.canonical_external_id('github', '0583231');
\echo :LAST_ERROR_SQLSTATE
SELECT identity.canonical_external_id('github', '18446744073709551616');
\echo :LAST_ERROR_SQLSTATE

-- Google: the OpenID Connect subject, case sensitive, kept exactly.
SELECT identity.canonical_external_id('google', '10769150350006150715113082367');

-- An unknown provider is an error, never a silent miss.
SELECT identity.canonical_external_id('myspace', '1');
\echo :LAST_ERROR_SQLSTATE

-- Custom providers: a name and a pattern (PostgreSQL regular expression) that must match the
-- whole external id. Registering returns true the first time, false when repeated unchanged.
SELECT identity.register_provider('gitlab', '[1-9][0-9]{0,19}', 'GitLab numeric user id');
SELECT identity.register_provider('gitlab', '[1-9][0-9]{0,19}', 'GitLab numeric user id');
SELECT identity.canonical_external_id('gitlab', '4242');
SELECT identity.canonical_external_id('gitlab', 'user-4242');
\echo :LAST_ERROR_SQLSTATE

-- A definition never changes once registered: bindings stored under it stay valid.
SELECT identity.register_provider('gitlab', '.*');
\echo :LAST_ERROR_SQLSTATE
SELECT identity.register_provider('wallet', '.*');
\echo :LAST_ERROR_SQLSTATE
SELECT identity.register_provider('Git Lab', '.*');
\echo :LAST_ERROR_SQLSTATE
SELECT identity.register_provider('okta', '(unclosed');
\echo :LAST_ERROR_SQLSTATE
-- The pattern is matched as ^(?:pattern)$, so what PostgreSQL reads only at the start of a whole
-- regular expression, a director (***=, ***:) or embedded options such as (?i), is refused.
-- Case-insensitive ids would be one account stored under several spellings.
SELECT identity.register_provider('okta', '(?i)[a-z0-9]{20}');
\echo :LAST_ERROR_SQLSTATE

SELECT name, builtin, pattern FROM identity.providers ORDER BY builtin DESC, name;

-- A registered provider is permanent, for every role, superusers included, and even in replica
-- mode: UPDATE, DELETE and TRUNCATE are refused. The provider a binding names was checked when
-- it was written, and so stays registered.
UPDATE identity.providers SET pattern = '.*' WHERE name = 'gitlab';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM identity.providers WHERE name = 'gitlab';
\echo :LAST_ERROR_SQLSTATE
TRUNCATE identity.providers;
\echo :LAST_ERROR_SQLSTATE
SET session_replication_role = replica;
DELETE FROM identity.providers WHERE name = 'gitlab';
\echo :LAST_ERROR_SQLSTATE
RESET session_replication_role;
SELECT count(*) AS providers FROM identity.providers;
