-- The binding queue: bindings that could not be made at once wait here and are retried, so
-- none is lost. A job's key is deterministic: bind:{provider}:{canonical external id}.
\set SHOW_CONTEXT never
\set erin '''00000000-0000-4000-8000-0000000e0e0e'''
\set frank '''00000000-0000-4000-8000-00000000f7a2'''
\set grace '''00000000-0000-4000-8000-000000006ace'''
\set heidi '''00000000-0000-4000-8000-000000004e1d'''

SELECT identity.enqueue_binding(:erin, 'wallet', '0xfb6916095ca1df60bb79ce92ce3ea74c37c5d359',
                                '{"method": "siwe", "note": "binding step timed out at login"}');
-- The same binding again, while it is pending: nothing changes.
SELECT identity.enqueue_binding(:frank, 'wallet', '0xFB6916095CA1DF60BB79CE92CE3EA74C37C5D359');
SELECT job_key, user_id = :erin AS for_erin, state, attempts FROM identity.binding_jobs;

-- Bad requests are refused when they are made, not when the job runs.
SELECT identity.enqueue_binding(:erin, 'github', 'not-a-number');
\echo :LAST_ERROR_SQLSTATE

-- One pass runs every due job, each in its own subtransaction.
SELECT identity.create_binding(:frank, 'github', '31337', '{"method": "oauth"}') IS NOT NULL AS frank_has_31337;
SELECT identity.enqueue_binding(:erin, 'github', '31337', '{"method": "oauth"}');
SELECT job_key, state, attempts, last_error FROM identity.run_binding_jobs() ORDER BY job_key;

-- A binding owned by another user fails at once, with the reason; the other job succeeded.
SELECT job_key, state, attempts FROM identity.binding_jobs ORDER BY job_key;
SELECT identity.resolve('wallet', '0xfb6916095ca1df60bb79ce92ce3ea74c37c5d359') = :erin AS wallet_is_erins;

-- Nothing is due any more.
SELECT count(*) AS due FROM identity.run_binding_jobs();

-- A failed job waits for a person, and check_integrity reports it until then. Once its cause is
-- settled (here, Frank's link to GitHub 31337 was a mistake), the same request opens it again.
SELECT ok, detail FROM identity.check_integrity() WHERE check_name = 'binding_jobs_not_stuck';
SELECT user_id = :frank AS was_franks
  FROM identity.revoke_binding('github', '31337', '{"reason": "linked by mistake", "ticket": "SUP-9"}');
SELECT identity.enqueue_binding(:erin, 'github', '31337', '{"method": "oauth"}');
SELECT job_key, state FROM identity.run_binding_jobs();
SELECT ok FROM identity.check_integrity() WHERE check_name = 'binding_jobs_not_stuck';

-- A job is for a person. When a merge takes its user away before it runs, it binds to the user
-- the merges end at, and its bind event records whom it was queued for.
SELECT identity.enqueue_binding(:grace, 'github', '4242', '{"method": "oauth"}');
SELECT identity.merge_users(:grace, :heidi, '{"ticket": "SUP-7", "reason": "same person"}');
SELECT job_key, state FROM identity.run_binding_jobs();
SELECT user_id = :heidi AS bound_to_heidi, payload->>'queued_for' = :grace AS queued_for_grace
  FROM identity.identity_events
 WHERE event_type = 'bind' AND payload->>'external_id' = '4242';

-- The retry policy: transient failures (lock timeouts, serialization failures, deadlocks) wait
-- initial × coefficient^(attempt - 1), ±10%, at most the maximum; 0 attempts is unlimited.
SELECT name, setting, unit FROM pg_settings WHERE name LIKE 'identity.retry%' ORDER BY name;

-- The table itself refuses what no job can be, whoever writes: a job is pending, succeeded or
-- failed, its attempts count from 0, and its key names its binding.
\set VERBOSITY terse
UPDATE identity.binding_jobs SET state = 'paused' WHERE job_key = 'bind:github:4242';
\echo :LAST_ERROR_SQLSTATE
UPDATE identity.binding_jobs SET attempts = -1 WHERE job_key = 'bind:github:4242';
\echo :LAST_ERROR_SQLSTATE
UPDATE identity.binding_jobs SET external_id = '4243' WHERE job_key = 'bind:github:4242';
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT job_key, state, attempts FROM identity.binding_jobs WHERE job_key = 'bind:github:4242';
