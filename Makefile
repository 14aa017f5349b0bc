# The two commands of the README: `make demo` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
TOOLS := .tools/bin
export PATH := $(CURDIR)/$(TOOLS):$(PATH)

.PHONY: sysdeps venv tools deps lint test test-unit test-cluster test-fidelity test-tools demo up down bench clean

# The Debian packages the local cluster and hack/get-tools.sh need (bubblewrap, unzip, npm, python3-venv),
# installed when missing; where that is impossible it stops with one line naming the packages and the command.
sysdeps:
	@bash hack/install-ci-deps.sh --local-cluster

$(PY): | sysdeps
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

venv: $(PY)
	$(PY) -m pip install -q -e './localcluster[test]' -e '.[dev]'

tools: sysdeps
	@bash hack/get-tools.sh $(TOOLS)

# Everything the full test suite needs: Debian/npm/pip tools (idempotent, skips what is present).
deps: venv tools
	bash hack/install-ci-deps.sh $(VENV)

lint: venv
	$(VENV)/bin/ruff check operator localcluster tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

test: deps lint
	$(VENV)/bin/pytest -q -p no:cacheprovider tests localcluster/tests

test-unit: venv
	$(VENV)/bin/pytest -q tests/unit

test-cluster: venv tools
	$(VENV)/bin/pytest -q localcluster/tests tests/e2e

# The replay of answers recorded from a real kube-apiserver (tests/fidelity/corpus) against the local one.
test-fidelity: venv
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/fidelity

test-tools: deps
	$(VENV)/bin/pytest -q tests/tools

# The demo leaves the local cluster and the operator running for the README's tour; `make down` stops them.
demo: venv tools
	@bash hack/demo.sh

# The local cluster with the chart installed by helm and the operator run beside it (no examples).
up: venv tools
	@bash hack/demo.sh up

down:
	@bash hack/demo.sh down

bench: venv tools
	$(PY) bench/throughput.py

clean: down
	rm -rf .localcluster .pytest_cache .mypy_cache .ruff_cache
