// The EIP-4361 grammar of identity.verify_siwe, checked against the reference parser:
// @spruceid/siwe-parser, the parser of the EIP authors' own library, generated from the EIP's
// ABNF by apg-js. About 30,000 messages go through both: a valid message with one field given a
// tricky value or one character inserted, replaced or deleted, and the whole text with one
// character deleted or one line end or space inserted. verify_siwe must accept exactly the
// messages the reference accepts (a parse refusal is 22P02; a message that parses fails on its
// dummy signature with 28000), except where the contract's policy knowingly differs. Each such
// difference is named below and recognised precisely: the message is repaired in that one
// respect and must then be accepted. A sample of the messages both accept is then signed, and
// the fields verify_siwe returns must be those the reference reads. Run by `make test`
// (scripts/client-tests.sh).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import siweParser from '@spruceid/siwe-parser';
import { getAddress } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { testDatabase } from './database.mjs';

const db = testDatabase('interop_grammar');

// --- The messages --------------------------------------------------------------------------

// A well-known development key (the first Hardhat/Anvil account): never real funds.
const signer = privateKeyToAccount('0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80');

const BASE = {
  scheme: undefined,
  domain: 'service.org',
  address: signer.address,
  statement: 'I accept the ServiceOrg Terms of Service: https://service.org/tos',
  uri: 'https://service.org/login',
  version: '1',
  chainId: '1',
  nonce: '32891757',
  issuedAt: '2021-09-30T16:25:24.000Z',
  expirationTime: undefined,
  notBefore: undefined,
  requestId: undefined,
  resources: ['ipfs://Qme7ss3ARVgxv6rXqVPiikMJ8u2NLgmgszg13pYrDKEoiu'],
};

/** EIP-4361's layout; `undefined` leaves an optional line out. */
function render(m) {
  const lines = [
    `${m.scheme === undefined ? '' : `${m.scheme}://`}${m.domain} wants you to sign in with your Ethereum account:`,
    m.address,
    '',
    ...(m.statement === undefined ? [] : [m.statement, '']),
    `URI: ${m.uri}`,
    `Version: ${m.version}`,
    `Chain ID: ${m.chainId}`,
    `Nonce: ${m.nonce}`,
    `Issued At: ${m.issuedAt}`,
  ];
  if (m.expirationTime !== undefined) lines.push(`Expiration Time: ${m.expirationTime}`);
  if (m.notBefore !== undefined) lines.push(`Not Before: ${m.notBefore}`);
  if (m.requestId !== undefined) lines.push(`Request ID: ${m.requestId}`);
  if (m.resources !== undefined) lines.push('Resources:', ...m.resources.map((r) => `- ${r}`));
  return lines.join('\n');
}

