# flowgate: `make run` (set up + demo) and `make test` (set up + the whole suite) work on a fresh
# machine with python3 (>= 3.11). Both start with `make install`, which creates .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install run test sdk lint bench acceptance clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py proxy/stream/textpath.pyx proxy/stream/tokenlines.pyx proxy/stream/tokenlines.pxd proxy/upstream/chunked.pyx proxy/http1/chunks.py proxy/http1/chunks.pxd
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# make run PORT=8081 BACKEND_PORT=9002: the gateway's and the demo backend's ports
PORT ?= 8080
BACKEND_PORT ?= 9001

run: install
	$(BIN)/flowgate demo --port $(PORT) --backend-port $(BACKEND_PORT)

test: install sdk
	$(BIN)/python -m pytest -q

# The Vercel AI SDK harness (tests/sdk: the `ai` package pinned by its lockfile), installed only
# where node and npm are; without them tests/protocols/test_ui_sdk.py skips and says why.
SDK := tests/sdk
sdk:
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
	  if [ ! $(SDK)/node_modules/.flowgate-installed -nt $(SDK)/package-lock.json ]; then \
	    (cd $(SDK) && npm ci --no-audit --no-fund --loglevel=error) && touch $(SDK)/node_modules/.flowgate-installed; \
	  fi; \
	else \
	  echo "node/npm not found: the AI SDK harness (tests/protocols/test_ui_sdk.py) will be skipped"; \
	fi

lint: install
	$(BIN)/ruff check proxy tests

# Side-by-side benchmark (direct, nginx, flowgate); not part of `make test`. Needs Debian's nginx.
# BENCH_PYTHON=/usr/bin/python3.11: flowgate runs on that interpreter (a venv of it with flowgate's
# dependencies, .venv-bench), the tree's code as it is; by default on the .venv's own.
BENCH_PYTHON ?=
bench: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
ifneq ($(BENCH_PYTHON),)
	test -x .venv-bench/bin/python || $(BENCH_PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install --quiet .
	FLOWGATE_BENCH_PYTHON=$(CURDIR)/.venv-bench/bin/python $(BIN)/python -m bench.run $(BENCH_ARGS)
else
	$(BIN)/python -m bench.run $(BENCH_ARGS)
endif

acceptance: install
	$(BIN)/python -m bench.acceptance

clean:
	rm -rf $(VENV) .venv-bench .pytest_cache .flowgate-demo .hypothesis $(SDK)/node_modules
