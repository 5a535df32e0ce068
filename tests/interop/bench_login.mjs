// Sign-In with Ethereum logins end to end from a Node application, one connection over the Unix
// socket, side by side on the same kind of input (run by benches/siwe_login.sh):
//   ext  one round trip: SELECT ... FROM identity.siwe_login(message, signature, domain);
//   app  what the application does without the extension: viem parses, validates and recovers
//        the signer, then BEGIN; consume the nonce; look the wallet up; on a first login insert
//        the binding and its event; COMMIT (prepared statements, as drivers do).
// Two workloads: first logins (a new wallet: the login creates the user's binding) and returning
// logins (the wallet is bound already). Every login has its own fresh nonce and its own signed
// message; issuing nonces, signing and binding the returning wallets happen before the clock
// starts. Prints one JSON line per contestant and workload: {contestant, workload, logins, seconds}.
//   node bench_login.mjs <socket directory> [logins per cell]
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { keccak256, toHex, recoverMessageAddress, isAddressEqual } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { createSiweMessage, parseSiweMessage, validateSiweMessage } from 'viem/siwe';

const [host, perCell = '500'] = process.argv.slice(2);
const logins = Number(perCell);
const domain = 'bench.example';
const client = new pg.Client({ host, user: 'postgres', database: 'postgres' });
await client.connect();

// Keys derived from a public seed: never real funds. Each (contestant, workload) cell has its own.
const account = (cell, i) => privateKeyToAccount(keccak256(toHex(`identity_bindings login bench ${cell} ${i}`)));

async function signedLogins(cell, nonces) {
  return Promise.all(
    nonces.map(async (nonce, i) => {
      const signer = account(cell, i);
      const message = createSiweMessage({
        address: signer.address, chainId: 1, domain, nonce, uri: `https://${domain}/login`, version: '1',
        statement: 'Sign in to the benchmark.', issuedAt: new Date(Date.now() - 60_000),
        expirationTime: new Date(Date.now() + 3600_000),
      });
      return { message, signature: await signer.signMessage({ message }), address: signer.address };
    }),
  );
}

async function extNonces() {
  const { rows } = await client.query('SELECT identity.issue_nonce() AS nonce FROM generate_series(1, $1)', [logins]);
  return rows.map((row) => row.nonce);
}

async function appNonces() {
  const nonces = Array.from({ length: logins }, () => randomUUID().replaceAll('-', ''));
  await client.query(
    "INSERT INTO app_nonces (nonce, expires_at) SELECT unnest($1::text[]), now() + interval '10 minutes'",
    [nonces],
  );
  return nonces;
}

async function extLogin({ message, signature }) {
  const { rows } = await client.query({
    name: 'ext_login',
    text: 'SELECT user_id, status FROM identity.siwe_login($1, $2, $3)',
    values: [message, signature, domain],
  });
  return rows[0].status;
}

async function appLogin({ message, signature }) {
  const fields = parseSiweMessage(message);
  if (!validateSiweMessage({ message: fields, domain })) throw new Error('invalid message');
  const signer = await recoverMessageAddress({ message, signature });
  if (!isAddressEqual(signer, fields.address)) throw new Error('wrong signer');
  const address = fields.address;
  await client.query('BEGIN');
  try {
    const consumed = await client.query({
      name: 'app_consume',
      text: 'DELETE FROM app_nonces WHERE nonce = $1 AND expires_at > now() RETURNING true',
      values: [fields.nonce],
    });
    if (consumed.rowCount !== 1) throw new Error('nonce unknown, used or expired');
    const found = await client.query({
      name: 'app_owner',
      text: "SELECT user_id FROM app_bindings WHERE provider = 'wallet' AND external_id = $1",
      values: [address],
    });
    let status = 'existing';
    if (found.rowCount === 0) {
      const userId = randomUUID();
      const bindingId = randomUUID();
      const inserted = await client.query({
        name: 'app_binding',
        text: `INSERT INTO app_bindings (id, user_id, provider, external_id) VALUES ($1, $2, 'wallet', $3)
               ON CONFLICT (provider, external_id) DO NOTHING RETURNING id`,
        values: [bindingId, userId, address],
      });
      if (inserted.rowCount !== 1) throw new Error('bound meanwhile');
      const evidence = { method: 'siwe', message, signature, chain_id: fields.chainId, domain, nonce: fields.nonce };
      await client.query({
        name: 'app_event',
        text: `INSERT INTO app_events (id, user_id, event_type, payload)
               VALUES ($1, $2, 'bind', jsonb_build_object('binding_id', $3::uuid, 'provider', 'wallet',
                                                          'external_id', $4::text, 'evidence', $5::jsonb))`,
        values: [randomUUID(), userId, bindingId, address, JSON.stringify(evidence)],
      });
      status = 'created';
    }
    await client.query('COMMIT');
    return status;
  } catch (error) {
    await client.query('ROLLBACK');
    throw error;
  }
}

async function bindBeforehand(contestant, inputs) {
  const addresses = inputs.map((input) => input.address);
  if (contestant === 'ext') {
    await client.query(
      `SELECT count(*) FROM unnest($1::text[]) a,
              identity.create_binding(gen_random_uuid(), 'wallet', a, '{"method": "bench"}')`,
      [addresses],
    );
  } else {
    await client.query(
      `INSERT INTO app_bindings (id, user_id, provider, external_id)
       SELECT gen_random_uuid(), gen_random_uuid(), 'wallet', a FROM unnest($1::text[]) a`,
      [addresses],
    );
  }
}

const contestants = { ext: [extLogin, extNonces], app: [appLogin, appNonces] };
const rounds = Number(process.env.ROUNDS ?? 5);
for (let round = 1; round <= rounds; round++) {
  for (const workload of ['first', 'returning']) {
    for (const [contestant, [login, nonces]] of Object.entries(contestants)) {
      const cell = `${round} ${workload} ${contestant}`;
      const inputs = await signedLogins(cell, await nonces());
      if (workload === 'returning') await bindBeforehand(contestant, inputs);
      const expected = workload === 'first' ? 'created' : 'existing';
      const started = performance.now();
      for (const input of inputs) {
        const status = await login(input);
        if (status !== expected) throw new Error(`${cell}: a login came back ${status}, not ${expected}`);
      }
      const seconds = (performance.now() - started) / 1000;
      console.log(JSON.stringify({ round, contestant, workload, logins: inputs.length, seconds }));
    }
  }
}
await client.end();
