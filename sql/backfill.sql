-- Progress of the batched backfill (CALL identity.backfill_wallet_bindings_in_batches): a run
-- splits the source table's id range into parts; a part's resume point and counts are updated in
-- the same transaction as each batch it binds, so an interrupted run resumes exactly where its
-- last committed batch ended. Operational state, not evidence: the bind events are the record.
CREATE SEQUENCE identity.backfill_run_id_seq;
CREATE TABLE identity.backfill_parts (
    run_id        bigint NOT NULL,
    part          integer NOT NULL CHECK (part >= 1),
    source        text NOT NULL,
    id_column     name NOT NULL,
    wallet_column name NOT NULL,
    batch_size    integer NOT NULL CHECK (batch_size >= 1),
    run_as        name NOT NULL,
    -- Ids are kept as text, as the source's own type prints them.
    after_id      text,
    upto_id       text,
    done          boolean NOT NULL DEFAULT false,
    scanned       bigint NOT NULL DEFAULT 0,
    created       bigint NOT NULL DEFAULT 0,
    existing      bigint NOT NULL DEFAULT 0,
    conflicts     bigint NOT NULL DEFAULT 0,
    invalid       bigint NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, part)
);
COMMENT ON TABLE identity.backfill_parts IS
    'Parts of each batched backfill run: the ids after after_id up to upto_id, with the counts so far. A CALL on the same source resumes an unfinished run.';

SELECT pg_catalog.pg_extension_config_dump('identity.backfill_parts', '');
SELECT pg_catalog.pg_extension_config_dump('identity.backfill_run_id_seq', '');
