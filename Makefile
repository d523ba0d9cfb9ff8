# Two commands on a fresh machine: `make run` (set up + run the line on its embedded default)
# and `make test` (set up + run the tests). Everything lands in .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test check setup setup-dev system-deps lint typecheck clean reference-model test-image

$(BIN)/linewatch: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

setup: $(BIN)/linewatch

run: setup
	$(BIN)/linewatch run

$(VENV)/.dev: $(BIN)/linewatch
	$(BIN)/pip install -q -e '.[dev,train,data]'
	touch $@

setup-dev: $(VENV)/.dev system-deps

# Debian packages the tests use: chromium (HMI in a real browser), prometheus (promtool checks
# /metrics), poppler-utils (PDF reports to PNG and text), mbpoll (an independent Modbus client),
# postgresql (the central server `linewatch ship` ships to; pg_ctlcluster is on PATH with its server),
# mosquitto (a real MQTT broker for the notify process), systemd (systemd-analyze verifies the unit).
SYSTEM_TOOLS := chromium:chromium promtool:prometheus pdftoppm:poppler-utils mbpoll:mbpoll pg_ctlcluster:postgresql \
	mosquitto:mosquitto systemd-analyze:systemd
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "install these Debian packages for the tests:$$missing" >&2; exit 1; fi; fi

test: setup-dev lint
	$(BIN)/python -m pytest -q --durations=20

# The fast lane while working: lint and every test not marked slow (the full `make test` runs them all).
check: setup-dev lint
	$(BIN)/python -m pytest -q -m "not slow"

# The container image, built with podman and run from its filesystem (root; deploy/README.md). Not in `test`:
# .ci/run runs it after the tests where podman can be installed.
test-image:
	deploy/test-image.sh

# The bundled reference model, in one command: emulator parts -> linewatch train -> the registry.
reference-model: $(VENV)/.dev
	rm -rf var/reference-data models/reference
	$(BIN)/linewatch emulate --count 3000 --seed 7 --out var/reference-data
	$(BIN)/linewatch train var/reference-data --out models/reference --name reference --backbone none --epochs 40 --seed 0
	rm -f models/reference/checkpoint.pt models/index.json models/active/default.onnx
	$(BIN)/linewatch models promote models/reference/reference.onnx --recipe default

lint:
	$(BIN)/ruff check inspect tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
