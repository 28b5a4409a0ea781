# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-dev lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	# trio-typing (a libp2p dependency) ships stubs for trio 0.22 that shadow trio's own inline
	# types; type-check against the trio we run.
	rm -rf $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/trio-stubs

# A 20-peer / 100-shard network on 127.0.0.1: stores README.md and 8 MiB of random bytes through it,
# reads them back, then keeps running (gateway on http://127.0.0.1:31415) until Ctrl-C.
demo: install
	mkdir -p devnet && head -c 8388608 /dev/urandom > devnet/demo.bin
	$(BIN)/walrus-peer devnet --dir devnet --peers 20 --shards 100 --demo README.md --demo devnet/demo.bin

lint: install-dev
	$(BIN)/ruff check walrus_p2p tests bench
	$(BIN)/ruff format --check walrus_p2p tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q
