# Tunix RT. `make run` serves the app with one worker; `make test` runs the whole suite.
# Both install what they need first, into .venv and node_modules; a second call installs nothing.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
PORT ?= 8000
WEB_STAMP := $(VENV)/.installed-web
TRAINER_STAMP := $(VENV)/.installed-trainer
HTMX := static/vendor/htmx.min.js
CHROMIUM := /usr/bin/chromium

.PHONY: install run test bench bench-tools gpu-check screenshots openapi clean system-tools

install: $(WEB_STAMP) $(TRAINER_STAMP) $(HTMX)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(WEB_STAMP): requirements.txt | $(PY)
	$(PIP) install -q -r requirements.txt
	touch $@

$(TRAINER_STAMP): requirements-trainer.txt requirements-tunix.txt | $(PY)
	$(PIP) install -q -r requirements-trainer.txt
	$(PIP) install -q --no-deps -r requirements-tunix.txt
	touch $@

# npm ci where npm exists; otherwise the same lockfile, integrity-checked, fetched by Python.
node_modules/.package-lock.json: package.json package-lock.json
	if command -v npm >/dev/null 2>&1; then npm ci --ignore-scripts --no-audit --no-fund --loglevel=error; \
	else $(PYTHON) tools/fetch_npm_packages.py; fi

$(HTMX): node_modules/.package-lock.json
	mkdir -p $(dir $@)
	cp node_modules/htmx.org/dist/htmx.min.js $@

run: install
	PORT=$(PORT) $(PY) -m app.dev.runner

# Real parts some tests need, from Debian: chromium (browser tests), nginx (the deployment test)
# and prometheus (for promtool). Installed here when we may (root, as on CI); otherwise those
# tests are skipped, and say why.
SYSTEM_TOOLS := $(CHROMIUM) /usr/sbin/nginx /usr/bin/promtool
SYSTEM_PACKAGES := chromium nginx prometheus

system-tools:
	@missing=0; for tool in $(SYSTEM_TOOLS); do [ -x $$tool ] || missing=1; done; [ $$missing = 0 ] && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	else echo "chromium, nginx or promtool is missing and cannot be installed without root: their tests will be skipped"; fi

test: install system-tools
	$(PY) -m pytest

# Every page at 1280 px and 390 px, from the same browser test that checks them with axe-core.
screenshots: install system-tools
	rm -rf docs/screenshots
	TUNIX_SCREENSHOTS_DIR=docs/screenshots $(PY) -m pytest -q tests/test_accessibility.py

BENCH_VENV := .venv-bench

$(BENCH_VENV)/.installed: bench/requirements-pgqueuer.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip --disable-pip-version-check install -q -r bench/requirements-pgqueuer.txt
	touch $@

# wrk (Debian's) drives the fragment benchmark when it can be installed; otherwise our own client does.
bench-tools:
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get install -y -qq wrk >/dev/null; } || echo "wrk is missing: the fragment benchmark uses its own client"

bench: install bench-tools $(BENCH_VENV)/.installed
	$(PY) bench/hot_path.py
	$(PY) bench/queue_claim.py
	$(PY) bench/first_step.py
	$(PY) bench/worker_memory.py
	$(PY) bench/exactly_once.py
	$(PY) bench/wakeup_latency.py
	$(PY) bench/trainer_overhead.py
	$(PY) bench/upload_memory.py
	$(PY) bench/evaluation.py
	$(PY) bench/sweep_throughput.py
	$(PY) bench/model_families.py
	$(PY) bench/device_placement.py
	$(PY) bench/artifact_store.py
	$(PY) bench/model_registry.py
	$(PY) bench/playground.py
	$(PY) bench/gpu_check.py

# On a host with GPUs or TPUs: the small preset and the test checkpoint on 1 device and on all (docs/PERFORMANCE.md).
gpu-check: install
	$(PY) bench/gpu_check.py

clean:
	rm -rf $(VENV) node_modules static/vendor .pytest_cache

# The API's contract, kept in docs/ beside the one /api/openapi.json serves (a test compares them).
openapi: install
	$(PY) -c 'import json; from app.web.openapi import document; print(json.dumps(document(), indent=2))' > docs/openapi.json
