//! Backup: pg_dump of a database with bindings, events of every kind, a custom provider, queued
//! jobs and outstanding nonces, restored with pg_restore into a fresh cluster, gives identical
//! rows, chains that verify, and an extension that works.

use identity_bindings_client_tests::{integrity_is_clean, Cluster, TestDatabase};
use postgres::Client;
use uuid::Uuid;

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// Every table of the extension: the ones pg_extension_config_dump hands to pg_dump.
const TABLES: [&str; 6] = [
    "providers",
    "user_bindings",
    "identity_events",
    "event_chain_heads",
    "binding_jobs",
    "siwe_nonces",
];

/// A digest of each table's rows, in a fixed order. Built-in providers are not data: CREATE
/// EXTENSION makes them, so their creation time is the restore's; everything else must match.
fn contents(client: &mut Client) -> Vec<(String, i64, String)> {
    TABLES
        .iter()
        .map(|table| {
            let rows = match *table {
                "providers" => "(SELECT name, builtin, pattern, description,
                                        CASE WHEN NOT builtin THEN created_at END
                                   FROM identity.providers)"
                    .to_owned(),
                _ => format!("identity.{table}"),
            };
            let row = client
                .query_one(
                    &format!(
                        "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '')
                           FROM {rows} t"
                    ),
                    &[],
                )
                .unwrap();
            (table.to_string(), row.get(0), row.get(1))
        })
        .collect()
}

fn populate(client: &mut Client) {
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    client
        .batch_execute(&format!(
            "SELECT identity.register_provider('employee', '^E[0-9]{{6}}$', 'staff number');
             SELECT identity.create_binding('{alice}', 'github', '100', '{{\"method\": \"oauth\"}}');
             SELECT identity.create_binding('{alice}', 'employee', 'E000001', '{{\"method\": \"hr\"}}');
             SELECT identity.create_binding('{bob}', 'discord', '80351110224678912', '{{\"method\": \"oauth\"}}');
             SELECT identity.revoke_binding('github', '100', '{{\"reason\": \"user request\"}}');
             SELECT identity.merge_users('{bob}', '{alice}', '{{\"reason\": \"same person\"}}');
             SELECT identity.enqueue_binding('{bob}', 'github', '200', '{{\"method\": \"oauth\"}}');
             SELECT identity.issue_nonce();"
        ))
        .unwrap();
    for n in 0..200 {
        client
            .execute(
                "SELECT identity.create_binding($1, 'github', $2, '{\"method\": \"bulk\"}')",
                &[&Uuid::new_v4(), &format!("{}", 1000 + n)],
            )
            .unwrap();
    }
}

#[test]
fn a_dump_restored_into_a_fresh_cluster_is_identical_and_works() {
    let source = TestDatabase::create("dump_source");
    let mut client = source.connect();
    populate(&mut client);
    let before = contents(&mut client);
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
    assert_eq!(contents(&mut copy), before, "identical rows");
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
