// A database of its own for one interop test file, with the extension created before the file's
// tests run and dropped after them. The cluster is the one `make test` starts
// (scripts/client-tests.sh), whose socket directory IDENTITY_BINDINGS_TEST_HOST names.
import { after, before } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';

/** A client of database `${prefix}_${pid}`, connected by the time the first test runs. */
export function testDatabase(prefix) {
  const host = process.env.IDENTITY_BINDINGS_TEST_HOST;
  assert.ok(host, 'IDENTITY_BINDINGS_TEST_HOST is not set: run with `make test`, which starts a cluster');
  const database = `${prefix}_${process.pid}`;
  const admin = new pg.Client({ host, port: 5432, user: 'postgres', database: 'postgres' });
  const db = new pg.Client({ host, port: 5432, user: 'postgres', database });
  let connected = false;

  before(async () => {
    await admin.connect();
    await admin.query(`CREATE DATABASE ${database}`);
    await db.connect();
    connected = true;
    await db.query('CREATE EXTENSION identity_bindings');
  });

  after(async () => {
    if (connected) await db.end();
    await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    await admin.end();
  });

  return db;
}
