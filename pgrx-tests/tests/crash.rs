//! Crash safety: the postmaster is killed with SIGKILL in the middle of a create_binding load.
//! After crash recovery every binding a client saw committed exists, bound to its user, and the
//! log is whole: every chain verifies and every integrity check passes.

use identity_bindings_client_tests::{integrity_is_clean, program, Cluster};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

const WRITERS: usize = 4;

/// Binds new GitHub ids for fresh users until the server goes away; returns what committed.
fn bind_until_the_server_dies(cluster: &Cluster, writer: usize) -> Vec<(Uuid, String)> {
    let mut client = cluster.connect("postgres");
    let mut acknowledged = Vec::new();
    for n in 0.. {
        let (user, external_id) = (Uuid::new_v4(), format!("{}{n:08}", writer + 1));
        let bound = client.query_one(
            "SELECT created FROM identity.create_binding($1, 'github', $2, '{\"method\": \"crash test\"}')",
            &[&user, &external_id],
        );
        match bound {
            // The COMMIT of this autocommit statement was acknowledged: it must survive.
            Ok(row) if row.get::<_, bool>(0) => acknowledged.push((user, external_id)),
            Ok(_) => panic!("a fresh id was reported as bound before"),
            Err(_) => break,
        }
    }
    acknowledged
}

#[test]
fn committed_bindings_survive_a_postmaster_crash_mid_load() {
    let cluster = Cluster::start("crash", &[]);
    cluster
        .connect("postgres")
        .batch_execute("CREATE EXTENSION identity_bindings")
        .unwrap();
    // pgbench adds load of its own alongside the writers that record what committed.
    let script = cluster.dir.join("bind.sql");
    std::fs::write(
        &script,
        "\\set n random(1000000000000, 9000000000000000)\n\
         SELECT identity.create_binding(md5(:n::text)::uuid, 'github', :n::text, '{\"method\": \"pgbench\"}');\n",
    )
    .unwrap();
    let mut pgbench = program("pgbench")
        .args([
            "-n", "-M", "prepared", "-c", "2", "-T", "120", "-U", "postgres", "-p", "5432",
        ])
        .arg("-h")
        .arg(&cluster.dir)
        .arg("-f")
        .arg(&script)
        .arg("postgres")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start pgbench");

    let cluster = Arc::new(cluster);
    let committed = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (cluster, committed) = (Arc::clone(&cluster), Arc::clone(&committed));
            std::thread::spawn(move || {
                let acknowledged = bind_until_the_server_dies(&cluster, writer);
                committed.lock().unwrap().extend(acknowledged);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    cluster.kill_postmaster();
    for writer in writers {
        writer.join().unwrap();
    }
    let _ = pgbench.kill();
    let _ = pgbench.wait();

    cluster.restart();
    assert!(
        cluster
            .server_log()
            .contains("database system was interrupted")
            || cluster.server_log().contains("was not properly shut down"),
        "the restart ran crash recovery"
    );
    let committed = committed.lock().unwrap();
    assert!(
        committed.len() > 100,
        "the load ran before the crash ({} bindings)",
        committed.len()
    );
    let mut client = cluster.connect("postgres");
    let mut lost = Vec::new();
    for (user, external_id) in committed.iter() {
        let owner: Option<Uuid> = client
            .query_one("SELECT identity.resolve('github', $1)", &[external_id])
            .unwrap()
            .get(0);
        if owner != Some(*user) {
            lost.push(external_id.clone());
        }
    }
    assert!(lost.is_empty(), "acknowledged bindings lost: {lost:?}");
    assert!(integrity_is_clean(&mut client), "integrity after recovery");
    let unevidenced: i64 = client
        .query_one(
            "SELECT count(*) FROM identity.user_bindings b WHERE NOT EXISTS (
                 SELECT FROM identity.identity_events e
                  WHERE e.user_id = b.user_id AND e.payload->>'binding_id' = b.id::text)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(unevidenced, 0, "every binding has its bind event");
}
