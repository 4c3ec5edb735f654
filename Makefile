# cvs-core developer entry points. `make help` lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)

.PHONY: help prereqs dev test test-rust test-python lint fmt demo bench bench-compat bench-lifecycle bench-transport bench-async bench-persist wheel clean

help: ## Show the targets and what they do
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q 'maturin>=1.9,<2' 'pytest>=8' 'pytest-asyncio>=0.23' 'ruff>=0.6' \
	  'parallel-ssh==2.16.*'  # only for pssh.exceptions: the compat layer raises CVS's types

dev: $(PY) ## Create .venv and build cvs_core into it (editable: Python edits apply at once)
	$(VENV)/bin/maturin develop -q

prereqs: ## Install missing Debian packages the tests and demo need (OpenSSH, docker.io, ...)
	bash scripts/install-prereqs.sh

test: prereqs test-rust test-python ## Run every test: Rust core (no Python) and pytest (live SSH and Docker included)

test-rust: ## Rust unit and property tests of the pure core, built without Python
	cargo test --no-default-features

test-python: dev ## pytest suite against the built extension
	$(PY) -m pytest

lint: $(PY) ## cargo fmt --check, clippy -D warnings (with and without Python), ruff
	cargo fmt --all -- --check
	cargo clippy --no-default-features --all-targets -- -D warnings
	cargo clippy --lib -- -D warnings
	$(VENV)/bin/ruff check python tests harness benchmarks scripts
	$(VENV)/bin/ruff format --check python tests harness benchmarks scripts

fmt: $(PY) ## Format Rust and Python sources
	cargo fmt --all
	$(VENV)/bin/ruff format python tests harness benchmarks scripts

demo: prereqs dev ## Main job on a simulated 3-node cluster: plan, up, exec, attach, status, down (TRANSPORT=slurm: over srun)
	$(PY) scripts/demo.py --transport $(or $(TRANSPORT),ssh)

bench: dev ## Fan-out benchmark: cvs_core vs parallel-ssh (prints a table, writes JSON; BENCH_ARGS='--sizes 512,1024' for 1,024 hosts)
	$(VENV)/bin/maturin develop --release -q  # timings of a debug build mean nothing
	$(PY) -m pip install -q 'parallel-ssh==2.16.*'
	$(PY) benchmarks/fanout.py $(BENCH_ARGS)

bench-compat: dev ## Cost of CVS's seams: compat Pssh/MultiProcessPssh vs cvs_core.Cluster, warm per call (8, 64, 256 hosts)
	$(VENV)/bin/maturin develop --release -q  # timings of a debug build mean nothing
	$(PY) benchmarks/compat.py $(BENCH_ARGS)

bench-lifecycle: dev ## Container lifecycle benchmark (native driver vs CVS's algorithm), prints a table, writes JSON
	$(VENV)/bin/maturin develop --release -q  # timings of a debug build mean nothing
	$(PY) benchmarks/lifecycle.py $(BENCH_ARGS)

bench-transport: prereqs dev ## SSH vs Slurm transport on 3 and 8 simulated nodes, cold and warm, wall and client CPU
	$(VENV)/bin/maturin develop --release -q  # timings of a debug build mean nothing
	$(PY) benchmarks/transport.py $(BENCH_ARGS)

bench-persist: dev ## Second process of a campaign with persist vs cold vs parallel-ssh cold, 64 loopback hosts
	$(VENV)/bin/maturin develop --release -q  # timings of a debug build mean nothing
	$(PY) -m pip install -q 'parallel-ssh==2.16.*'
	$(PY) benchmarks/persist.py $(BENCH_ARGS)

bench-async: dev ## 20 concurrent exec_async vs 20 threads calling exec on 8 loopback hosts, wall and client CPU
	$(VENV)/bin/maturin develop --release -q  # timings of a debug build mean nothing
	$(PY) benchmarks/asyncio_vs_threads.py $(BENCH_ARGS)

wheel: $(PY) ## Build the release abi3 wheel for manylinux2014 x86_64 (glibc 2.17) and the sdist into dist/
	$(PY) -m pip install -q 'ziglang>=0.13' 'auditwheel>=6'
	# zig links against glibc 2.17 from any build host; maturin checks the manylinux policy
	$(VENV)/bin/maturin build --release --locked --zig --compatibility manylinux2014 -o dist
	$(VENV)/bin/maturin sdist -o dist

clean: ## Remove build outputs and the virtualenv
	cargo clean
	rm -rf $(VENV) dist .pytest_cache .ruff_cache
