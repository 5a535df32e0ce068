//! Without the background worker: pg_cron (Debian's postgresql-15-cron) schedules the queue.
//! pg_cron 1.4 has minute granularity, so this test waits for the next whole minute.

use identity_bindings_client_tests::{bound_within, Cluster};
use std::time::Duration;
use uuid::Uuid;

#[test]
fn pg_cron_runs_the_binding_queue() {
    let socket_dir = Cluster::path_for("pg_cron");
    let cron_host = format!("cron.host={}", socket_dir.display());
    let cluster = Cluster::start(
        "pg_cron",
        &[
            "shared_preload_libraries=pg_cron",
            "cron.database_name=cron_test",
            &cron_host,
        ],
    );
    cluster
        .connect("postgres")
        .batch_execute("CREATE DATABASE cron_test")
        .unwrap();
    let mut client = cluster.connect("cron_test");
    client
        .batch_execute(
            "CREATE EXTENSION pg_cron;
             CREATE EXTENSION identity_bindings;
             SELECT cron.schedule('identity-bindings', '* * * * *', 'SELECT identity.run_binding_jobs(64)');",
        )
        .unwrap();
    let user = Uuid::new_v4();
    client
        .execute("SELECT identity.enqueue_binding($1, 'github', '8001', '{\"method\": \"pg_cron test\"}')", &[&user])
        .unwrap();

    assert!(
        bound_within(&mut client, "8001", user, Duration::from_secs(75)),
        "pg_cron ran identity.run_binding_jobs within a minute"
    );
    let runs: i64 = client
        .query_one(
            "SELECT count(*) FROM cron.job_run_details WHERE status = 'succeeded'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(runs >= 1);
}
