# Two commands on a fresh machine: `make run` (set up + run the line on its embedded default)
# and `make test` (set up + run the tests). Everything lands in .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test setup setup-dev system-deps lint typecheck clean

$(BIN)/linewatch: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

setup: $(BIN)/linewatch

run: setup
	$(BIN)/linewatch run

$(VENV)/.dev: $(BIN)/linewatch
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup-dev: $(VENV)/.dev system-deps

# Debian packages the tests use: chromium (HMI in a real browser).
system-deps:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium (sudo apt-get install chromium) for the HMI tests" >&2; exit 1; fi; }

test: setup-dev lint
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/ruff check inspect tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