const URIS = [
  'https://u:p@service.org:8080/a/b?c=d#e', 'http://[::1]:80/a', 'http://[::ffff:1.2.3.4]/', 'http://[v7.abc]/',
  'http://[::001.002.003.004]/', 'http://[1:2:3:4:5:6:7:8]/', 'http://[1:2:3:4:5:6:7:8:9]/', 'http://[1::2::3]/',
  'http://[::]/', 'http://[12345::]/', 'http://[::1.2.3]/', 'http://[::256.1.1.1]/', 'http://256.1.1.1/',
  'http://a%20b/', 'http://a%2/', 'http://a b/', 'a:b', 'a:', 'a://', 'a:///', 'A1+-.:x', '1a:x', '+a:x',
  'urn:isbn:0451450523', 'mailto:a@b.c', 'did:key:z6Mk%41', 'http://h:99999999999999999999/', 'http://h:a/',
  'http://h/#a#b', 'http://h/?a?b', 'http://h/%', 'http://h/é', 'http://h/[', "http://h/:@!$&'()*+,;=",
  'http:h', '//h/p', '/p', '', 'http://[fe80::1%25eth0]/', 'http://@/', 'http://:80/', 'http:///x', 'http://[v.x]/',
];
const TIMES = [
  '2021-09-30T16:25:24Z', '2021-09-30t16:25:24z', '2021-09-30 16:25:24Z', '2021-09-30_16:25:24Z',
  '2021-09-30T16:25:24+00:00', '2021-09-30T16:25:24-00:00', '2021-09-30T16:25:24+24:00', '2021-09-30T16:25:24+00:60',
  '2021-09-30T16:25:24.Z', '2021-09-30T16:25:24.1234567890123Z', '2021-02-29T00:00:00Z', '2020-02-29T00:00:00Z',
  '2021-04-31T00:00:00Z', '2021-13-01T00:00:00Z', '2021-01-00T00:00:00Z', '2016-12-31T23:59:60Z',
  '2016-12-31T15:59:60-08:00', '2021-12-01T23:59:60Z', '2021-12-31T23:59:61Z', '2021-12-31T24:00:00Z',
  '0000-01-01T00:00:00Z', '10000-01-01T00:00:00Z', '2021-9-30T16:25:24Z', '2021-09-30T16:25Z', '2021-09-30',
  '2021-09-30T16:25:24', '2021-09-30T16:25:24+0000', '2021-09-30T16:25:24,000Z',
];
const POOLS = {
  scheme: [undefined, 'https', 'a', 'A1+-.', '1a', 'a_b', '', 'http:'],
  domain: [
    'service.org:8080', 'localhost', '127.0.0.1:443', '[::1]', '[::1]:8080', 'u@service.org', 'u:p@service.org',
    'service.org:', 'service.org:abc', '', 'a b', 'a%20b', 'a%2', 'ser_vice.org', 'service.org/', 'service.org?x',
    '@service.org', ':80', '[::1', '::1', '[v1.x]', 'é.org', '[::001.2.3.4]', '[::1.2.3.]',
  ],
  address: [
    BASE.address.toLowerCase(), `0x${BASE.address.slice(2).toUpperCase()}`, `0X${BASE.address.slice(2)}`,
    BASE.address.slice(0, -1), `${BASE.address}0`, BASE.address.replace(/[a-f]/, (c) => c.toUpperCase()),
    '0x0000000000000000000000000000000000000000',
  ],
  statement: [
    undefined, '', 'tab\there', '<x>', '{x}', '|', '`', '^', '\\', '"', 'é', ' ', '\r', '%',
    "~-._:/?#[]@!$&'()*+,;=% ",
  ],
  uri: URIS,
  version: ['2', '01', '1.0', '', ' 1'],
  chainId: ['0', '01', '9223372036854775807', '9223372036854775808', '99999999999999999999', '-1', '+1', '', '0x1'],
  nonce: [
    '3289175', 'abcdefgh', 'ABCDEFGHIJKLMNOP', 'abc-efgh', 'abcdefg_', 'abcdefgé', '12345678 ', '', 'x'.repeat(200),
  ],
  issuedAt: TIMES,
  expirationTime: TIMES,
  notBefore: TIMES,
  requestId: ['', 'abc', 'a b', '%41', '%4', '%zz', 'a/b', 'a?b', 'a#b', ":@!$&'()*+,;=", 'é', '-._~'],
  resources: [undefined, [], ['https://a.b', 'x:y'], [''], ['a b'], ['/rel'], ...URIS.map((uri) => [uri])],
};
// Values whose every character is replaced, preceded by an insertion, or deleted in turn.
const SEEDS = {
  domain: ['service.org', 'u:p@[::1]:8080', '127.0.0.1:443', '[v7.a:b]'],
  uri: ['https://u:p@service.org:8080/a/b?c=d#e', 'http://[::ffff:1.2.3.4]/x', 'urn:isbn:0451450523'],
  statement: ['I accept: https://a.b/tos?x=1#y'],
  requestId: ["a%41:@!$&'()*+,;=-._~"],
  nonce: ['32891757abc'],
  chainId: ['137'],
  issuedAt: ['2016-12-31T23:59:60.5Z', '2021-09-30T16:25:24+05:30'],
};
const ALPHABET = [...'aZ09-._~:/?#[]@!$&\'()*+,;=% "<>{}|\\^`Tt', 'é', '\t', '\x7f', '%zz', '%41', '::'];

function* valueMutations(seed) {
  for (let at = 0; at <= seed.length; at += 1) {
    for (const c of ALPHABET) {
      yield seed.slice(0, at) + c + seed.slice(at + 1);
      yield seed.slice(0, at) + c + seed.slice(at);
    }
    yield seed.slice(0, at) + seed.slice(at + 1);
  }
}

