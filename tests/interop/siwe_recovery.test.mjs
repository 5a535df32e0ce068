// The signer identity.verify_siwe recovers from a signature, checked against viem's
// recoverMessageAddress on 3,000 signatures of one message: random r and s, secp256k1's edge
// values (0, 1, n - 1, n, n + 1, p, 2^256 - 1), and every recovery byte form (27/28, 0/1, the
// refused 29 and 2, and 64-byte EIP-2098 compact signatures, which viem reads with
// parseCompactSignature). For each, both must name the same EIP-55 address or both refuse it.
// Run by `make test` (scripts/client-tests.sh).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  compactSignatureToSignature,
  parseCompactSignature,
  recoverMessageAddress,
  serializeSignature,
} from 'viem';
import { testDatabase } from './database.mjs';

const db = testDatabase('interop_recovery');

const MESSAGE = [
  'service.org wants you to sign in with your Ethereum account:',
  '0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2',
  '',
  '',
  'URI: https://service.org/login',
  'Version: 1',
  'Chain ID: 1',
  'Nonce: 32891757',
  'Issued At: 2021-09-30T16:25:24.000Z',
].join('\n');

const word = (n) => n.toString(16).padStart(64, '0');
const N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n; // the group order
const P = 0xfffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2fn; // the field prime
const EDGES = [0n, 1n, N - 1n, N, N + 1n, P, 2n ** 256n - 1n].map(word);
const RECOVERY_BYTES = ['1b', '1c', '00', '01', '1d', '02', '']; // '' is a 64-byte compact signature

/** Deterministic "random" 32-byte words, so a failure can be re-run. */
const randomWord = (label) => createHash('sha256').update(label).digest('hex');

function* signatures() {
  for (let i = 0; i < 3000; i += 1) {
    const edges = i < EDGES.length ** 2;
    const r = edges ? EDGES[i % EDGES.length] : randomWord(`r${i}`);
    const s = edges ? EDGES[Math.floor(i / EDGES.length)] : randomWord(`s${i}`);
    yield `0x${r}${s}${RECOVERY_BYTES[i % RECOVERY_BYTES.length]}`;
  }
}

/** The signer verify_siwe names ("signed by 0x…"), or 'refused' for a signature it rejects. */
async function oursRecovers(signature) {
  try {
    await db.query('SELECT identity.verify_siwe($1, $2)', [MESSAGE, signature]);
  } catch (error) {
    assert.equal(error.code, '28000', error.message);
    return /wrong signer: .* signed by (0x[0-9a-fA-F]{40})/.exec(error.message)?.[1] ?? 'refused';
  }
  throw new Error(`a made-up signature verified: ${signature}`);
}

async function viemRecovers(signature) {
  const compact = signature.length === 2 + 128;
  try {
    const full = compact ? serializeSignature(compactSignatureToSignature(parseCompactSignature(signature))) : signature;
    return await recoverMessageAddress({ message: MESSAGE, signature: full });
  } catch {
    return 'refused';
  }
}

test('verify_siwe recovers the same signer as viem from any signature, or refuses it as viem does', async () => {
  const disagreements = [];
  const tally = { recovered: 0, refused: 0 };
  for (const signature of signatures()) {
    const [ours, viems] = [await oursRecovers(signature), await viemRecovers(signature)];
    if (ours !== viems) disagreements.push({ signature, ours, viems });
    else tally[ours === 'refused' ? 'refused' : 'recovered'] += 1;
  }
  assert.deepEqual(disagreements.slice(0, 10), [], `${disagreements.length} signatures where the two differ`);
  // Both outcomes occur: the comparison is not all refusals or all recoveries.
  assert.ok(tally.recovered > 1000 && tally.refused > 500, JSON.stringify(tally));
});
