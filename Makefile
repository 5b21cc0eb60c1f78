# spb-gateway — every target documents itself: `make help`.
SHELL := /bin/bash
VENV  := target/venv
PY    := $(VENV)/bin/python
AARCH64 := aarch64-unknown-linux-gnu

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

deps: ## Install what a fresh Debian machine lacks (apt-get; only what is missing)
	@tools/install-deps.sh

venv: $(PY) ## Python venv with the independent peers (pysparkplug) under target/
$(PY): tests/interop/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r tests/interop/requirements.txt
	@touch $(PY)

NODE_PEERS := target/node-peers
node-peers: $(NODE_PEERS)/node_modules/node-snap7/build/Release/node_snap7.node ## node-snap7 (Snap7's C++ S7 server) under target/, built from npm
$(NODE_PEERS)/node_modules/node-snap7/build/Release/node_snap7.node:
	mkdir -p $(NODE_PEERS)
	[ -f $(NODE_PEERS)/package.json ] || (cd $(NODE_PEERS) && npm init -y >/dev/null)
	cd $(NODE_PEERS) && npm install --no-audit --no-fund --foreground-scripts node-snap7@1.0.9
	@# npm 11 may skip install scripts: build the addon explicitly when it did.
	cd $(NODE_PEERS)/node_modules/node-snap7 && { [ -f build/Release/node_snap7.node ] || npx --yes node-gyp rebuild; }

test: deps venv node-peers ## The full test suite: fmt, clippy -D warnings, cargo deny, every fuzz target built and smoke-run, all tests
	cargo fmt --check
	cargo clippy --all-targets --all-features -- -D warnings
	$(MAKE) deny
	$(MAKE) fuzz-smoke
	$(MAKE) aarch64-check
	$(MAKE) yocto-lint
	cargo test --all-features
	$(MAKE) deb-check

fmt: ## Format the code
	cargo fmt

lint: ## clippy with warnings as errors
	cargo clippy --all-targets --all-features -- -D warnings

proto: ## Regenerate src/sparkplug/generated/ from proto/sparkplug_b.proto (no protoc needed)
	cargo run -q --example protogen

fuzz-build: ## Build every fuzz target (compiled and linked against libFuzzer; `make fuzz` runs them)
	cargo build --locked --manifest-path fuzz/Cargo.toml --bins

FUZZ_SMOKE_SECONDS ?= 8
fuzz-smoke: fuzz-build ## Every fuzz target over its seeds (fuzz/seeds/), then FUZZ_SMOKE_SECONDS of mutations each: a smoke run in `make test`
	@for t in $$(ls fuzz/fuzz_targets | sed 's/\.rs$$//'); do \
		mkdir -p target/fuzz-smoke/$$t; \
		seeds=fuzz/seeds/$$t; [ -d $$seeds ] || seeds=; \
		echo "fuzz-smoke $$t"; \
		fuzz/target/debug/$$t target/fuzz-smoke/$$t $$seeds -max_total_time=$(FUZZ_SMOKE_SECONDS) -runs=200000 \
			-artifact_prefix=target/fuzz-smoke/$$t- > target/fuzz-smoke/$$t.log 2>&1 \
			|| { tail -30 target/fuzz-smoke/$$t.log; exit 1; }; \
	done

FUZZ_SECONDS ?= 60
fuzz: ## Fuzz every target for FUZZ_SECONDS each (installs cargo-fuzz if missing)
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cd fuzz && for t in $$(cargo fuzz list); do \
		RUSTC_BOOTSTRAP=1 cargo fuzz run -O $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; done

bench-codec: venv ## Codec benchmark, ours vs pysparkplug in one run (table in target/bench-codec.md)
	cargo bench --bench codec

bench-gateway: ## Gateway throughput, CPU and RSS at 1k/10k/100k sim tags (table in target/bench-gateway.md)
	cargo bench --bench gateway_throughput

bench-queue: ## The store's segment log: appends/s, replay/s, disk per record, disk under churn (target/bench-queue.md)
	cargo bench --bench queue

bench-store-engines: ## sled vs redb for the queue, each in its own process (target/bench-store-engines.md)
	cargo bench --bench store_engines

bench-store-crash: ## SIGKILL at random moments: acknowledged appends lost, per engine and commit policy (target/bench-store-crash.md)
	cargo bench --bench store_crash

bench-outage: ## Long outages: RSS during and after, bytes written per sample, files vs max_bytes, drain time (target/bench-outage.md)
	cargo bench --bench outage

bench-store-forward: ## Gateway-level outage: stored/s, disk per sample, replayed/s with live data flowing (target/bench-store-forward.md)
	cargo bench --bench store_forward

bench-uplink: ## spb-uplink into PostgreSQL: sink rows/s, end-to-end facts/s, lag p50/p99, RSS (target/bench-uplink.md)
	cargo bench --features uplink --bench uplink_ingest

bench-command: venv ## Command write-back round trip, S7 and Logix, beside the peers' own clients (target/bench-command.md)
	cargo bench --features uplink --bench command_round_trip

bench-oee: ## The OEE engine's cost per sample, one machine's hour at three cycle rates (target/bench-oee.md)
	cargo bench --features uplink --bench oee

