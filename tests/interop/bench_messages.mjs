// Benchmark inputs: N SIWE messages, each signed by its own viem account, as JSON lines
// {"message", "signature", "address"}. Keys are derived from a public seed: never real funds.
//   node bench_messages.mjs 64 > messages.jsonl
import { keccak256, toHex } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { createSiweMessage } from 'viem/siwe';

const count = Number(process.argv[2] ?? 64);
for (let i = 0; i < count; i++) {
  const account = privateKeyToAccount(keccak256(toHex(`identity_bindings bench key ${i}`)));
  const message = createSiweMessage({
    address: account.address,
    chainId: 1,
    domain: 'bench.example',
    nonce: `benchNonce${String(i).padStart(8, '0')}`,
    uri: 'https://bench.example/login',
    version: '1',
    statement: 'Sign in to the benchmark.',
    issuedAt: new Date('2026-01-01T00:00:00.000Z'),
    expirationTime: new Date('2100-01-01T00:00:00.000Z'),
  });
  const signature = await account.signMessage({ message });
  console.log(JSON.stringify({ message, signature, address: account.address }));
}
