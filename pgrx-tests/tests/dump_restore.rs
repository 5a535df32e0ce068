//! Backup: pg_dump of a database with bindings, events of every kind, a custom provider, queued
//! jobs and outstanding nonces, restored with pg_restore into a fresh cluster, gives identical
//! rows, chains that verify, and an extension that works.

use identity_bindings_client_tests::{
    assert_the_extension_works_on_its_data, integrity_is_clean, populate_every_table,
    table_contents, Cluster, TestDatabase,
};

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
    assert_the_extension_works_on_its_data(&mut copy);
}
