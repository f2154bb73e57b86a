# One Makefile for developers and CI: `.ci/run` calls `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
NODE_STAMP := conformance/node_modules/.installed-stamp

.DEFAULT_GOAL := help
# The quick subset .ci/compat runs at the lowest allowed dependency versions
# and on each other Python: the framework, client, server, CLI, settings,
# OpenTelemetry spans and the dashboard end to end.
COMPAT_TESTS := tests/test_exported_members.py tests/framework/test_basics.py \
	tests/client/test_integration.py tests/server/test_http_basics.py \
	tests/server/test_ws_session.py tests/server/test_tls.py tests/product/test_cli_run.py \
	tests/product/test_settings.py tests/features/test_cron.py tests/framework/test_telemetry.py \
	tests/dashboard/test_command.py

.PHONY: help setup browser check lint typecheck test compat docs demo screenshots bench audit clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

# uv installs in seconds what pip takes a minute for; pip stays in the venv
# for the tests that build a wheel with it.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev]'
	touch $@

$(NODE_STAMP): conformance/package.json conformance/package-lock.json
	cd conformance && npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup: $(STAMP) $(NODE_STAMP)  ## create .venv and install Python and Node packages

# The dashboard's browser tests drive Debian's Chromium through Playwright
# (never `playwright install`). Installed here when missing, if this runs as
# root with apt; otherwise those tests skip and say why.
CHROMIUM ?= /usr/bin/chromium
browser:  ## install Chromium for the dashboard's browser tests (root with apt only)
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else echo "no $(CHROMIUM) and cannot install it (not root or no apt): browser tests will skip"; fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck  ## ruff and mypy (strict)

test: setup browser check compat  ## set up, check, run the quick subset at both dependency ends, then the whole suite
	$(BIN)/pytest

compat: $(STAMP)  ## the quick subset at the lowest allowed versions, and on Python 3.12 and 3.13
	COMPAT_TESTS="$(COMPAT_TESTS)" .ci/compat

docs: $(STAMP)  ## build the documentation site into site/ (strict: a broken link fails)
	$(BIN)/mkdocs build --strict

demo: $(STAMP)  ## start the embedded server and an example service, run jobs through it
	$(BIN)/oada-jobs demo
	@echo "To use oada-jobs in this shell, as the commands above do: . $(VENV)/bin/activate"

screenshots: $(STAMP) browser  ## photograph the dashboard's pages into docs/img (docs/dashboard.md)
	$(BIN)/python docs/screenshots.py docs/img

bench: setup  ## run the benchmarks and write docs/benchmarks.md
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r bench/requirements.txt
	$(BIN)/python -m bench

# --strict fails when any dependency could not be checked, so an audit that
# reached no vulnerability source can never pass as clean.
audit: $(STAMP)  ## audit installed dependencies for known vulnerabilities (needs PyPI's JSON API)
	$(BIN)/pip-audit --strict --skip-editable --progress-spinner off

clean:  ## remove the virtualenvs, Node packages and the built site
	rm -rf $(VENV) .venv-compat conformance/node_modules site
