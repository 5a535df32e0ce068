//! Backup: pg_dump of a database with bindings, events of every kind, a custom provider, queued
//! jobs and outstanding nonces, restored with pg_restore into a fresh cluster, gives identical
//! rows, chains that verify, and an extension that works; restored as README says into the
//! database a background worker serves, too; and a 0.1.0 database's dump restored as the current
//! version.

use identity_bindings_client_tests::{
    assert_the_extension_works_on_its_data, contents_of_the_tables_of, eventually,
    installed_version, integrity_is_clean, populate_every_table, program, table_contents, Cluster,
    TestDatabase, INSTALL_0_1_0,
};
use std::path::Path;

#[test]
fn a_dump_restored_into_a_fresh_cluster_is_identical_and_works() {
    let source = TestDatabase::create("dump_source");
    let mut client = source.connect();
    populate_every_table(&mut client);
    let before = table_contents(&mut client);
    assert!(before.iter().all(|(_, rows, _)| *rows > 0), "{before:?}");

    let (_target, mut copy) = restored_in_a_fresh_cluster(&source, "restore");
    assert_eq!(table_contents(&mut copy), before, "identical rows");
    assert!(integrity_is_clean(&mut copy), "chains verify after restore");
    assert_the_extension_works_on_its_data(&mut copy);
}

#[test]
fn a_dump_of_a_0_1_0_database_restores_as_the_current_version_with_its_data() {
    // pg_dump writes CREATE EXTENSION without a version: moving servers by dump and restore is
    // an upgrade, to the default version, with the old version's table data.
    let source = TestDatabase::create_with("dump_0_1_0", INSTALL_0_1_0);
    let mut client = source.connect();
    populate_every_table(&mut client);
    let before = table_contents(&mut client);

    let (_target, mut copy) = restored_in_a_fresh_cluster(&source, "restore_0_1_0");
    assert_ne!(
        installed_version(&mut copy),
        "0.1.0",
        "restored as the default version"
    );
    assert_eq!(
        contents_of_the_tables_of(&mut copy, &before),
        before,
        "every 0.1.0 table's rows"
    );
    assert!(integrity_is_clean(&mut copy), "chains verify after restore");
    assert_the_extension_works_on_its_data(&mut copy);
}

/// A fresh cluster named `name` (stopped when dropped), and a connection to its database
/// `restored`, into which pg_restore restored `source`'s dump.
fn restored_in_a_fresh_cluster(source: &TestDatabase, name: &str) -> (Cluster, postgres::Client) {
    let target = Cluster::start(name, &[]);
    let archive = dump(source, &target.dir);
    target
        .connect("postgres")
        .batch_execute("CREATE DATABASE restored")
        .unwrap();
    assert!(restore(&target, &archive, &[]), "pg_restore");
    let copy = target.connect("restored");
    (target, copy)
}

/// pg_dump's archive (custom format) of `source`, written into `dir`.
fn dump(source: &TestDatabase, dir: &Path) -> std::path::PathBuf {
    let archive = dir.join("backup.dump");
    let dumped = program("pg_dump")
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
    archive
}

/// Whether pg_restore (with `options`) restored `archive` into `target`'s database `restored`,
/// stopping at the first error.
fn restore(target: &Cluster, archive: &Path, options: &[&str]) -> bool {
    program("pg_restore")
        .args([
            "--exit-on-error",
            "-U",
            "postgres",
            "-p",
            "5432",
            "-d",
            "restored",
        ])
        .args(options)
        .arg("-h")
        .arg(&target.dir)
        .arg(archive)
        .status()
        .unwrap()
        .success()
}

#[test]
fn a_single_transaction_restore_into_the_workers_database_is_identical() {
    // What broke a restore the worker could see table by table: a queued job for an id the dump
    // also binds (a login's binding queued, then made by its next login). Run between the COPY of
    // the jobs and that of the bindings, it bound the id first, and the bindings' COPY failed.
    let source = TestDatabase::create("dump_for_worker");
    let mut client = source.connect();
    let user = uuid::Uuid::new_v4();
    client
        .batch_execute(&format!(
            "SELECT identity.create_binding(gen_random_uuid(), 'github', (5000 + i)::text)
               FROM generate_series(1, 200) i;
             SELECT identity.create_binding('{user}', 'github', '7');
             SELECT identity.enqueue_binding('{user}', 'github', '7', '{{\"method\": \"queued\"}}');"
        ))
        .unwrap();
    let before = table_contents(&mut client);

    let target = Cluster::start(
        "restore_worker",
        &[
            "shared_preload_libraries=identity_bindings",
            "identity.worker_database=restored",
            "identity.worker_poll_interval=100ms",
        ],
    );
    let archive = dump(&source, &target.dir);
    let mut admin = target.connect("postgres");
    admin.batch_execute("CREATE DATABASE restored").unwrap();
    assert!(
        eventually(std::time::Duration::from_secs(30), || admin
            .query_opt(
                "SELECT 1 FROM pg_stat_activity
                  WHERE backend_type = 'identity_bindings worker' AND datname = 'restored'",
                &[],
            )
            .unwrap()
            .is_some()),
        "the worker serves the database before the restore begins"
    );
    assert!(
        restore(&target, &archive, &["--single-transaction"]),
        "pg_restore --single-transaction"
    );

    // The worker then runs the job on the whole data: the id is bound to its user already.
    let mut copy = target.connect("restored");
    assert!(
        eventually(std::time::Duration::from_secs(30), || copy
            .query_one("SELECT state FROM identity.binding_jobs", &[])
            .unwrap()
            .get::<_, String>(0)
            == "succeeded"),
        "the worker ran the restored job"
    );
    let after = table_contents(&mut copy);
    let without_jobs = |contents: &[(String, i64, String)]| {
        contents
            .iter()
            .filter(|(table, _, _)| table != "binding_jobs")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        without_jobs(&after),
        without_jobs(&before),
        "identical rows"
    );
    assert!(integrity_is_clean(&mut copy));
}
