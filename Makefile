# The two commands of the README: `make demo` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
TOOLS := .tools/bin
export PATH := $(CURDIR)/$(TOOLS):$(PATH)

.PHONY: venv tools deps lint test test-unit test-cluster test-tools demo bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

venv: $(PY)
	$(PY) -m pip install -q -e './localcluster[test]' -e '.[dev]'

tools:
	bash hack/get-tools.sh $(TOOLS)

# Everything the full test suite needs: Debian/npm/pip tools (idempotent, skips what is present).
deps: venv tools
	bash hack/install-ci-deps.sh $(VENV)

lint: venv
	$(VENV)/bin/ruff check operator localcluster tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

test: deps lint
	$(VENV)/bin/pytest -q -p no:cacheprovider tests

test-unit: venv
	$(VENV)/bin/pytest -q tests/unit

test-cluster: venv tools
	$(VENV)/bin/pytest -q localcluster/tests tests/e2e

test-tools: deps
	$(VENV)/bin/pytest -q tests/tools

demo: venv tools
	bash hack/demo.sh

bench: venv tools
	$(PY) bench/throughput.py

clean:
	rm -rf .localcluster .pytest_cache .mypy_cache .ruff_cache
