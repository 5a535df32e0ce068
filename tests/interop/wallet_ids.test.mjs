// The wallet provider's ids against viem's EIP-55 code: identity.canonical_external_id('wallet',
// id), which every binding, look-up and backfill goes through, must give viem's getAddress for
// every spelling the contract accepts (all lowercase, all uppercase, the checksummed form), and
// refuse with 22023 every mixed-case spelling viem's strict isAddress refuses, for 1,000 seeded
// random addresses. Run by `make test` (scripts/client-tests.sh).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { getAddress, isAddress } from 'viem';
import { testDatabase } from './database.mjs';

const db = testDatabase('interop_wallet_ids');

/** The canonical id, or the SQLSTATE of the refusal. */
async function canonical(id) {
  try {
    const { rows } = await db.query("SELECT identity.canonical_external_id('wallet', $1) AS id", [id]);
    return rows[0].id;
  } catch (error) {
    return error.code;
  }
}

/** The checksummed spelling with the case of its `nth` letter flipped: a wrong checksum. */
function flipLetter(checksummed, nth) {
  const letters = [...checksummed.slice(2).matchAll(/[a-fA-F]/g)].map((m) => m.index + 2);
  if (letters.length === 0) return undefined;
  const at = letters[nth % letters.length];
  const c = checksummed[at];
  const flipped = c === c.toLowerCase() ? c.toUpperCase() : c.toLowerCase();
  return checksummed.slice(0, at) + flipped + checksummed.slice(at + 1);
}

test('wallet ids canonicalize to viem checksums, and wrong checksums are refused where viem refuses them', async () => {
  const seen = { canonicalized: 0, refused: 0 };
  for (let i = 0; i < 1000; i += 1) {
    const digits = createHash('sha256').update(`address ${i}`).digest('hex').slice(0, 40);
    const checksummed = getAddress(`0x${digits}`);
    for (const spelling of [`0x${digits}`, `0x${digits.toUpperCase()}`, checksummed]) {
      assert.equal(await canonical(spelling), checksummed, spelling);
      seen.canonicalized += 1;
    }
    const wrong = flipLetter(checksummed, i);
    if (wrong !== undefined && wrong !== `0x${digits}` && wrong !== `0x${digits.toUpperCase()}`) {
      assert.equal(isAddress(wrong, { strict: true }), false, wrong);
      assert.equal(await canonical(wrong), '22023', wrong);
      seen.refused += 1;
    }
  }
  assert.ok(seen.refused > 900, JSON.stringify(seen));
});
