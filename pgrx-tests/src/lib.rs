//! Client-side tests of identity_bindings: what `#[pg_test]` cannot show because each of those
//! runs in one rolled-back transaction. Concurrency, isolation and anything that must commit run
//! here, over real connections, against the cluster `make test` starts.
//!
//! Each test gets a database of its own (created here, dropped when the test ends), with the
//! installed extension created in it.

pub mod wallet;

use postgres::{Client, Config, NoTls};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The socket directory of the test cluster (scripts/client-tests.sh sets it).
const HOST_VARIABLE: &str = "IDENTITY_BINDINGS_TEST_HOST";

fn cluster() -> Config {
    let host = std::env::var(HOST_VARIABLE).unwrap_or_else(|_| {
        panic!("{HOST_VARIABLE} is not set: run these tests with `make test` (or scripts/client-tests.sh), which starts a cluster")
    });
    let mut config = Config::new();
    config
        .host(&host)
        .port(5432)
        .user("postgres")
        .dbname("postgres");
    config
}

/// A database of one test's own, dropped when the value is.
pub struct TestDatabase {
    name: String,
    config: Config,
}

impl TestDatabase {
    /// Creates `{purpose}_{n}` with the extension installed.
    pub fn create(purpose: &str) -> TestDatabase {
        TestDatabase::create_with(purpose, "CREATE EXTENSION identity_bindings")
    }

    /// Creates `{purpose}_{n}` and runs `setup` in it (e.g. an older version of the extension).
    pub fn create_with(purpose: &str, setup: &str) -> TestDatabase {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "{purpose}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = cluster()
            .connect(NoTls)
            .expect("connect to the test cluster");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create test database");
        let mut config = cluster();
        config.dbname(&name);
        let database = TestDatabase { name, config };
        database
            .connect()
            .batch_execute(setup)
            .expect("set up the test database");
        database
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The socket directory of the shared test cluster.
    pub fn host() -> String {
        std::env::var(HOST_VARIABLE).expect("the test cluster's socket directory")
    }

    pub fn connect(&self) -> Client {
        self.config
            .connect(NoTls)
            .expect("connect to the test database")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = cluster().connect(NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// A transaction of `isolation` (REPEATABLE READ or SERIALIZABLE) whose snapshot is taken now:
/// what it reads and writes next cannot see what other sessions commit from here on.
pub fn transaction_with_snapshot(
    client: &mut Client,
    isolation: postgres::IsolationLevel,
) -> postgres::Transaction<'_> {
    let mut transaction = client
        .build_transaction()
        .isolation_level(isolation)
        .start()
        .unwrap();
    transaction.query_one("SELECT 1", &[]).unwrap();
    transaction
}

/// The process id of the backend serving `client`.
pub fn backend_pid(client: &mut Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0)
}

/// The SQLSTATE of a failed statement ("" for errors that are not from the server).
pub fn sqlstate(error: &postgres::Error) -> &str {
    error.code().map(|code| code.code()).unwrap_or("")
}

/// The server's message of a failed statement.
pub fn server_message(error: &postgres::Error) -> String {
    error
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_else(|| error.to_string())
}

/// Whether every chain verifies and every integrity check passes.
pub fn integrity_is_clean(client: &mut Client) -> bool {
    let broken: i64 = client
        .query_one(
            "SELECT count(*) FROM identity.verify_event_chain() WHERE NOT ok",
            &[],
        )
        .unwrap()
        .get(0);
    let failing: i64 = client
        .query_one(
            "SELECT count(*) FROM identity.check_integrity() WHERE NOT ok",
            &[],
        )
        .unwrap()
        .get(0);
    broken == 0 && failing == 0
}

/// The directory of the programs of the build under test: Debian's 15 unless `PG_BINDIR` names
/// another, as for scripts/cluster.sh.
pub fn bindir() -> String {
    std::env::var("PG_BINDIR").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_owned())
}

/// A PostgreSQL program (pg_dump, pgbench, ...) of the build under test.
pub fn program(name: &str) -> std::process::Command {
    std::process::Command::new(std::path::Path::new(&bindir()).join(name))
}

/// A cluster of a test's own, for settings the shared one cannot have (shared_preload_libraries):
/// started with scripts/cluster.sh, stopped and removed when dropped.
pub struct Cluster {
    pub dir: std::path::PathBuf,
}

impl Cluster {
    /// Where the cluster `name` of this test process lives (its socket directory too).
    pub fn path_for(name: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/tmp/identity_{name}_{}", std::process::id()))
    }

    pub fn start(name: &str, settings: &[&str]) -> Cluster {
        let dir = Cluster::path_for(name);
        let started = cluster_script("start", &dir).args(settings).status();
        assert!(started.unwrap().success(), "cluster {name} started");
        Cluster { dir }
    }

