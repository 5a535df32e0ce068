// A command-line test wallet for the demo: builds and signs a Sign-In with Ethereum message with
// viem, and prints {"message", "signature", "address"} as JSON.
//   node wallet.mjs <domain> <nonce>
// The key is the first well-known development key (Hardhat/Anvil account #0): never real funds.
import { privateKeyToAccount } from 'viem/accounts';
import { createSiweMessage } from 'viem/siwe';

const [domain, nonce] = process.argv.slice(2);
if (!domain || !nonce) {
  console.error('usage: node wallet.mjs <domain> <nonce>');
  process.exit(2);
}
const account = privateKeyToAccount('0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80');
const issuedAt = new Date();
const message = createSiweMessage({
  address: account.address,
  chainId: 1,
  domain,
  nonce,
  uri: `https://${domain}/login`,
  version: '1',
  statement: 'Sign in to the identity_bindings demo.',
  issuedAt,
  expirationTime: new Date(issuedAt.getTime() + 5 * 60_000),
});
const signature = await account.signMessage({ message });
console.log(JSON.stringify({ message, signature, address: account.address }));