function corpus() {
  const messages = new Set([render(BASE)]);
  for (const [field, values] of Object.entries(POOLS)) {
    for (const value of values) messages.add(render({ ...BASE, [field]: value }));
  }
  for (const [field, seeds] of Object.entries(SEEDS)) {
    for (const seed of seeds) {
      for (const value of valueMutations(seed)) {
        messages.add(render({ ...BASE, [field]: value }));
      }
    }
  }
  for (const uri of SEEDS.uri) {
    for (const value of valueMutations(uri)) messages.add(render({ ...BASE, resources: [value] }));
  }
  const text = render({ ...BASE, expirationTime: '2100-01-01T00:00:00Z', requestId: 'r1' });
  for (let at = 0; at <= text.length; at += 1) {
    messages.add(text.slice(0, at) + text.slice(at + 1));
    messages.add(`${text.slice(0, at)}\n${text.slice(at)}`);
    messages.add(`${text.slice(0, at)} ${text.slice(at)}`);
  }
  return [...messages];
}

// --- The two parsers -----------------------------------------------------------------------

/** The reference's reading of `message`, or undefined when it refuses the message. */
function referenceReads(message) {
  try {
    return new siweParser.ParsedMessage(message);
  } catch {
    return undefined;
  }
}

const referenceAccepts = (message) => referenceReads(message) !== undefined;

// A well-formed signature that no message here carries: a message that parses fails on it.
const DUMMY_SIGNATURE = `0x${'11'.repeat(64)}1b`;

/** `{ accepted, error }` from identity.verify_siwe; any SQLSTATE but 22P02 and 28000 throws. */
async function ours(message) {
  try {
    await db.query('SELECT identity.verify_siwe($1, $2)', [message, DUMMY_SIGNATURE]);
  } catch (error) {
    if (error.code === '28000') return { accepted: true };
    if (error.code === '22P02') return { accepted: false, error: error.message };
    throw error;
  }
  throw new Error(`the dummy signature verified: ${JSON.stringify(message)}`);
}

// --- Where the contract's policy knowingly differs ---------------------------------------

const addressOf = (message) => message.split('\n')[1];
const lineOf = (message, tag) => message.split('\n').find((line) => line.startsWith(tag)) ?? '';
const ipv6Literals = (message) => message.match(/\[[0-9A-Fa-f:.]*\]/g) ?? [];
const dottedTail = (literal) => (literal.includes('.') ? literal.slice(literal.lastIndexOf(':') + 1, -1) : undefined);
const domainOf = (message) => message.split('\n')[0].split(' wants you')[0].replace(/^[^/]*:\/\//, '');

const POLICY = [
  {
    name: 'an all-lowercase or all-uppercase address is accepted: no checksum to check',
    weAccept: true,
    applies: (m) => /^0x([0-9a-f]{40}|[0-9A-F]{40})$/.test(addressOf(m)),
    repair: (m) => m.replace(addressOf(m), getAddress(addressOf(m))),
  },
  {
    name: 'a chain id beyond bigint is refused',
    weAccept: false,
    applies: (m) => {
      const digits = lineOf(m, 'Chain ID: ').slice('Chain ID: '.length);
      return /^\d+$/.test(digits) && BigInt(digits) > 2n ** 63n - 1n;
    },
    repair: (m) => m.replace(lineOf(m, 'Chain ID: '), 'Chain ID: 1'),
  },
  {
    name: 'a domain that names no host (RFC 3986 allows an empty one) is refused',
    weAccept: false,
    applies: (m) => {
      const hostAndPort = domainOf(m).split('@').pop();
      return !hostAndPort.startsWith('[') && hostAndPort.split(':')[0] === '';
    },
    repair: (m) => m.replace(`${domainOf(m)} wants you`, 'service.org wants you'),
  },
  {
    name: "an IPv6 literal's IPv4 part with an empty octet is refused, as RFC 3986's dec-octet says",
    weAccept: false,
    applies: (m) => ipv6Literals(m).some((literal) => dottedTail(literal)?.split('.').includes('')),
    repair: (m) => ipv6Literals(m).reduce(
      (text, literal) => text.replace(literal, literal.replace(/(?<=[:.])(?=[.\]])/g, '0')),
      m,
    ),
  },
  {
    name: 'second 60 is refused except where a leap second can fall: the end of a UTC month',
    weAccept: false,
    applies: (m) => /^(Issued At|Expiration Time|Not Before): .*T\d\d:\d\d:60/m.test(m),
    repair: (m) => m.replace(/(T\d\d:\d\d:)60/g, '$159'),
  },
];

