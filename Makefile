# One virtualenv for everything; every target installs what it needs itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install run demo test lint simulate bench docs clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

## Run the connector against live Bitstamp on the embedded broker (Ctrl-C stops it).
run: install
	$(BIN)/connector run

## Offline: a simulated Bitstamp, the connector on the embedded broker (port 9092), and a
## tail of its trades as JSON lines; Ctrl-C stops all.
demo: install
	$(BIN)/connector demo

## A local Bitstamp-compatible server on ws://127.0.0.1:8765 (offline trials).
simulate: install
	$(BIN)/connector simulate

# The peer the benchmark measures beside the connector (cryptofeed), in its own virtualenv.
PEER_VENV ?= .venv-peer
$(PEER_VENV)/.installed: bench/peer-requirements.txt
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet -r bench/peer-requirements.txt \
		&& touch $@ || echo "cryptofeed did not install: the benchmark reports the peer as skipped"

## Benchmark: the rates users run beside cryptofeed, rate steps end to end on a real broker,
## latency, librdkafka, write-ahead, workers, a bare producer, 250 markets x 6 channels.
bench: install $(PEER_VENV)/.installed
	$(BIN)/python bench/run.py

## Regenerate the generated tables of docs/ (settings, metrics) from the code.
docs: install
	$(BIN)/python -c "import pathlib, connector.settings as s; [p.write_text(s.with_generated_blocks(p.read_text())) for p in map(pathlib.Path, s.GENERATED_DOCS)]"

lint: install
	$(BIN)/ruff check connector tests bench
	$(BIN)/mypy

## Lint, type-check, and the whole test suite (pure, component, integration on a real broker).
test: lint
	$(BIN)/pytest -ra

clean:
	rm -rf $(VENV) $(PEER_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
