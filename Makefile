# identity_bindings: every command a developer, a DBA or CI needs.
#   make demo   install what is missing, build, and walk through the extension on a throwaway cluster
#   make test   every test: lint, #[test] + #[pg_test], pg_regress contract, client-side tests
#   make bench  every benchmark against its alternatives (BENCHMARKS.md); make soak: 30-minute load
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Build artefacts live outside the clone, so every clone (and CI) reuses one warm cache.
export CARGO_TARGET_DIR ?= /var/cache/identity_bindings/target
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PG_TEST_DATA := $(abspath $(CARGO_TARGET_DIR)/../test-pgdata)

.PHONY: help setup install lint unit fuzz regress client test demo bench bench-siwe soak other-versions

help:
	@sed -n '2,4p' Makefile | sed 's/^# *//'

setup:
	@scripts/setup.sh

# The release build, with the frozen install scripts of earlier releases, for upgrade tests.
install: setup
	scripts/install.sh $(PG_CONFIG)

lint: setup
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets --no-default-features --features "pg15 pg_test" -- -D warnings
	cargo clippy --locked --lib --no-default-features --features pg15 -- -D warnings
	cargo clippy --locked --all-targets -p identity_bindings_client_tests -- -D warnings

# Plain Rust #[test]s and the #[pg_test]s, on pgrx's own test cluster run as the postgres user.
unit: setup
	scripts/unit-tests.sh 15 $(PG_TEST_DATA)

# The user-visible contract, tests/pg_regress, against the release build.
regress: install
	scripts/regress.sh

# What must commit (concurrency, isolation), over real connections.
client: install
	scripts/client-tests.sh

# A short fuzz of the SIWE parser and verifier (scripts/fuzz.sh SECONDS for a long one).
fuzz: setup
	scripts/fuzz.sh 20

test: lint unit fuzz regress client other-versions

# PostgreSQL 16, 17 and 18, which Debian 12 does not ship: clippy, every #[pg_test], the
# pg_regress contract and the client-side tests on each, with builds fetched from PyPI and npm
# (scripts/other-versions.sh says which client tests those builds cannot run, and why).
other-versions: setup
	scripts/other-versions.sh

demo: install
	scripts/demo.sh

# SIWE speed: verification against libsecp256k1 (criterion, callgrind) and viem (pgbench), and
# logins from Node against the app-side login; see BENCHMARKS.md.
bench-siwe: install
	cargo bench --locked --bench siwe_verify
	benches/siwe_instructions.sh
	benches/siwe_pgbench.sh
	benches/siwe_login.sh

# Every benchmark, each side by side with its alternatives in one run; results in BENCHMARKS.md.
# Takes about an hour (the scaling run fills 10 million bindings).
bench: install
	benches/create_binding.sh
	benches/create_binding_instructions.sh
	benches/revoke_merge_instructions.sh
	ROUNDS=9 benches/resolve_many.sh
	benches/resolve_many_instructions.sh
	benches/scaling.sh
	USER_IDS=time-ordered benches/scaling.sh
	benches/backfill.sh
	benches/audit.sh
	benches/upgrade.sh
	$(MAKE) bench-siwe

# The long form of the soak test `make test` runs for 20 s: SOAK_SECONDS of mixed load (30 min).
SOAK_SECONDS ?= 1800
soak: install
	IDENTITY_BINDINGS_SOAK_SECONDS=$(SOAK_SECONDS) scripts/client-tests.sh a_mixed_load -- --nocapture
