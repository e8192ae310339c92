# CRM Bridge — developer and operator tasks. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PREFIX ?= /opt/crm-bridge
CONFDIR ?= /etc/crm-bridge
UNITDIR ?= /etc/systemd/system
BINDIR ?= /usr/local/bin
# The unit names these paths, so they are made absolute whatever the command line says.
override PREFIX := $(abspath $(PREFIX))
override CONFDIR := $(abspath $(CONFDIR))
override UNITDIR := $(abspath $(UNITDIR))
override BINDIR := $(abspath $(BINDIR))
# `make install` knobs: what pip installs (this tree, or a wheel built from it), extra
# `pip install` arguments, and whether to upgrade pip first (tests/test_install.py installs
# a prebuilt wheel offline with `--no-deps --no-index` and `UPGRADE_PIP=no`).
PACKAGE ?= .
PIP_INSTALL_ARGS ?=
UPGRADE_PIP ?= yes

.PHONY: help venv dev-venv run test lint format mypy check check-unit dev bench install uninstall clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/crm-bridge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.dev: $(BIN)/crm-bridge
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

venv: $(BIN)/crm-bridge  ## create .venv with the bridge installed

dev-venv: $(VENV)/.dev  ## .venv plus test and lint tools

run: venv  ## start the bridge on its defaults (db/bridge.sqlite, etc/bridge.example.toml, 127.0.0.1:8080)
	$(BIN)/crm-bridge serve

test: dev-venv  ## run the whole test suite
	$(BIN)/python -m pytest -q

lint: dev-venv  ## ruff lint and format check
	$(BIN)/ruff check bridge tests
	$(BIN)/ruff format --check bridge tests

format: dev-venv  ## apply ruff format and safe fixes
	$(BIN)/ruff check --fix bridge tests
	$(BIN)/ruff format bridge tests

mypy: dev-venv  ## strict type check of bridge/
	$(BIN)/mypy bridge

check-unit: venv  ## systemd-analyze verify + security exposure of the unit (<= 2.0)
	bash .ci/check-unit

check: lint mypy test check-unit  ## everything CI cares about

dev: format lint mypy test  ## format, then all checks

bench: dev-venv  ## benchmarks (not part of the tests): intake, CRM calls, burst drain, memory
	command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python -m tests.bench

install:  ## install under $(PREFIX), `crm-bridge` in $(BINDIR), config in $(CONFDIR), unit in $(UNITDIR) (run as root)
	install -d -m 0755 $(PREFIX) $(CONFDIR) $(UNITDIR) $(BINDIR)
	$(PYTHON) -m venv $(PREFIX)/venv
	$(if $(filter yes,$(UPGRADE_PIP)),$(PREFIX)/venv/bin/pip install --quiet --upgrade pip)
	$(PREFIX)/venv/bin/pip install --quiet $(PIP_INSTALL_ARGS) $(PACKAGE)
	@# bridge.toml holds no secrets and is read by the unit's dynamic user: 0644 (an older
	@# install's 0640 root:root file is opened up too). env holds the secrets: 0600 root,
	@# read only by systemd itself (EnvironmentFile=) before it drops privileges.
	chmod 0755 $(CONFDIR)
	test -e $(CONFDIR)/bridge.toml || install -m 0644 etc/bridge.example.toml $(CONFDIR)/bridge.toml
	chmod 0644 $(CONFDIR)/bridge.toml
	test -e $(CONFDIR)/env || (umask 077 && sed -e 's|^CONFIG_FILE=.*|CONFIG_FILE=$(CONFDIR)/bridge.toml|' \
	  -e 's|^DATABASE_PATH=.*|DATABASE_PATH=/var/lib/crm-bridge/bridge.sqlite|' \
	  env.example > $(CONFDIR)/env)
	chmod 0600 $(CONFDIR)/env
	install -m 0644 README.md $(PREFIX)/README.md
	ln -sfn $(PREFIX)/venv/bin/crm-bridge $(BINDIR)/crm-bridge
	sed -e 's|/opt/crm-bridge|$(PREFIX)|g' -e 's|/etc/crm-bridge|$(CONFDIR)|g' \
	  etc/systemd/crm-bridge.service > $(UNITDIR)/crm-bridge.service.new
	chmod 0644 $(UNITDIR)/crm-bridge.service.new
	mv $(UNITDIR)/crm-bridge.service.new $(UNITDIR)/crm-bridge.service
	systemctl daemon-reload 2>/dev/null || true
	@echo "edit $(CONFDIR)/env and $(CONFDIR)/bridge.toml, then: crm-bridge --env-file $(CONFDIR)/env check; systemctl enable --now crm-bridge"

uninstall:  ## remove the unit and $(PREFIX); keeps $(CONFDIR) and the database
	systemctl disable --now crm-bridge 2>/dev/null || true
	rm -f $(UNITDIR)/crm-bridge.service
	test ! -L $(BINDIR)/crm-bridge || rm -f $(BINDIR)/crm-bridge
	rm -rf $(PREFIX)

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
