# hcm-db-migrations. `make migrate` and `make test` are all a newcomer needs.
#
# Locally every target runs in .venv, created on first use from the pinned requirements.
# In the runner image the packages are installed system-wide: the image sets PYTHON=python3
# and no .venv is made.

VENV    := .venv
PYTHON  ?= $(VENV)/bin/python
RUNNER  := $(PYTHON) runner.py
ARGS    ?=

ifeq ($(PYTHON),$(VENV)/bin/python)
DEPS := $(VENV)/.installed
endif

# mongosh for JavaScript patches and their tests, from npm (pinned), in a git-ignored folder.
MONGOSH_VERSION := 2.12.0
MONGOSH := .mongosh/node_modules/.bin/mongosh
# The tests of the JS path need it; without npm they skip, saying why.
TEST_MONGOSH := $(if $(shell command -v npm),$(MONGOSH))

.PHONY: help install mongosh migrate plan status rollback new config lint test bench db-stop clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	touch $@

install: $(DEPS)  ## create .venv with the pinned runtime and dev requirements

$(MONGOSH):
	npm install --no-save --no-audit --no-fund --loglevel=error --prefix .mongosh mongosh@$(MONGOSH_VERSION)

mongosh: $(MONGOSH)  ## install mongosh (for JavaScript patches) into .mongosh/

migrate: $(DEPS)  ## apply every pending migration (nothing configured: the local database)
	$(RUNNER) migrate $(ARGS)

plan: $(DEPS)  ## print the SQL migrate would run; writes nothing
	$(RUNNER) plan $(ARGS)

status: $(DEPS)  ## list applied and pending migrations
	$(RUNNER) status $(ARGS)

config: $(DEPS)  ## show the resolved connection and where each setting came from
	$(RUNNER) config $(ARGS)

rollback: $(DEPS)  ## roll back the last applied migration
	$(RUNNER) sql rollback $(ARGS)

new: $(DEPS)  ## create the next migration pair: make new NAME=add_something
	@test -n "$(NAME)" || { echo "usage: make new NAME=add_something" >&2; exit 2; }
	$(RUNNER) sql new "$(NAME)"

lint: $(DEPS)  ## lint sql/ with squawk (.squawk.toml), each file as the runner will run it
	$(RUNNER) sql lint $(ARGS)

test: $(DEPS) $(TEST_MONGOSH)  ## run the test suite (starts its own PostgreSQL)
	$(PYTHON) -m pytest $(ARGS)

bench: $(DEPS)  ## benchmarks against bare yoyo and psql; writes bench/RESULTS.md
	$(PYTHON) bench/bench.py

db-stop: $(DEPS)  ## stop the local development database (its data stays in .devdb/)
	$(RUNNER) devdb stop

clean:  ## remove .venv and the local database's data
	-$(RUNNER) devdb stop 2>/dev/null
	rm -rf $(VENV) .devdb .mongosh
