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
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'succeeded', 'failed')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
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
