-- Sign-In with Ethereum: the parsed message type, and single-use nonces.

-- What identity.verify_siwe returns: every field of an EIP-4361 message. Timestamps keep
-- microseconds (PostgreSQL's precision); the exact text stays in binding evidence.
CREATE TYPE identity.siwe_message AS (
    scheme          text,
    domain          text,
    address         text,
    statement       text,
    uri             text,
    version         text,
    chain_id        bigint,
    nonce           text,
    issued_at       timestamptz,
    expiration_time timestamptz,
    not_before      timestamptz,
    request_id      text,
    resources       text[]
);

-- Nonces issued by identity.issue_nonce. A row exists while the nonce may still be used: a
-- login deletes it (single use, even under concurrent replays), expiry makes it unusable.
CREATE TABLE identity.siwe_nonces (
    nonce      text COLLATE "C" PRIMARY KEY CHECK (nonce ~ '^[A-Za-z0-9]{16,64}$'),
    issued_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    CHECK (expires_at > issued_at)
);
CREATE INDEX siwe_nonces_expires_at_idx ON identity.siwe_nonces (expires_at);
COMMENT ON TABLE identity.siwe_nonces IS
    'Outstanding Sign-In with Ethereum nonces; consumed (deleted) by identity.siwe_login and siwe_bind.';

SELECT pg_catalog.pg_extension_config_dump('identity.siwe_nonces', '');
