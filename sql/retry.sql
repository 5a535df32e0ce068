-- A job's single-column rules as domains, as in schema.sql: PostgreSQL reads a table's CHECK
-- expressions again for every statement that writes the table, and each job is written at least
-- twice, when it is queued and when its outcome is recorded.
CREATE DOMAIN identity.job_state AS text CHECK (VALUE IN ('pending', 'succeeded', 'failed'));
CREATE DOMAIN identity.attempt_count AS integer CHECK (VALUE >= 0);

-- The durable binding queue: bindings that could not be made at once (a lock timeout, a
-- serialization failure, a deadlock) wait here and are retried with capped exponential backoff.
-- A job's key is deterministic, bind:{provider}:{canonical external id}, so the same binding is
-- queued once however often its failure is reported.
CREATE TABLE identity.binding_jobs (
    job_key         text COLLATE "C" PRIMARY KEY,
    user_id         uuid NOT NULL,
    provider        text COLLATE "C" NOT NULL,  -- a registered provider (see identity.providers)
    external_id     text COLLATE "C" NOT NULL,
    evidence        jsonb NOT NULL,
    state           identity.job_state NOT NULL DEFAULT 'pending',
    attempts        identity.attempt_count NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT binding_jobs_key_names_the_binding
        CHECK (job_key = 'bind:' || provider || ':' || external_id)
);
CREATE INDEX binding_jobs_due_idx ON identity.binding_jobs (next_attempt_at) WHERE state = 'pending';
COMMENT ON TABLE identity.binding_jobs IS
    'Bindings waiting to be retried, and the outcome of each (identity.enqueue_binding, identity.run_binding_jobs).';

SELECT pg_catalog.pg_extension_config_dump('identity.binding_jobs', '');
