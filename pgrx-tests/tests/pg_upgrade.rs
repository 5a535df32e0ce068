//! A new PostgreSQL major version: a cluster with the extension and data in every table, moved by
//! pg_upgrade to the server under test. Every row survives, the chains verify, the schema is a
//! fresh install's on the new server, and the extension works on its data. A cluster whose
//! background worker serves the `postgres` database moves too, and the worker carries on there.
//!
//! The old cluster runs the programs in `IDENTITY_BINDINGS_UPGRADE_FROM` (a bindir whose
//! PostgreSQL has the extension installed), by default the server under test's own: under
//! `make client` a move from 15 to 15, which still dumps and restores every object of the
//! extension as pg_upgrade does; scripts/other-versions.sh moves from 16 to 18.

use identity_bindings_client_tests::{
    assert_the_extension_works_on_its_data, assert_the_schema_of_a_fresh_install, bindir,
    bound_within, integrity_is_clean, populate_every_table, table_contents, Cluster,
};
use postgres::Client;
use std::time::Duration;

#[test]
fn a_cluster_moved_to_the_server_under_test_by_pg_upgrade_keeps_its_data_and_works() {
    let old_programs = old_programs();
    let old = Cluster::start_with_programs("pg_upgrade_old", &old_programs, &[]);
    let (old_major, before) = {
        let mut client = database_with_the_extension(&old, "app");
        populate_every_table(&mut client);
        assert!(integrity_is_clean(&mut client), "clean before the upgrade");
        (
            server_major_version(&mut client),
            table_contents(&mut client),
        )
    };
    old.halt();

    let new = Cluster::upgraded_from(&old, "pg_upgrade_new");
    let mut moved = new.connect("app");
    let new_major = server_major_version(&mut moved);
    eprintln!("pg_upgrade from PostgreSQL {old_major} to {new_major}");
    if old_programs == bindir() {
        assert_eq!(new_major, old_major);
    } else {
        assert!(
            new_major > old_major,
            "another version's programs: an older one"
        );
    }
    assert_eq!(table_contents(&mut moved), before, "identical rows");
    assert!(
        integrity_is_clean(&mut moved),
        "chains verify after pg_upgrade"
    );
    let mut fresh = database_with_the_extension(&new, "fresh");
    assert_the_schema_of_a_fresh_install(&mut moved, &mut fresh);
    assert_the_extension_works_on_its_data(&mut moved);
}

#[test]
fn a_cluster_whose_worker_serves_the_postgres_database_moves_and_its_worker_resumes() {
    // pg_upgrade drops and re-creates `postgres` on the new server, which a worker connected to it
    // would prevent; and the servers pg_upgrade starts read the clusters' own configuration.
    let old = Cluster::start_with_programs("pg_upgrade_worker_old", &old_programs(), &[]);
    let user = uuid::Uuid::new_v4();
    {
        let mut client = old.connect("postgres");
        client
            .batch_execute("CREATE EXTENSION identity_bindings")
            .unwrap();
        client
            .execute(
                "SELECT identity.enqueue_binding($1, 'github', '4242', '{\"method\": \"oauth\"}')",
                &[&user],
            )
            .unwrap();
        for setting in [
            "shared_preload_libraries = 'identity_bindings'",
            "identity.worker_database = 'postgres'",
            "identity.worker_poll_interval = '200ms'",
        ] {
            client
                .batch_execute(&format!("ALTER SYSTEM SET {setting}"))
                .unwrap();
        }
    }
    old.halt();

    let new = Cluster::upgraded_from(&old, "pg_upgrade_worker_new");
    let mut client = new.connect("postgres");
    assert!(
        bound_within(&mut client, "4242", user, Duration::from_secs(30)),
        "the worker on the new server binds the job queued before the move:\n{}",
        new.server_log()
    );
}

/// The programs of the old cluster: `IDENTITY_BINDINGS_UPGRADE_FROM`'s, or the server under test's.
fn old_programs() -> String {
    std::env::var("IDENTITY_BINDINGS_UPGRADE_FROM").unwrap_or_else(|_| bindir())
}

/// A connection to `cluster`'s new database `name`, in which the extension is created.
fn database_with_the_extension(cluster: &Cluster, name: &str) -> Client {
    cluster
        .connect("postgres")
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let mut client = cluster.connect(name);
    client
        .batch_execute("CREATE EXTENSION identity_bindings")
        .unwrap();
    client
}

fn server_major_version(client: &mut Client) -> i32 {
    let number: String = client
        .query_one("SELECT current_setting('server_version_num')", &[])
        .unwrap()
        .get(0);
    number.parse::<i32>().unwrap() / 10000
}
