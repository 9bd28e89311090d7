# flowgate: `make run` (set up + demo) and `make test` (set up + the whole suite) work on a fresh
# machine with python3 (>= 3.11). Both start with `make install`, which creates .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install run test lint bench acceptance clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py proxy/stream/textpath.pyx proxy/upstream/chunked.pyx proxy/upstream/chunked.pxd
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# make run PORT=8081 BACKEND_PORT=9002: the gateway's and the demo backend's ports
PORT ?= 8080
BACKEND_PORT ?= 9001

run: install
	$(BIN)/flowgate demo --port $(PORT) --backend-port $(BACKEND_PORT)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check proxy tests

# Side-by-side benchmark (direct, nginx, flowgate); not part of `make test`. Needs Debian's nginx.
bench: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

acceptance: install
	$(BIN)/python -m bench.acceptance

clean:
	rm -rf $(VENV) .pytest_cache .flowgate-demo .hypothesis
