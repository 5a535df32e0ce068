-- identity.identity_events is append-only for every role, owner included. A statement-level
-- trigger refuses the statement itself, even when it would touch no row.
CREATE TRIGGER identity_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON identity.identity_events
    FOR EACH STATEMENT EXECUTE FUNCTION identity.refuse_event_mutation();

-- A registered provider is permanent, for every role too: bindings name providers without a
-- foreign key (see schema.sql), and a definition never changes under the ids stored for it.
CREATE TRIGGER providers_are_permanent
    BEFORE UPDATE OR DELETE OR TRUNCATE ON identity.providers
    FOR EACH STATEMENT EXECUTE FUNCTION identity.refuse_provider_change();

-- ALWAYS: the guards also fire under session_replication_role = replica, which skips ordinary
-- triggers.
ALTER TABLE identity.identity_events ENABLE ALWAYS TRIGGER identity_events_append_only;
ALTER TABLE identity.providers ENABLE ALWAYS TRIGGER providers_are_permanent;
