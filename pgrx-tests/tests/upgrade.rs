//! Upgrade: 0.1.0 (its install script frozen in sql/) installed with data in every table, then
//! `ALTER EXTENSION identity_bindings UPDATE`. The data and the chains survive, the functions
//! work, and the upgraded schema is exactly a fresh install's.

use identity_bindings_client_tests::{
    assert_the_extension_works_on_its_data, assert_the_schema_of_a_fresh_install,
    contents_of_the_tables_of, installed_version, integrity_is_clean, populate_every_table,
    table_contents, TestDatabase, INSTALL_0_1_0,
};
use postgres::Client;

#[test]
fn an_upgraded_0_1_0_install_keeps_its_data_and_equals_a_fresh_install() {
    let old = TestDatabase::create_with("upgrade_from_0_1_0", INSTALL_0_1_0);
    let mut client = old.connect();
    assert_eq!(installed_version(&mut client), "0.1.0");
    populate_every_table(&mut client);
    let before = table_contents(&mut client);

    client
        .batch_execute("ALTER EXTENSION identity_bindings UPDATE")
        .unwrap();
    let fresh = TestDatabase::create("upgrade_fresh");
    let mut fresh_client = fresh.connect();
    let current = installed_version(&mut fresh_client);
    assert_ne!(current, "0.1.0", "the default version is a later one");
    assert_eq!(installed_version(&mut client), current);

    // Data and chains survive (tables the update added are compared with a fresh install's
    // catalog below).
    assert_eq!(contents_of_the_tables_of(&mut client, &before), before);
    assert!(integrity_is_clean(&mut client));

    assert_the_schema_of_a_fresh_install(&mut client, &mut fresh_client);

    assert_the_extension_works_on_its_data(&mut client);
}

#[test]
fn the_functions_whose_columns_became_names_keep_working_and_keep_their_grants() {
    let old = TestDatabase::create_with("upgrade_column_names", INSTALL_0_1_0);
    let mut client = old.connect();
    let (operator, auditor, nobody) = (
        format!("{}_operator", old.name()),
        format!("{}_auditor", old.name()),
        format!("{}_nobody", old.name()),
    );
    client
        .batch_execute(&format!(
            "CREATE ROLE {operator}; CREATE ROLE {auditor}; CREATE ROLE {nobody};
             GRANT EXECUTE ON FUNCTION identity.backfill_wallet_bindings(regclass, text, text, integer),
                                       identity.backstop(regclass, text, text)
                TO {operator} WITH GRANT OPTION;
             GRANT EXECUTE ON FUNCTION identity.backfill_wallet_batch(regclass, text, text, integer, text)
                TO {auditor};
             CREATE TABLE public.accounts (uid uuid PRIMARY KEY, eth text);
             INSERT INTO public.accounts VALUES
                (gen_random_uuid(), '0x' || lpad('a1', 40, '0')),
                (gen_random_uuid(), '0x' || lpad('a2', 40, '0'));"
        ))
        .unwrap();

    // The library is already the new one; 0.1.0's declarations pass the columns as text.
    let queued: i64 = client
        .query_one(
            "SELECT identity.backstop('public.accounts', 'uid', 'eth')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(queued, 2, "0.1.0's backstop reads its text columns");
    let (scanned, created): (i64, i64) = client
        .query_one(
            "SELECT scanned, created FROM identity.backfill_wallet_batch('public.accounts', 'uid', 'eth', 1, NULL)",
            &[],
        )
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!((scanned, created), (1, 1));

    client
        .batch_execute("ALTER EXTENSION identity_bindings UPDATE")
        .unwrap();
    let created: i64 = client
        .query_one(
            "SELECT created FROM identity.backfill_wallet_bindings('public.accounts', 'uid', 'eth')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(created, 1, "the updated backfill reads its name columns");

    let may = |client: &mut Client, role: &str, function: &str, privilege: &str| -> bool {
        client
            .query_one(
                "SELECT has_function_privilege($1, $2, $3)",
                &[&role, &function, &privilege],
            )
            .unwrap()
            .get(0)
    };
    let bindings = "identity.backfill_wallet_bindings(regclass, name, name, integer)";
    let batch = "identity.backfill_wallet_batch(regclass, name, name, integer, text)";
    let backstop = "identity.backstop(regclass, name, name)";
    for (role, function, privilege, expected) in [
        (&operator, bindings, "EXECUTE WITH GRANT OPTION", true),
        (&operator, backstop, "EXECUTE WITH GRANT OPTION", true),
        (&operator, batch, "EXECUTE", false),
        (&auditor, batch, "EXECUTE", true),
        (&auditor, batch, "EXECUTE WITH GRANT OPTION", false),
        (&auditor, backstop, "EXECUTE", false),
        (&nobody, bindings, "EXECUTE", false),
        (&nobody, batch, "EXECUTE", false),
        (&nobody, backstop, "EXECUTE", false),
    ] {
        assert_eq!(
            may(&mut client, role, function, privilege),
            expected,
            "{role}: {privilege} on {function}"
        );
    }
    let text_forms_left: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_proc p
              WHERE p.pronamespace = 'identity'::regnamespace
                AND p.proargtypes[1] = 'text'::regtype  -- id_column
                AND p.proname IN ('backfill_wallet_bindings', 'backfill_wallet_batch', 'backstop')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(text_forms_left, 0, "the text forms are gone");
}