    /// A cluster of the PostgreSQL whose programs are in `bindir`, rather than the build under
    /// test's: the old side of a major-version upgrade.
    pub fn start_with_programs(name: &str, bindir: &str, settings: &[&str]) -> Cluster {
        let dir = Cluster::path_for(name);
        let started = cluster_script("start", &dir)
            .env("PG_BINDIR", bindir)
            .args(settings)
            .status();
        assert!(started.unwrap().success(), "cluster {name} started");
        Cluster { dir }
    }

    /// A cluster of the build under test made by its pg_upgrade from `old`, which must be halted,
    /// then started.
    pub fn upgraded_from(old: &Cluster, name: &str) -> Cluster {
        let dir = Cluster::path_for(name);
        let upgraded = cluster_script("upgrade", &dir).arg(&old.dir).status();
        assert!(
            upgraded.unwrap().success(),
            "cluster {name} made by pg_upgrade"
        );
        Cluster { dir }
    }

    /// A hot standby of `primary`, streaming from it, started with `settings` of its own.
    pub fn standby_of(primary: &Cluster, name: &str, settings: &[&str]) -> Cluster {
        let dir = Cluster::path_for(name);
        let started = cluster_script("standby", &dir)
            .arg(&primary.dir)
            .args(settings)
            .status();
        assert!(started.unwrap().success(), "standby {name} started");
        Cluster { dir }
    }

    pub fn config(&self, database: &str) -> Config {
        let mut config = Config::new();
        config
            .host_path(&self.dir)
            .port(5432)
            .user("postgres")
            .dbname(database);
        config
    }

    pub fn connect(&self, database: &str) -> Client {
        self.config(database)
            .connect(NoTls)
            .expect("connect to the test cluster")
    }

