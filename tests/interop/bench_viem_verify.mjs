// viem's SIWE verification of an account signature, in process, single-threaded: parse the
// message, validate its fields (domain, time), recover the signer and compare it with the
// message's address. (viem's verifySiweMessage does the same through a chain client; for a plain
// account signature the result is this recovery.) Prints verifications per second.
//   node bench_viem_verify.mjs messages.jsonl [seconds]
import { readFileSync } from 'node:fs';
import { recoverMessageAddress, isAddressEqual } from 'viem';
import { parseSiweMessage, validateSiweMessage } from 'viem/siwe';

const [file, seconds = '10'] = process.argv.slice(2);
const inputs = readFileSync(file, 'utf8').trim().split('\n').map((line) => JSON.parse(line));

async function verifyOnce({ message, signature }) {
  const fields = parseSiweMessage(message);
  if (!validateSiweMessage({ message: fields, domain: 'bench.example' })) throw new Error('invalid');
  const signer = await recoverMessageAddress({ message, signature });
  if (!isAddressEqual(signer, fields.address)) throw new Error('wrong signer');
}

for (const input of inputs) await verifyOnce(input); // warm-up, and every input must verify
const deadline = performance.now() + Number(seconds) * 1000;
let done = 0;
const started = performance.now();
while (performance.now() < deadline) {
  await verifyOnce(inputs[done % inputs.length]);
  done++;
}
const elapsed = (performance.now() - started) / 1000;
console.log(JSON.stringify({ verifications: done, seconds: elapsed, per_second: done / elapsed }));
