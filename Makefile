# arledger: build, test and run targets. `make help` lists them.
#
# Stamps keep the slow steps from running twice: the virtualenv is reinstalled
# only when pyproject.toml changes, the Kafka jars are fetched only when
# deploy/kafka/pom.xml changes.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
VENV_STAMP := $(VENV)/.arledger-installed
KAFKA_DIR := deploy/kafka
JARS_DIR := $(KAFKA_DIR)/lib
JARS_STAMP := $(JARS_DIR)/.arledger-fetched
PYTEST_ARGS ?=
SOAK_MINUTES ?= 60
SOAK_ARGS ?=

.PHONY: help system-deps venv jars test test-fast lint demo bench soak serve broker-start broker-stop broker-status clean distclean

help:
	@echo "make venv          create $(VENV) ($(PYTHON)) and pip install -e '.[test]' (again only when pyproject.toml changes)"
	@echo "make jars          fetch the Apache Kafka jars with Maven into $(JARS_DIR) (again only when pom.xml changes)"
	@echo "make test          the whole test suite (starts its own Kafka broker) and the import contracts"
	@echo "make test-fast     the tests not marked slow"
	@echo "make lint          import contracts, ruff check, mypy (strict on ledger/)"
	@echo "make demo | bench  run 'arledger demo' / 'arledger bench'"
	@echo "make soak          'arledger soak --minutes $(SOAK_MINUTES)' (SOAK_MINUTES, default 60; e.g. make soak SOAK_MINUTES=2 SOAK_ARGS='--store postgresql')"
	@echo "make serve         run 'arledger serve' (the web workspace and HTTP API, http://127.0.0.1:8080/)"
	@echo "make broker-start | broker-stop | broker-status   the local broker (ARLEDGER_HOME, ARLEDGER_BROKER_PORT)"
	@echo "make clean         remove the jars and caches; make distclean also removes $(VENV)"

# Java (for the broker) and Maven (for the jars), installed with apt-get only if missing.
system-deps:
	@bash deploy/install-system-deps.sh

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -e ".[test]"
	@touch $@

jars: $(JARS_STAMP)

# Order-only on system-deps: checked every time, but never forces a new fetch.
# The folder is emptied first so jars of an older pin never linger on the classpath.
$(JARS_STAMP): $(KAFKA_DIR)/pom.xml | system-deps
	rm -rf $(JARS_DIR)
	cd $(KAFKA_DIR) && mvn -q -B -Dstyle.color=never dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=lib
	@test -n "$$(ls $(JARS_DIR)/kafka_2.13-*.jar 2>/dev/null)" || { echo "make jars: no kafka_2.13 jar in $(JARS_DIR)" >&2; exit 1; }
	@touch $@

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
# The import contracts are checked first (fast), but the tests run even if they
# are broken, so pytest's summary stays the last line; either failing fails the target.
define run_pytest
	@lint=0; $(VENV)/bin/lint-imports || lint=$$?; \
	status=0; $(VENV)/bin/python -m pytest $(1) $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make: pytest collected no tests" >&2; fi; \
	if [ $$status -ne 0 ] || [ $$lint -ne 0 ]; then \
	    echo "make: pytest exit $$status, lint-imports exit $$lint" >&2; exit 1; \
	fi
endef

test: venv jars
	$(call run_pytest,tests)

test-fast: venv jars
	$(call run_pytest,tests -m "not slow")

# Import contracts, then ruff's lint rules, then mypy (strict on ledger/, see pyproject.toml).
# Every step runs even if an earlier one fails, so one run shows every problem.
lint: venv
	@status=0; \
	$(VENV)/bin/lint-imports || status=1; \
	$(VENV)/bin/ruff check . || status=1; \
	$(VENV)/bin/mypy --strict ledger/ || status=1; \
	$(VENV)/bin/mypy arledger consumers projections || status=1; \
	exit $$status

demo: venv jars
	$(VENV)/bin/arledger demo

bench: venv jars
	$(VENV)/bin/arledger bench

# Load with random worker kills and a broker restart, then every invariant checked (docs/reliability.md).
soak: venv jars
	$(VENV)/bin/arledger soak --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

broker-start: venv jars
	$(VENV)/bin/arledger broker start

broker-stop: venv
	$(VENV)/bin/arledger broker stop

broker-status: venv
	$(VENV)/bin/arledger broker status

clean:
	rm -rf $(JARS_DIR) .pytest_cache .hypothesis build dist
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# The web workspace and HTTP API beside the workers (users: arledger user add NAME --role ROLE).
serve: venv
	$(VENV)/bin/arledger serve
