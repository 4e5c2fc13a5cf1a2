# Two commands on a fresh machine: `make run` and `make test`. Everything else is installed here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STATE ?= .kms-state
LISTEN ?= 127.0.0.1:8443
PLATFORM ?= sev-snp
PYTEST_ARGS ?=
RESET ?=

.PHONY: run test lint bench soak clean system-deps bench-deps venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	@touch $(STAMP)

venv: $(STAMP)

# System packages the tests and the stack start themselves: SoftHSM2 (the local HSM) and
# Chromium (dashboard and report pages). Installed with apt only when missing.
system-deps:
	@missing=""; \
	command -v softhsm2-util >/dev/null || missing="$$missing softhsm2"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# The benchmarks' load generator: wrk (C; a Python client would eat the cores it measures).
bench-deps:
	@if ! command -v wrk >/dev/null; then \
	  echo "installing: wrk"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq wrk >/dev/null; \
	fi

run: $(STAMP) system-deps
	$(BIN)/kms-sim up --state $(STATE) --listen $(LISTEN) --platform $(PLATFORM) $(if $(RESET),--reset)

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy verifier enclave host kms simulator measurements
	$(BIN)/lint-imports

bench: $(STAMP) system-deps bench-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .bench .kms-state build *.egg-info
