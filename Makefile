# Targets match the README. The virtualenv is .venv; `make install` creates it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The tests run on the local PostgreSQL and Redis unless told otherwise; the real-path and fault tests run a second
# time on RabbitMQ when TEST_AMQP_URL names one (.ci/run sets it; empty = Redis only).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/moran
TEST_BROKER_URL ?= redis://127.0.0.1:6379/0
TEST_AMQP_URL ?=
# The development server's port (the operators' scripts expect 4000).
PORT ?= 4000
# `make dev` runs the real path (PostgreSQL, Redis, a worker and beat) on these unless DATABASE_URL /
# CELERY_BROKER_URL are set.
DEV_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/moran
DEV_BROKER_URL ?= redis://127.0.0.1:6379/0

.PHONY: install demo test test-redis test-rabbitmq test-faults lint serve console dev worker flower migrate mutation up down

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt

install: $(BIN)/python

# The main job on the embedded default: SQLite, in-process tasks, the sandbox engine.
demo: install
	env -u DATABASE_URL -u CELERY_BROKER_URL $(BIN)/python manage.py migrate --verbosity 0
	env -u DATABASE_URL -u CELERY_BROKER_URL $(BIN)/python manage.py provision_tenant demo-$$(date +%s) --create \
	  --company "Demo $$(date +%s) Ltd" --abbr D$$(date +%s | tail -c 6) --currency EUR --country Germany \
	  --admin-email admin@demo.test --cost-center Operations --warehouse Returns

# Everything on Redis, then the real-path and fault tests again on RabbitMQ (when TEST_AMQP_URL is set).
test: test-redis test-rabbitmq

test-redis: install
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} CELERY_BROKER_URL=$${CELERY_BROKER_URL:-$(TEST_BROKER_URL)} \
	  $(BIN)/pytest $(PYTEST_ARGS)

test-rabbitmq: install
	@if [ -n "$(TEST_AMQP_URL)" ]; then \
	  DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} CELERY_BROKER_URL=$(TEST_AMQP_URL) \
	    $(BIN)/pytest -m "(realpath or fault) and not browser" $(PYTEST_ARGS); \
	else echo "test-rabbitmq: TEST_AMQP_URL is empty, skipped"; fi

# Only the fault tests and the reduced soak (see RELIABILITY.md), on each broker.
test-faults: install
	$(MAKE) test PYTEST_ARGS="-m fault -s $(PYTEST_ARGS)"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	env -u DATABASE_URL -u CELERY_BROKER_URL $(BIN)/python manage.py makemigrations --check --dry-run

# Mutation testing of the state core (provisioning/state.py, provisioning/runs.py) with the unit tests as the oracle;
# configured in pyproject.toml. Minutes, not seconds: not in CI. One child at a time, since the tests share a database.
mutation: install
	rm -rf mutants
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} CELERY_BROKER_URL=$${CELERY_BROKER_URL:-$(TEST_BROKER_URL)} \
	  $(BIN)/mutmut run --max-children 1
	$(BIN)/mutmut results

migrate: install
	$(BIN)/python manage.py migrate

serve: install
	$(BIN)/python manage.py migrate --verbosity 0
	$(BIN)/python manage.py runserver 127.0.0.1:$(PORT)

# The admin console on a fresh clone: an operator account, a COMPLETED and a PARTIAL demo tenant, then the server.
console: install
	$(BIN)/python manage.py console_demo
	$(BIN)/python manage.py runserver 127.0.0.1:$(PORT)

# web, worker and beat (Procfile.dev) on the local PostgreSQL and Redis, in one terminal; Ctrl-C stops them all.
# honcho reads no env file (--env /dev/null): a .env kept for docker compose (its hosts, production mode) must not
# override the local URLs.
dev: install
	@mkdir -p var
	DATABASE_URL=$${DATABASE_URL:-$(DEV_DATABASE_URL)} CELERY_BROKER_URL=$${CELERY_BROKER_URL:-$(DEV_BROKER_URL)} \
	  $(BIN)/python manage.py migrate --verbosity 0
	DATABASE_URL=$${DATABASE_URL:-$(DEV_DATABASE_URL)} CELERY_BROKER_URL=$${CELERY_BROKER_URL:-$(DEV_BROKER_URL)} \
	  MORAN_WEB_PORT=$(PORT) PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho --env /dev/null -f Procfile.dev start

worker: install
	$(BIN)/celery -A celery_app worker -Q provisioning --loglevel INFO

flower: install
	$(BIN)/celery -A celery_app flower --address=127.0.0.1 --port=5555

# Running it for real (README): the whole stack in Docker, from .env (copy .env.example and fill in the secrets).
up:
	@test -f .env || { echo "cp .env.example .env and fill in SECRET_KEY, POSTGRES_PASSWORD, FLOWER_BASIC_AUTH" >&2; exit 2; }
	docker compose up -d --build

down:
	docker compose down
