# Sluice: the two commands are `make demo` and `make test`.
# Every target installs what it needs from the package registries (npm, crates.io) on first use;
# a second run only checks stamps and takes seconds.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
ROOT := $(abspath .)
TOOLS := $(ROOT)/tools
NODE_BIN := $(TOOLS)/node_modules/.bin
CARGO_TOOLS := $(ROOT)/.tools/cargo
CARGO_FUZZ := $(CARGO_TOOLS)/bin/cargo-fuzz
JOBS ?= 2
export CARGO_BUILD_JOBS ?= $(JOBS)

# Pinned tool binaries (installed by `make tools`).
ANVIL := $(NODE_BIN)/anvil
FORGE := $(NODE_BIN)/forge
SOLC := $(TOOLS)/solc-shim.js
export FOUNDRY_SOLC := $(SOLC)
export FOUNDRY_OFFLINE := true
export SLUICE_ANVIL := $(ANVIL)
export SLUICE_FORGE := $(FORGE)
export PATH := $(NODE_BIN):$(PATH)

# Fuzzing budgets: a short smoke inside `make test`, a longer run with `make fuzz`. Each target
# starts from its committed seeds (fuzz/seeds/<target>/, kept in sync by a voucher test) and
# writes what it finds to fuzz/corpus/<target>/ (not committed).
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_SECONDS ?= 300
FUZZ_TARGETS = $(shell sed -n 's/^name = "\(.*\)"/\1/p' fuzz/Cargo.toml | grep -v '^sluice-fuzz$$')

.PHONY: all tools cargo-fuzz demo test test-contracts test-rust fuzz-smoke fuzz lint fmt artifacts artifacts-check clean help

all: test

help:
	@echo "make demo   install pinned tools if missing, build, run a whole local session and reconcile it"
	@echo "            (AGENTS=$(AGENTS) REQUESTS=$(REQUESTS) STREAMS=$(STREAMS) TOKENS=$(TOKENS) DEMO_FLAGS='...'; see demo/README.md)"
	@echo "make test   install pinned tools if missing, then run every test (forge, cargo, fuzz smoke)"
	@echo "make fuzz   fuzz every target for FUZZ_SECONDS (default $(FUZZ_SECONDS)) seconds each"
	@echo "make lint   rustfmt --check and clippy -D warnings on every crate"

## ---- tools ---------------------------------------------------------------------------------

tools: $(TOOLS)/node_modules/.sluice-stamp

$(TOOLS)/node_modules/.sluice-stamp: $(TOOLS)/package.json $(TOOLS)/package-lock.json
	cd $(TOOLS) && npm ci --legacy-peer-deps --no-audit --no-fund --loglevel=error
	chmod +x $(SOLC)
	touch $@

cargo-fuzz: $(CARGO_FUZZ)

$(CARGO_FUZZ):
	cargo install --locked cargo-fuzz@0.13.2 --root $(CARGO_TOOLS)

## ---- demo ----------------------------------------------------------------------------------

# A whole local session (demo/README.md): anvil, the escrow and a token, the example provider,
# the settlement daemon, AGENTS paying agents, cooperative closes, reconciliation against the
# chain. Exits non-zero unless every check passes. Logs: target/demo/<UTC time>/.
AGENTS ?= 20
REQUESTS ?= 50
STREAMS ?= 2
TOKENS ?= 100
DEMO_FLAGS ?=

demo: tools
	@# One cargo invocation: the three share one feature resolution, so the engine builds once.
	cargo build --release --locked -p sluice-demo -p sluice-settle-daemon -p sluice-engine \
	  --bins --example provider
	$(ROOT)/target/release/sluice-demo --agents $(AGENTS) --requests $(REQUESTS) \
	  --streams $(STREAMS) --tokens $(TOKENS) $(DEMO_FLAGS)

## ---- tests ---------------------------------------------------------------------------------

test: tools test-contracts test-rust fuzz-smoke
	@echo "make test: all suites passed"

test-contracts: tools
	@if [ -d contracts ]; then cd contracts && $(FORGE) build --quiet && $(MAKE) -C $(ROOT) --no-print-directory artifacts-check && $(FORGE) test; fi

# Committed contract artifacts (trimmed {abi, bytecode, deployedBytecode}) that alloy `sol!` reads.
# Only the escrow and the test tokens are built for them: `forge build` of those paths.
ARTIFACT_SOURCES := src test/tokens
ARTIFACTS := $(ROOT)/contracts/artifacts

artifacts: tools
	cd contracts && $(FORGE) build --quiet $(ARTIFACT_SOURCES)
	node $(TOOLS)/trim-artifacts.js contracts/out $(ARTIFACTS)

# Rebuilds from scratch into a temporary directory and fails if the committed artifacts differ.
artifacts-check: tools
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	(cd contracts && $(FORGE) build --quiet --out "$$tmp/out" --cache-path "$$tmp/cache" $(ARTIFACT_SOURCES)); \
	node $(TOOLS)/trim-artifacts.js "$$tmp/out" "$$tmp/artifacts"; \
	if ! diff -r -q "$(ARTIFACTS)" "$$tmp/artifacts"; then \
	  echo "contracts/artifacts is stale: run 'make artifacts' and commit the result" >&2; exit 1; \
	fi; echo "artifacts-check: contracts/artifacts match a fresh build"

test-rust:
	cargo fmt --all --check
	cargo test --workspace --locked
	@# The fuzz targets' do_test functions also run as unit tests on seeds (own workspace).
	@if [ -d fuzz ]; then cargo test --manifest-path fuzz/Cargo.toml --locked; fi

fuzz-smoke: cargo-fuzz
	@if [ -d fuzz ]; then for t in $(FUZZ_TARGETS); do \
	  echo "fuzz smoke: $$t ($(FUZZ_SMOKE_SECONDS)s)"; \
	  mkdir -p fuzz/corpus/$$t fuzz/seeds/$$t; \
	  (cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO_FUZZ) run --jobs 1 $$t corpus/$$t seeds/$$t -- -max_total_time=$(FUZZ_SMOKE_SECONDS) -print_final_stats=0 >/dev/null 2>fuzz-$$t.log) || { tail -40 fuzz/fuzz-$$t.log; exit 1; }; \
	done; fi

fuzz: cargo-fuzz
	@for t in $(FUZZ_TARGETS); do \
	  echo "fuzz: $$t ($(FUZZ_SECONDS)s)"; \
	  mkdir -p fuzz/corpus/$$t fuzz/seeds/$$t; \
	  (cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO_FUZZ) run $$t corpus/$$t seeds/$$t -- -max_total_time=$(FUZZ_SECONDS)); \
	done

lint:
	cargo fmt --all --check
	cargo fmt --manifest-path fuzz/Cargo.toml --check
	cargo fmt --manifest-path benches/Cargo.toml --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --locked -- -D warnings
	cargo clippy --manifest-path benches/Cargo.toml --all-targets --locked -- -D warnings

fmt:
	cargo fmt --all

clean:
	cargo clean
	rm -rf contracts/out contracts/cache
