# pgwarden: the two commands a new user needs are `make demo` and `make test`.
# Both install what is missing (Debian packages, a venv) and are quick when all is there.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := postgresql etcd-server etcd-client iproute2 iptables nftables iputils-ping procps kubectl fuse3 prometheus pgbackrest stress-ng
PYTEST_ARGS ?=
IMAGE ?= pgwarden:0.1.0
POSTGRES_JIT ?=
# make test runs in two phases at once. Every test file but the chaos ones runs in parallel
# workers (pytest-xdist, one file per worker at a time, so a module's cluster is built once; the
# suite mostly waits on timeouts and failovers, so more workers than cores pays). Alongside it,
# the chaos quick profile runs in its own process, one scenario after another: its assertions
# are timing bounds (fencing before the lease expires, write gaps), which hold on a busy
# machine because the agents sleep most of the time and the kernel runs a task waking from
# sleep promptly (the starvation soak in docs/chaos-report.md: cycles under 0.2 s with every
# core busy). Its output is printed when both are done. CHAOS_ALONGSIDE=0 runs it after the
# first phase instead; TEST_JOBS=0 runs the first phase in one process.
TEST_JOBS ?= 3
CHAOS_ALONGSIDE ?= 1
CHAOS_LOG := build/chaos-phase.log

.PHONY: demo test check unit integration e2e chaos bench setup deb venv clean \
	image test-containers constraints

demo: setup
	$(VENV)/bin/pgwarden demo

# The container tier is not in here: it needs the image (`make test-containers`).
test: setup check
	@mkdir -p build; rm -f $(CHAOS_LOG)
	@if [ "$(CHAOS_ALONGSIDE)" = 1 ]; then \
		echo "chaos quick profile running alongside; its output: $(CHAOS_LOG)"; \
		$(PY) -m pytest -q -p no:cacheprovider tests/chaos $(PYTEST_ARGS) > $(CHAOS_LOG) 2>&1 & \
		chaos=$$!; \
	fi; \
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder \
		--ignore=tests/containers --ignore=tests/chaos $(PYTEST_ARGS); first=$$?; \
	if [ "$(CHAOS_ALONGSIDE)" = 1 ]; then \
		wait $$chaos; second=$$?; echo "== chaos quick profile (ran alongside) =="; \
		cat $(CHAOS_LOG); \
	else \
		$(PY) -m pytest -q -p no:cacheprovider tests/chaos $(PYTEST_ARGS); second=$$?; \
	fi; \
	echo "make test: first phase exit $$first, chaos exit $$second"; \
	[ $$first -eq 0 ] && [ $$second -eq 0 ]

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

# The long chaos profile. First the full crash-point sweep of the loop suite (every point of
# every multi-step action, every delay, both kinds of death, and frozen: 5-10 min on one
# core; `make test` runs one point per boundary); its table goes to build/crash-sweep.md and
# is printed; a failure fails `make chaos` at the end, after the rest has run. Then the quick
# scenarios (CHAOS_RUNS times each), then a random mix of faults for CHAOS_DURATION seconds;
# writes docs/chaos-report.md and .json (needs root). Then the soak: CHAOS_SOAK_MINUTES of
# CPU and I/O starvation (stress-ng) with no fault, at ttl 6 s and at the default ttl, into
# the report's soak section (tests/chaos/soak.py; 0 skips it). None is part of `make test`.
CHAOS_DURATION ?= 1800
CHAOS_RUNS ?= 3
CHAOS_SOAK_MINUTES ?= 30
CRASH_SWEEP := build/crash-sweep
chaos: setup
	@mkdir -p build; rm -f $(CRASH_SWEEP).md
	@echo "== full crash-point sweep (tests/unit/test_loop_crash_points.py); log: $(CRASH_SWEEP).log =="
	@PGWARDEN_CRASH_SWEEP=full PGWARDEN_CRASH_SWEEP_REPORT=$(CRASH_SWEEP).md \
		$(PY) -m pytest -q -p no:cacheprovider --timeout=1800 tests/unit/test_loop_crash_points.py \
		> $(CRASH_SWEEP).log 2>&1; echo $$? > $(CRASH_SWEEP).rc; \
	cat $(CRASH_SWEEP).md; grep -E '^(FAILED|ERROR) ' $(CRASH_SWEEP).log; tail -1 $(CRASH_SWEEP).log
	CHAOS_DURATION=$(CHAOS_DURATION) CHAOS_RUNS=$(CHAOS_RUNS) CHAOS_REPORT=docs/chaos-report \
		$(PY) -m pytest -q -p no:cacheprovider -rxs tests/chaos $(PYTEST_ARGS)
	if [ "$(CHAOS_SOAK_MINUTES)" != 0 ]; then \
		$(PY) -m tests.chaos.soak --minutes $(CHAOS_SOAK_MINUTES) --report docs/chaos-report; fi
	@rc=$$(cat $(CRASH_SWEEP).rc); if [ "$$rc" != 0 ]; then \
		echo "make chaos: the full crash-point sweep failed (exit $$rc): $(CRASH_SWEEP).log"; \
		exit 1; fi

# The container image without a Docker engine or a registry: podman (runc, cgroupfs), a
# Debian bookworm base image made from the Debian archive with mmdebstrap (built once, then
# kept), the Dockerfile with podman's layer cache (docker/image.sh). Installs what is missing.
# POSTGRES_JIT=on keeps PostgreSQL's LLVM JIT (156 MB more).
image:
	POSTGRES_JIT=$(POSTGRES_JIT) bash docker/image.sh build $(IMAGE)

# The container tier (tests/containers): the image, then clusters of its containers under
# podman with the pods' hardening. CI runs it after `make test`.
test-containers: setup image
	PGWARDEN_TEST_IMAGE=$(IMAGE) $(PY) -m pytest -q -p no:cacheprovider -rs tests/containers \
		$(PYTEST_ARGS)

# Pin the image's Python packages again (docker/constraints.txt): the newest versions that
# pyproject.toml allows, and the build backend (setuptools, wheel) the isolated build uses.
constraints:
	rm -rf build/constraints-venv
	python3 -m venv build/constraints-venv
	build/constraints-venv/bin/pip install -q --no-cache-dir . 'setuptools>=68' wheel
	{ grep '^#' docker/constraints.txt; \
	  build/constraints-venv/bin/pip freeze --all --exclude pgwarden --exclude pip; } \
		> build/constraints.txt
	mv build/constraints.txt docker/constraints.txt
	rm -rf build/constraints-venv

bench: setup
	$(PY) bench/dcs_latency.py
	$(PY) bench/failover.py
	$(PY) bench/callbacks.py
	$(PY) bench/rolling_restart.py
	$(PY) bench/rollout.py

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
