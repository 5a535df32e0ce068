//! Backup: pg_dump of a database with bindings, events of every kind, a custom provider, queued
//! jobs and outstanding nonces, restored with pg_restore into a fresh cluster, gives identical
//! rows, chains that verify, and an extension that works.

use identity_bindings_client_tests::{
    integrity_is_clean, populate_every_table, table_contents, Cluster, TestDatabase,
};
use uuid::Uuid;

const BIN: &str = "/usr/lib/postgresql/15/bin";

#[test]
fn a_dump_restored_into_a_fresh_cluster_is_identical_and_works() {
    let source = TestDatabase::create("dump_source");
    let mut client = source.connect();
    populate_every_table(&mut client);
    let before = table_contents(&mut client);
    assert!(before.iter().all(|(_, rows, _)| *rows > 0), "{before:?}");

    let target = Cluster::start("restore", &[]);
    let archive = target.dir.join("backup.dump");
    let dumped = std::process::Command::new(format!("{BIN}/pg_dump"))
        .args([
            "-Fc",
            "-U",
            "postgres",
            "-p",
            "5432",
            "-h",
            &TestDatabase::host(),
        ])
        .arg("-f")
        .arg(&archive)
        .arg(source.name())
        .status()
        .unwrap();
    assert!(dumped.success(), "pg_dump");
    target
        .connect("postgres")
        .batch_execute("CREATE DATABASE restored")
        .unwrap();
    let restored = std::process::Command::new(format!("{BIN}/pg_restore"))
        .args([
            "--exit-on-error",
            "-U",
            "postgres",
            "-p",
            "5432",
            "-d",
            "restored",
            "-h",
        ])
        .arg(&target.dir)
        .arg(&archive)
        .status()
        .unwrap();
    assert!(restored.success(), "pg_restore");

    let mut copy = target.connect("restored");
    assert_eq!(table_contents(&mut copy), before, "identical rows");
    assert!(integrity_is_clean(&mut copy), "chains verify after restore");
    // The extension works on the restored data: the queued job runs, ids resolve, new bindings
    // extend the restored chains, and the append-only guard is still there.
    let job: String = copy
        .query_one("SELECT state FROM identity.run_binding_jobs()", &[])
        .unwrap()
        .get(0);
    assert_eq!(job, "succeeded");
    let owner: Option<Uuid> = copy
        .query_one("SELECT identity.resolve('employee', 'E000001')", &[])
        .unwrap()
        .get(0);
    assert!(owner.is_some());
    copy.execute(
        "SELECT identity.create_binding($1, 'employee', 'E000002', '{\"method\": \"hr\"}')",
        &[&owner.unwrap()],
    )
    .unwrap();
    assert!(
        integrity_is_clean(&mut copy),
        "chains verify after new appends"
    );
    let refused = copy.batch_execute("DELETE FROM identity.identity_events");
    assert_eq!(
        refused
            .err()
            .map(|e| identity_bindings_client_tests::sqlstate(&e).to_owned()),
        Some("42501".to_owned())
    );
}
