// identity_bindings against a real wallet library: viem builds and signs Sign-In with Ethereum
// messages (createSiweMessage + a local private-key account), node-postgres sends them to
// identity.siwe_login. Run by `make test` (scripts/client-tests.sh starts the cluster).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { privateKeyToAccount } from 'viem/accounts';
import { createSiweMessage, parseSiweMessage } from 'viem/siwe';
import { testDatabase } from './database.mjs';

const db = testDatabase('interop_viem');
const domain = 'wallet.example';

// Well-known development keys (the first two Hardhat/Anvil accounts): never real funds.
const alice = privateKeyToAccount('0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80');
const mallory = privateKeyToAccount('0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d');

/** A viem SIWE message for `account` with a nonce issued by the database. */
async function messageFor(account, { issuedAt = new Date(), expirationTime } = {}) {
  const { rows } = await db.query('SELECT identity.issue_nonce() AS nonce');
  return createSiweMessage({
    address: account.address,
    chainId: 1,
    domain,
    nonce: rows[0].nonce,
    uri: `https://${domain}/login`,
    version: '1',
    statement: 'Sign in to the identity_bindings interop test.',
    issuedAt,
    expirationTime: expirationTime ?? new Date(issuedAt.getTime() + 5 * 60_000),
  });
}

async function login(message, signature) {
  const { rows } = await db.query(
    'SELECT user_id, address, chain_id, status FROM identity.siwe_login($1, $2, $3)',
    [message, signature, domain],
  );
  return rows[0];
}

async function refusal(promise) {
  try {
    await promise;
  } catch (error) {
    return { code: error.code, message: error.message };
  }
  assert.fail('expected the login to be refused');
}

test('a viem-signed message logs in, binds the wallet, and logs in again as the same user', async () => {
  const message = await messageFor(alice);
  const first = await login(message, await alice.signMessage({ message }));
  assert.equal(first.status, 'created');
  assert.equal(first.address, alice.address);
  assert.equal(first.chain_id, '1');

  const again = await messageFor(alice);
  const second = await login(again, await alice.signMessage({ message: again }));
  assert.deepEqual([second.user_id, second.status], [first.user_id, 'existing']);

  const { rows } = await db.query("SELECT identity.resolve('wallet', lower($1)) AS user_id", [alice.address]);
  assert.equal(rows[0].user_id, first.user_id);
});

test('verify_siwe reads the same fields as viem parseSiweMessage', async () => {
  const message = await messageFor(alice);
  const signature = await alice.signMessage({ message });
  const { rows } = await db.query('SELECT (identity.verify_siwe($1, $2, $3)).* ', [message, signature, domain]);
  const ours = rows[0];
  const theirs = parseSiweMessage(message);
  assert.equal(ours.domain, theirs.domain);
  assert.equal(ours.address, theirs.address);
  assert.equal(ours.statement, theirs.statement);
  assert.equal(ours.uri, theirs.uri);
  assert.equal(ours.nonce, theirs.nonce);
  assert.equal(Number(ours.chain_id), theirs.chainId);
  assert.equal(ours.issued_at.getTime(), theirs.issuedAt.getTime());
  assert.equal(ours.expiration_time.getTime(), theirs.expirationTime.getTime());
});

test('a message for one account signed by another is refused as a wrong signer', async () => {
  const message = await messageFor(alice);
  const forged = await mallory.signMessage({ message });
  const error = await refusal(login(message, forged));
  assert.equal(error.code, '28000');
  assert.match(error.message, /wrong signer/);
  // The refusal did not use up the nonce: the genuine signature still logs in.
  const genuine = await login(message, await alice.signMessage({ message }));
  assert.ok(['created', 'existing'].includes(genuine.status));
});

test('an expired message is refused, naming the expiry', async () => {
  const issuedAt = new Date(Date.now() - 60 * 60_000);
  const message = await messageFor(mallory, { issuedAt, expirationTime: new Date(Date.now() - 60_000) });
  const error = await refusal(login(message, await mallory.signMessage({ message })));
  assert.equal(error.code, '28000');
  assert.match(error.message, /expired/);
});

test('a replayed viem login is refused', async () => {
  const message = await messageFor(mallory);
  const signature = await mallory.signMessage({ message });
  assert.equal((await login(message, signature)).status, 'created');
  const error = await refusal(login(message, signature));
  assert.equal(error.code, '28000');
  assert.match(error.message, /already used/);
});