    /// Kills the postmaster with SIGKILL, as a crash would, and waits until its backends have
    /// noticed and exited (PostgreSQL refuses to start while any of them lives).
    pub fn kill_postmaster(&self) {
        let pid_file = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .expect("the cluster runs");
        let postmaster = pid_file.lines().next().unwrap().trim().to_owned();
        let children = std::process::Command::new("pgrep")
            .args(["-P", &postmaster])
            .output()
            .expect("run pgrep");
        let children: Vec<String> = String::from_utf8_lossy(&children.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        let killed = std::process::Command::new("kill")
            .args(["-9", &postmaster])
            .status()
            .unwrap();
        assert!(killed.success(), "postmaster {postmaster} killed");
        let gone = eventually(std::time::Duration::from_secs(60), || {
            children
                .iter()
                .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        });
        assert!(gone, "the backends exited after the postmaster died");
    }

    /// Stops the cluster cleanly, with a shutdown checkpoint, keeping its data.
    pub fn halt(&self) {
        let halted = cluster_script("halt", &self.dir).status();
        assert!(halted.unwrap().success(), "cluster halted");
    }

    /// Starts the cluster again with its settings (crash recovery runs if it crashed).
    pub fn restart(&self) {
        let restarted = cluster_script("restart", &self.dir).status();
        assert!(restarted.unwrap().success(), "cluster restarted");
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = cluster_script("stop", &self.dir).status();
    }
}

/// `scripts/cluster.sh <action> <dir>`, ready to run.
fn cluster_script(action: &str, dir: &std::path::Path) -> std::process::Command {
    // Where cargo runs the test from, not where it was compiled: clones that share one target
    // directory share test binaries, whose compile-time path may be another clone's, long gone.
    let package = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let mut command = std::process::Command::new("bash");
    command
        .arg(package.join("../scripts/cluster.sh"))
        .arg(action)
        .arg(dir);
    command
}

/// Polls `check` until it holds or `within` has passed; whether it held.
pub fn eventually(within: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    check()
}

/// Whether GitHub id `external_id` is bound to `user` within `within`: a queued job made by
/// whatever runs the queue on its own (the background worker, pg_cron).
pub fn bound_within(
    client: &mut Client,
    external_id: &str,
    user: uuid::Uuid,
    within: std::time::Duration,
) -> bool {
    eventually(within, || {
        let owner: Option<uuid::Uuid> = client
            .query_one("SELECT identity.resolve('github', $1)", &[&external_id])
            .unwrap()
            .get(0);
        owner == Some(user)
    })
}

/// Whether the backend `pid` is blocked by another session's lock within a few seconds.
pub fn soon_waits_for_a_lock(observer: &mut Client, pid: i32) -> bool {
    eventually(std::time::Duration::from_secs(10), || {
        observer
            .query_one("SELECT cardinality(pg_blocking_pids($1)) > 0", &[&pid])
            .unwrap()
            .get(0)
    })
}

/// Runs `work` on `waiter`, in a thread of its own, while `holder`, an open transaction, holds a
/// lock it needs; commits `holder` once `waiter` is seen waiting, and returns what `work` did.
pub fn run_behind<T: Send>(
    database: &TestDatabase,
    waiter: &mut Client,
    holder: postgres::Transaction<'_>,
    work: impl FnOnce(&mut Client) -> T + Send,
) -> T {
    let mut observer = database.connect();
    let waiter_pid = backend_pid(waiter);
    std::thread::scope(|scope| {
        let working = scope.spawn(|| work(waiter));
        assert!(
            soon_waits_for_a_lock(&mut observer, waiter_pid),
            "the session waits for the open transaction"
        );
        holder.commit().unwrap();
        working.join().unwrap()
    })
}

/// Every table of the extension: the ones pg_extension_config_dump hands to pg_dump.
pub const TABLES: [&str; 7] = [
    "providers",
    "user_bindings",
    "identity_events",
    "event_chain_heads",
    "binding_jobs",
    "siwe_nonces",
    "backfill_parts",
];

/// Rows in every table: bindings of built-in and custom providers, bind, revoke and merge
/// events, a queued job, an outstanding nonce and a batched backfill's run.
pub fn populate_every_table(client: &mut Client) {
    let (alice, bob) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    client
        .batch_execute(&format!(
            "SELECT identity.register_provider('employee', '^E[0-9]{{6}}$', 'staff number');
             SELECT identity.create_binding('{alice}', 'github', '100', '{{\"method\": \"oauth\"}}');
             SELECT identity.create_binding('{alice}', 'employee', 'E000001', '{{\"method\": \"hr\"}}');
             SELECT identity.create_binding('{bob}', 'discord', '80351110224678912', '{{\"method\": \"oauth\"}}');
             SELECT identity.revoke_binding('github', '100', '{{\"reason\": \"user request\"}}');
             SELECT identity.merge_users('{bob}', '{alice}', '{{\"reason\": \"same person\"}}');
             SELECT identity.enqueue_binding('{bob}', 'github', '200', '{{\"method\": \"oauth\"}}');
             SELECT identity.issue_nonce();
             CREATE TABLE public.legacy_wallets (id uuid PRIMARY KEY, wallet text);
             INSERT INTO public.legacy_wallets VALUES (gen_random_uuid(), '0x' || lpad('ab', 40, '0'));"
        ))
        .unwrap();
    // A batched backfill leaves its run's progress (from 0.2.0 on).
    client
        .batch_execute("CALL identity.backfill_wallet_bindings_in_batches('public.legacy_wallets', 'id', 'wallet')")
        .unwrap();
    for n in 0..200 {
        client
            .execute(
                "SELECT identity.create_binding($1, 'github', $2, '{\"method\": \"bulk\"}')",
                &[&uuid::Uuid::new_v4(), &format!("{}", 1000 + n)],
            )
            .unwrap();
    }
}

/// (table, rows, digest of the rows) for every table the installed version has, in a fixed order. Built-in providers are
/// made by CREATE EXTENSION, so their creation time is not compared; everything else is.
pub fn table_contents(client: &mut Client) -> Vec<(String, i64, String)> {
    let present: Vec<&str> = TABLES
        .into_iter()
        .filter(|table| {
            client
                .query_one(
                    "SELECT to_regclass('identity.' || $1) IS NOT NULL",
                    &[table],
                )
                .unwrap()
                .get(0)
        })
        .collect();
    present
        .into_iter()
        .map(|table| {
            let rows = match table {
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

/// `table_contents`, of only the tables `before` has: after an upgrade (by ALTER EXTENSION or by
/// a restore), what the old version's tables hold, leaving out the tables the new version added.
pub fn contents_of_the_tables_of(
    client: &mut Client,
    before: &[(String, i64, String)],
) -> Vec<(String, i64, String)> {
    table_contents(client)
        .into_iter()
        .filter(|(table, ..)| before.iter().any(|(old, ..)| old == table))
        .collect()
}

/// The extension's version installed in the client's database.
pub fn installed_version(client: &mut Client) -> String {
    client
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'identity_bindings'",
            &[],
        )
        .unwrap()
        .get(0)
}

/// One line per property of every object of the extension: its members, each function's full
/// definition, privileges and comment, each column, constraint, domain (with its checks), index,
/// trigger (with whether it is enabled), each table's privileges and comment, and the tables
/// pg_dump is told to dump. Privileges are the effective ones: a NULL ACL stands for the default
/// (the owner's), as pg_upgrade leaves a table whose ACL equals it, where a fresh install's REVOKE
/// wrote it out.
const DESCRIBE_EXTENSION: &str = "
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'identity_bindings'),
members AS (
    SELECT d.classid, d.objid FROM pg_depend d, ext
     WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'),
relations AS (
    SELECT c.oid FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
    UNION
    SELECT t.typrelid FROM pg_type t JOIN members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
     WHERE t.typrelid <> 0)
SELECT 'member ' || pg_describe_object(classid, objid, 0) FROM members
UNION ALL
SELECT format('function %s: %s acl=%s comment=%s', p.oid::regprocedure, pg_get_functiondef(p.oid),
              coalesce(p.proacl, acldefault('f', p.proowner)), obj_description(p.oid, 'pg_proc'))
  FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
UNION ALL
SELECT format('column %s.%s #%s %s collation=%s not_null=%s default=%s', a.attrelid::regclass,
              a.attname, a.attnum, format_type(a.atttypid, a.atttypmod), a.attcollation::regcollation,
              a.attnotnull, pg_get_expr(d.adbin, d.adrelid))
  FROM pg_attribute a JOIN relations r ON r.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT format('constraint %s %s: %s', c.conrelid::regclass, c.conname, pg_get_constraintdef(c.oid))
  FROM pg_constraint c JOIN relations r ON r.oid = c.conrelid
UNION ALL
SELECT format('domain %s over %s collation=%s not_null=%s default=%s check %s: %s', t.oid::regtype,
              format_type(t.typbasetype, t.typtypmod), t.typcollation::regcollation, t.typnotnull,
              t.typdefault, c.conname, pg_get_constraintdef(c.oid))
  FROM pg_type t JOIN members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
  LEFT JOIN pg_constraint c ON c.contypid = t.oid
 WHERE t.typtype = 'd'
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN relations r ON r.oid = i.indrelid
UNION ALL
SELECT format('trigger %s enabled=%s', pg_get_triggerdef(t.oid), t.tgenabled)
  FROM pg_trigger t JOIN relations r ON r.oid = t.tgrelid WHERE NOT t.tgisinternal
UNION ALL
SELECT format('relation %s kind=%s acl=%s comment=%s', c.oid::regclass, c.relkind,
              coalesce(c.relacl, acldefault('r', c.relowner)),
              obj_description(c.oid, 'pg_class'))
  FROM pg_class c JOIN relations r ON r.oid = c.oid
UNION ALL
SELECT format('dumped %s where %s', config.relation::regclass, config.condition)
  FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS config (relation, condition)
 WHERE e.extname = 'identity_bindings'";

fn describe_extension(client: &mut Client) -> std::collections::BTreeSet<String> {
    client
        .query(DESCRIBE_EXTENSION, &[])
        .unwrap()
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect()
}

/// Asserts that the extension's schema in `upgraded`'s database (after `ALTER EXTENSION UPDATE`,
/// or pg_upgrade to another server) is, object for object, what `fresh`'s has after a plain
/// `CREATE EXTENSION`.
pub fn assert_the_schema_of_a_fresh_install(upgraded: &mut Client, fresh: &mut Client) {
    let upgraded = describe_extension(upgraded);
    let installed = describe_extension(fresh);
    let only_upgraded: Vec<_> = upgraded.difference(&installed).collect();
    let only_fresh: Vec<_> = installed.difference(&upgraded).collect();
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "upgraded schema differs from a fresh install:\nonly after the upgrade: {only_upgraded:#?}\nonly in a fresh install: {only_fresh:#?}"
    );
    assert!(upgraded.len() > 100, "the description covers the schema");
}

/// Installs the first release, whose install script is frozen in sql/: for
/// `TestDatabase::create_with`, before an upgrade.
pub const INSTALL_0_1_0: &str = "CREATE EXTENSION identity_bindings VERSION '0.1.0'";

/// After a restore or an upgrade of what `populate_every_table` wrote: the queued job runs, an id
/// bound before resolves, a new binding extends that user's chain, a nonce is issued, every chain
/// verifies, and the append-only guard still refuses to rewrite history.
pub fn assert_the_extension_works_on_its_data(client: &mut Client) {
    let job: String = client
        .query_one("SELECT state FROM identity.run_binding_jobs()", &[])
        .unwrap()
        .get(0);
    assert_eq!(job, "succeeded");
    let owner: Option<uuid::Uuid> = client
        .query_one("SELECT identity.resolve('employee', 'E000001')", &[])
        .unwrap()
        .get(0);
    let created: bool = client
        .query_one(
            "SELECT created FROM identity.create_binding($1, 'employee', 'E000002', '{\"method\": \"hr\"}')",
            &[&owner.expect("bound before")],
        )
        .unwrap()
        .get(0);
    assert!(created);
    let nonce: String = client
        .query_one("SELECT identity.issue_nonce()", &[])
        .unwrap()
        .get(0);
    assert_eq!(nonce.len(), 22);
    assert!(
        integrity_is_clean(client),
        "chains verify after new appends"
    );
    let refused = client.batch_execute("UPDATE identity.identity_events SET payload = '{}'");
    assert_eq!(
        refused.err().map(|e| sqlstate(&e).to_owned()),
        Some("42501".to_owned())
    );
}