test('verify_siwe accepts exactly the messages the reference parser accepts, but for the named policy', async (t) => {
  const messages = corpus();
  const tally = { bothAccept: 0, bothRefuse: 0 };
  const explained = new Map(POLICY.map((rule) => [rule.name, 0]));
  const unexplained = [];
  for (const message of messages) {
    const reference = referenceAccepts(message);
    const verdict = await ours(message);
    if (verdict.accepted === reference) {
      tally[reference ? 'bothAccept' : 'bothRefuse'] += 1;
      continue;
    }
    const rule = POLICY.find((r) => r.weAccept === verdict.accepted && r.applies(message));
    const repaired = rule?.repair(message);
    const repairedAgrees = rule && (rule.weAccept ? referenceAccepts(repaired) : (await ours(repaired)).accepted);
    if (repairedAgrees) {
      explained.set(rule.name, explained.get(rule.name) + 1);
    } else {
      unexplained.push({ message, oursAccepts: verdict.accepted, ourError: verdict.error });
    }
  }
  const policyCounts = JSON.stringify([...explained.values()]);
  t.diagnostic(`${messages.length} messages: ${JSON.stringify(tally)}, policy differences: ${policyCounts}`);
  assert.deepEqual(unexplained.slice(0, 10), [], `${unexplained.length} messages where the two disagree`);
  // The corpus reaches both sides of the grammar and every policy difference.
  assert.ok(messages.length > 20_000, `${messages.length} messages`);
  assert.ok(tally.bothAccept > 500 && tally.bothRefuse > 10_000, JSON.stringify(tally));
  for (const [name, count] of explained) assert.ok(count > 0, `never exercised: ${name}`);
});

// --- The fields read ----------------------------------------------------------------------

/** verify_siwe's columns for a genuine signature, at an instant inside the message's window. */
async function oursReads(message, reference) {
  const at = reference.notBefore ?? reference.issuedAt;
  const { rows } = await db.query(
    `SELECT scheme, domain, address, statement, uri, version, chain_id::text, nonce, issued_at,
            expiration_time, not_before, request_id, resources
       FROM identity.verify_siwe($1, $2, at => $3)`,
    [message, await signer.signMessage({ message }), at],
  );
  return rows[0];
}

/** The same instant to the millisecond, which is what a JavaScript Date holds. */
function sameInstant(ours, theirs) {
  if (theirs === undefined) return ours === null;
  return ours !== null && Math.abs(ours.getTime() - Date.parse(theirs)) < 1;
}

/** Instants a JavaScript Date can hold: every one but a leap second. */
const readableInstants = (r) =>
  [r.issuedAt, r.notBefore, r.expirationTime].every((t) => t === undefined || Number.isFinite(Date.parse(t)));
/** A validity window some instant is inside of. */
const openWindow = (r) =>
  r.expirationTime === undefined || Date.parse(r.expirationTime) > Date.parse(r.notBefore ?? r.issuedAt);

test('verify_siwe returns the fields the reference parser reads', async (t) => {
  const signed = corpus()
    .filter((message) => addressOf(message) === signer.address && !POLICY.some((rule) => rule.applies(message)))
    .map((message) => ({ message, reference: referenceReads(message) }))
    .filter(({ reference }) => reference && readableInstants(reference) && openWindow(reference))
    .filter((_, index) => index % 8 === 0);
  const differences = [];
  for (const { message, reference: r } of signed) {
    const ours = await oursReads(message, r);
    const same = ours.scheme === (r.scheme ?? null) && ours.domain === r.domain && ours.address === r.address
      && ours.statement === (r.statement ?? null) && ours.uri === r.uri && ours.version === r.version
      && ours.chain_id === String(r.chainId) && ours.nonce === r.nonce && ours.request_id === (r.requestId ?? null)
      && JSON.stringify(ours.resources) === JSON.stringify(r.resources ?? null)
      && sameInstant(ours.issued_at, r.issuedAt) && sameInstant(ours.expiration_time, r.expirationTime)
      && sameInstant(ours.not_before, r.notBefore);
    if (!same) differences.push({ message, ours, reference: { ...r } });
  }
  t.diagnostic(`${signed.length} signed messages compared field by field`);
  assert.deepEqual(differences.slice(0, 5), [], `${differences.length} of ${signed.length} messages read differently`);
  assert.ok(signed.length > 500, `only ${signed.length} messages compared`);
});
