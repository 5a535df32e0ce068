-- identity_bindings 0.1.0 -> 0.2.0
--
-- 0.2.0 changes native code only; no SQL object changes, so this script has nothing to run:
--   - backfills bind each batch set-based (bulk binding insert, bulk chain heads and events);
--   - identity.issue_nonce refuses beyond identity.max_outstanding_nonces (a new setting,
--     registered by the library, not an SQL object).
-- The upgrade test (pgrx-tests/tests/upgrade.rs) checks that a 0.1.0 install updated with this
-- script has exactly the objects of a fresh 0.2.0 install.
\echo Use "ALTER EXTENSION identity_bindings UPDATE TO '0.2.0'" to load this file. \quit
