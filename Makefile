# pgwarden: the two commands a new user needs are `make demo` and `make test`.
# Both install what is missing (Debian packages, a venv) and are quick when all is there.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := postgresql etcd-server etcd-client iproute2 iptables nftables iputils-ping procps kubectl fuse3
PYTEST_ARGS ?=

.PHONY: demo test check unit integration e2e chaos bench setup deb venv clean

demo: setup
	$(VENV)/bin/pgwarden demo

test: setup check
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

check: setup
	$(VENV)/bin/ruff check agent tests bench
	$(VENV)/bin/ruff format --check agent tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: setup
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

integration: setup
	$(PY) -m pytest -q tests/integration $(PYTEST_ARGS)

e2e: setup
	$(PY) -m pytest -q tests/e2e $(PYTEST_ARGS)

# The long chaos profile: the quick scenarios (CHAOS_RUNS times each), then a random mix of
# faults for CHAOS_DURATION seconds; writes docs/chaos-report.md and .json (needs root).
CHAOS_DURATION ?= 300
CHAOS_RUNS ?= 3
chaos: setup
	CHAOS_DURATION=$(CHAOS_DURATION) CHAOS_RUNS=$(CHAOS_RUNS) CHAOS_REPORT=docs/chaos-report \
		$(PY) -m pytest -q -p no:cacheprovider -rxs tests/chaos $(PYTEST_ARGS)

bench: setup
	$(PY) bench/dcs_latency.py
	$(PY) bench/failover.py

setup: deb venv

deb:
	@bash docker/install-deps.sh $(DEB_PACKAGES)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache build *.egg-info
