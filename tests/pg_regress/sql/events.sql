-- The event log is append-only and tamper-evident.
\set SHOW_CONTEXT never
\set carol '''00000000-0000-4000-8000-0000000ca201'''

SELECT created FROM identity.create_binding(:carol, 'github', '1001', '{"method": "oauth"}');
SELECT created FROM identity.create_binding(:carol, 'github', '1002', '{"method": "oauth"}');
SELECT created FROM identity.create_binding(:carol, 'github', '1003', '{"method": "oauth"}');

-- UPDATE, DELETE and TRUNCATE are refused for every role, the owner and superusers included,
-- even when no row would be touched, and even in replica mode.
UPDATE identity.identity_events SET payload = '{}';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM identity.identity_events WHERE false;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE identity.identity_events;
\echo :LAST_ERROR_SQLSTATE
SET session_replication_role = replica;
DELETE FROM identity.identity_events;
\echo :LAST_ERROR_SQLSTATE
RESET session_replication_role;

-- Each event links to the previous event of its user by a keccak-256 hash.
SELECT seq, prev_hash IS NULL AS first_link, octet_length(hash) AS hash_bytes,
       prev_hash = lag(hash) OVER (ORDER BY seq) AS links_to_previous
  FROM identity.identity_events WHERE user_id = :carol ORDER BY seq;

SELECT user_id = :carol AS carol, events, ok, first_bad_event
  FROM identity.verify_event_chain(:carol);
SELECT check_name, ok FROM identity.check_integrity() ORDER BY check_name;

-- A superuser can still disable the guard and edit history. The chain tells.
BEGIN;
ALTER TABLE identity.identity_events DISABLE TRIGGER identity_events_append_only;
UPDATE identity.identity_events SET payload = jsonb_set(payload, '{external_id}', '"666"')
 WHERE user_id = :carol AND seq = 2;
SELECT events, ok, first_bad_event = (SELECT id FROM identity.identity_events
                                        WHERE user_id = :carol AND seq = 2) AS names_the_edited_event
  FROM identity.verify_event_chain(:carol);
SELECT check_name, ok FROM identity.check_integrity() ORDER BY check_name;
ROLLBACK;

-- Removing the newest event is found through the chain head, which remembers it.
BEGIN;
ALTER TABLE identity.identity_events DISABLE TRIGGER identity_events_append_only;
CREATE TEMP TABLE removed AS
    SELECT id FROM identity.identity_events WHERE user_id = :carol AND seq = 3;
DELETE FROM identity.identity_events WHERE id = (SELECT id FROM removed);
SELECT events, ok, first_bad_event = (SELECT id FROM removed) AS names_the_removed_event
  FROM identity.verify_event_chain(:carol);
ROLLBACK;

-- Reordering is found too.
BEGIN;
ALTER TABLE identity.identity_events DISABLE TRIGGER identity_events_append_only;
UPDATE identity.identity_events SET seq = 100 WHERE user_id = :carol AND seq = 2;
UPDATE identity.identity_events SET seq = 2 WHERE user_id = :carol AND seq = 3;
UPDATE identity.identity_events SET seq = 3 WHERE user_id = :carol AND seq = 100;
SELECT events, ok FROM identity.verify_event_chain(:carol);
ROLLBACK;

-- After the rollbacks, history is intact.
SELECT events, ok FROM identity.verify_event_chain(:carol);

-- The columns themselves refuse what no chain can hold, whoever writes: hashes are 32 bytes,
-- links are numbered from 1, an event is a bind, revoke or merge, and only a chain's first link
-- has no previous hash.
\set VERBOSITY terse
INSERT INTO identity.identity_events (id, user_id, seq, event_type, payload, created_at, prev_hash, hash)
VALUES (gen_random_uuid(), :carol, 4, 'bind', '{}', now(), '\x00'::bytea, '\x00'::bytea);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO identity.identity_events (id, user_id, seq, event_type, payload, created_at, prev_hash, hash)
VALUES (gen_random_uuid(), :carol, 0, 'bind', '{}', now(), NULL, sha256('x'));
\echo :LAST_ERROR_SQLSTATE
INSERT INTO identity.identity_events (id, user_id, seq, event_type, payload, created_at, prev_hash, hash)
VALUES (gen_random_uuid(), :carol, 4, 'edit', '{}', now(), sha256('x'), sha256('y'));
\echo :LAST_ERROR_SQLSTATE
INSERT INTO identity.identity_events (id, user_id, seq, event_type, payload, created_at, prev_hash, hash)
VALUES (gen_random_uuid(), :carol, 4, 'bind', '{}', now(), NULL, sha256('y'));
\echo :LAST_ERROR_SQLSTATE
UPDATE identity.event_chain_heads SET last_seq = 0 WHERE user_id = :carol;
\echo :LAST_ERROR_SQLSTATE
INSERT INTO identity.user_bindings (id, user_id, provider, external_id)
VALUES (gen_random_uuid(), :carol, 'github', '');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT events, ok FROM identity.verify_event_chain(:carol);
