-- Filler users :from to :to, written straight into the tables: per user a binding, its chain
-- head and its bind event (seq 1, hash random). They give the tables and indexes their size;
-- they are not valid chains. Used by benches/scaling.sh and benches/upgrade.sh:
--   psql -v from=1 -v to=1000000 -f benches/filler.sql
ALTER TABLE identity.identity_events DISABLE TRIGGER USER;
INSERT INTO identity.user_bindings (id, user_id, provider, external_id)
SELECT gen_random_uuid(), md5(i::text)::uuid, 'github', i::text FROM generate_series(:from, :to) i;
INSERT INTO identity.event_chain_heads (user_id, last_seq, last_hash, last_event_id)
SELECT md5(i::text)::uuid, 1, sha256(int8send(i)), gen_random_uuid() FROM generate_series(:from, :to) i;
INSERT INTO identity.identity_events (id, user_id, seq, event_type, payload, created_at, hash)
SELECT gen_random_uuid(), md5(i::text)::uuid, 1, 'bind',
       jsonb_build_object('binding_id', gen_random_uuid(), 'provider', 'github', 'external_id', i::text,
                          'evidence', jsonb_build_object('method', 'filler')),
       now(), sha256(int8send(i))
  FROM generate_series(:from, :to) i;
ALTER TABLE identity.identity_events ENABLE TRIGGER USER;
VACUUM ANALYZE identity.user_bindings, identity.event_chain_heads, identity.identity_events;
CHECKPOINT;
