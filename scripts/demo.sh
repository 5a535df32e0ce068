#!/usr/bin/env bash
# The demo: a throwaway cluster with the installed extension, and a walk through what it does.
# Run it with `make demo`, which installs what is missing and builds first.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/throwaway.sh
echo "Starting a throwaway PostgreSQL 15 cluster ..."
throwaway_cluster identity_demo
psql=(psql -X -q -h "$cluster" -p 5432 -U postgres -d postgres)
"${psql[@]}" -c "CREATE EXTENSION identity_bindings"
echo "CREATE EXTENSION identity_bindings: done."
"${psql[@]}" -f scripts/demo.sql 2>&1  # errors in their place in the story

# Sign-In with Ethereum: a real wallet library (viem) signs; the database verifies and binds.
interop_packages
domain=demo.example
sign() {  # sign <nonce>: prints the wallet's JSON {message, signature, address}
    node tests/interop/wallet.mjs "$domain" "$1"
}
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'], end='')"; }
login() {  # login <json>: siwe_login with the signed message
    "${psql[@]}" -v message="$(field message <<<"$1")" -v signature="$(field signature <<<"$1")" \
        -v domain="$domain" 2>&1 <<'SQL'
\pset footer off
SELECT user_id, address, chain_id, status FROM identity.siwe_login(:'message', :'signature', :'domain');
\echo SQLSTATE: :LAST_ERROR_SQLSTATE
SQL
}

echo
echo "== 10. Sign-In with Ethereum: the database issues a nonce =="
nonce=$("${psql[@]}" -At -c "SELECT identity.issue_nonce('5 minutes')")
echo "nonce: $nonce"
echo
echo "== 11. The wallet (viem, a local test key) signs an EIP-4361 message carrying it =="
first=$(sign "$nonce")
field message <<<"$first"; echo
echo "signature: $(field signature <<<"$first")"
echo
echo "== 12. One round trip: verify, consume the nonce, bind the wallet to a new user =="
login "$first"
echo
echo "== 13. Next login (new nonce, new signature): the same user =="
login "$(sign "$("${psql[@]}" -At -c "SELECT identity.issue_nonce('5 minutes')")")"
echo
echo "== 14. The first message replayed: refused, its nonce is spent =="
login "$first"
echo
echo "== 15. The wallet binding keeps its proof: re-verified from the stored evidence =="
"${psql[@]}" -c "SELECT provider, external_id, identity.verify_binding(id) AS evidence_reverifies
                   FROM identity.user_bindings WHERE provider = 'wallet' AND external_id = '$(field address <<<"$first")'"
echo
echo "Demo finished; the cluster is removed."