bench-plc: venv node-peers ## 100-tag scans: our S7/Logix drivers vs python-snap7, s7-client, pylogix (target/bench-plc-clients.md)
	cargo bench --bench plc_clients

bench-plc-scale: node-peers ## 100..1000 S7 PLC connections at 1 s scans: missed scans, CPU, RSS (target/bench-plc-scale.md)
	cargo bench --bench plc_scale

bench: bench-codec bench-gateway bench-queue bench-store-engines bench-store-crash bench-store-forward bench-outage bench-uplink bench-command bench-oee bench-plc bench-plc-scale ## All benchmarks (see BENCHMARKS.md)

demo: ## Private broker, gateway (config/demo.toml), decoded live view, uplink with live OEE on a private PostgreSQL; Ctrl-C stops (DEMO_SECONDS=N)
	tools/demo.sh

aarch64: ## Build spb-gateway for the board (aarch64-unknown-linux-gnu) without Docker
	@rustup target list --installed | grep -qx $(AARCH64) || rustup target add $(AARCH64)
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
		cargo build --release --target $(AARCH64) --bin spb-gateway
	@ls -l target/$(AARCH64)/release/spb-gateway

aarch64-check: aarch64 venv ## The aarch64 binary under qemu: --check-config on the shipped configs, then a real mTLS session (tools/aarch64_session.py)
	@pki=$$(mktemp -d) && certs-example/make-certs.sh $$pki gw-01 >/dev/null && \
	sed "s|/etc/spb-gateway/|$$pki/|g" config/example.toml > $$pki/example.toml && \
	for c in $$pki/example.toml config/demo.toml config/default.toml; do \
		qemu-aarch64-static -L /usr/aarch64-linux-gnu target/$(AARCH64)/release/spb-gateway --check-config --config $$c || { rm -rf $$pki; exit 1; }; \
	done; rm -rf $$pki
	$(PY) tools/aarch64_session.py target/$(AARCH64)/release/spb-gateway

LAYER := yocto/meta-spb-gateway
RECIPE_DIR := $(LAYER)/recipes-core/spb-gateway

yocto-crates: ## Regenerate the Yocto layer's crate list from Cargo.lock (after every dependency change)
	python3 tools/yocto-crates.py

yocto-lint: venv ## Lint the Yocto layer with oelint-adv (settings and suppressions in $(LAYER)/.oelint.cfg)
	cd $(LAYER) && ../../$(VENV)/bin/oelint-adv --quiet recipes-core/*/*.bb recipes-core/*/*.inc conf/layer.conf

yocto-pin: ## Pin the recipe to the committed HEAD: SRCREV, and the version from Cargo.toml in its file name
	@git diff --quiet HEAD || { echo "commit first: the recipe can only pin a committed tree"; exit 1; }
	@v=$$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1); rev=$$(git rev-parse HEAD); \
	old=$$(ls $(RECIPE_DIR)/spb-gateway_*.bb); new=$(RECIPE_DIR)/spb-gateway_$$v.bb; \
	[ "$$old" = "$$new" ] || git mv "$$old" "$$new"; \
	sed -i "s/^SRCREV = .*/SRCREV = \"$$rev\"/" "$$new"; \
	echo "$$new: SRCREV $$rev (version $$v); commit it"

deb: aarch64 ## Debian packages: spb-gateway for arm64 and amd64, spb-uplink for amd64 (target/deb/)
	cargo build --release --bin spb-gateway
	cargo build --release --features uplink --bin spb-uplink
	tools/make-deb.sh spb-gateway arm64 target/$(AARCH64)/release/spb-gateway target/deb
	tools/make-deb.sh spb-gateway amd64 target/release/spb-gateway target/deb
	tools/make-deb.sh spb-uplink amd64 target/release/spb-uplink target/deb

deb-check: ## Install, upgrade, remove and purge the gateway's .deb on a minimal Debian root (root, debootstrap; in make test)
	cargo test --all-features --test packaging -- --ignored

cross: ## The customer's command: cross build for the board in Docker (installs cross if missing; reads Cross.toml)
	@command -v cross >/dev/null || cargo install cross --locked
	cross build --release --target $(AARCH64) --bin spb-gateway

demo-core: ## The protocol core alone: edge and host sessions in one process, no network
	cargo run -q --release --example sparkplug_demo

deny: ## cargo deny: licenses, bans, sources of the gateway build and the uplink's (advisories need GitHub, unreachable here)
	@command -v cargo-deny >/dev/null || cargo install cargo-deny --locked
	cargo deny check licenses bans sources
	cargo deny --all-features check licenses sources

clean: ## Remove build output and the venv
	cargo clean
	rm -rf fuzz/target

.PHONY: bench-uplink bench-command bench-oee bench-store-forward bench-store-crash bench-plc bench-plc-scale node-peers bench-store-engines bench-queue bench-gateway help deps venv demo-core aarch64 aarch64-check yocto-crates yocto-lint yocto-pin deb deb-check cross test fmt lint proto fuzz-build fuzz bench-codec bench demo deny clean
