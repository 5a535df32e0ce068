-- identity.identity_events is append-only for every role, owner included. A statement-level
-- trigger refuses the statement itself, even when it would touch no row.
CREATE TRIGGER identity_events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON identity.identity_events
    FOR EACH STATEMENT EXECUTE FUNCTION identity.refuse_event_mutation();

-- ALWAYS: the guard also fires under session_replication_role = replica, which skips ordinary triggers.
ALTER TABLE identity.identity_events ENABLE ALWAYS TRIGGER identity_events_append_only;
