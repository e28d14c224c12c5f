# The two commands: `make run` (set up and run everything) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WEB_PORT ?= 8000
LOCAL_MAILCHIMP_PORT ?= 8025
LOCAL_BRAZE_PORT ?= 8026
LOCAL_META_PORT ?= 8027

.PHONY: run smoke test faults browser-test lint setup migrate demo services clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(BIN)/.installed

services:
	./scripts/ensure-services.sh

migrate: setup
	$(BIN)/python manage.py migrate --noinput

demo: migrate
	$(BIN)/python manage.py demo

# Web (gunicorn), Celery worker, Celery beat and the local Mailchimp, Braze and Meta servers, together.
# Every process sends partner calls to the local servers (PARTNER_API_BASE_URLS). The keys are
# make run's own, generated once into var/local.env and exported here explicitly (the settings
# have no default key and refuse to start without one; production sets its own).
run: export PARTNER_API_BASE_URLS = {"mailchimp": "http://127.0.0.1:$(LOCAL_MAILCHIMP_PORT)/3.0", "braze": "http://127.0.0.1:$(LOCAL_BRAZE_PORT)", "meta": "http://127.0.0.1:$(LOCAL_META_PORT)/v21.0"}
run: export WEB_BIND = 127.0.0.1:$(WEB_PORT)
run: export LOCAL_MAILCHIMP_PORT := $(LOCAL_MAILCHIMP_PORT)
run: export LOCAL_BRAZE_PORT := $(LOCAL_BRAZE_PORT)
run: export LOCAL_META_PORT := $(LOCAL_META_PORT)
# /metrics adds up the figures of every process (web, worker, beat) from this directory, emptied at each start.
run: export PROMETHEUS_MULTIPROC_DIR ?= $(CURDIR)/var/prometheus
run migrate demo: export SECRET_KEY ?= $(shell ./scripts/local-keys.sh SECRET_KEY)
run migrate demo: export SECRETS_ENCRYPTION_KEYS ?= $(shell ./scripts/local-keys.sh SECRETS_ENCRYPTION_KEYS)
run: setup services
	mkdir -p "$$PROMETHEUS_MULTIPROC_DIR"  # every python process below writes its figures there (a fresh clone has none)
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput -v0
	@echo ""
	$(BIN)/python manage.py demo --web-url http://127.0.0.1:$(WEB_PORT) --credentials-file var/demo-input.json
	@echo ""
	@echo "  Admin:            http://127.0.0.1:$(WEB_PORT)/admin/  (user and password above)"
	@echo "  REST API:         http://127.0.0.1:$(WEB_PORT)/api/v1/  (token: . var/local.env && $(BIN)/python manage.py drf_create_token admin)"
	@echo "  Local Mailchimp:  curl -s -u any:d3m0d3m0d3m0d3m0d3m0d3m0d3m0d3m0-us6 \\"
	@echo "                      'http://127.0.0.1:$(LOCAL_MAILCHIMP_PORT)/3.0/lists/potential-parisians/members?count=1000'"
	@echo "  Local Braze:      curl -s http://127.0.0.1:$(LOCAL_BRAZE_PORT)/local/users"
	@echo "  Local Meta:       curl -s http://127.0.0.1:$(LOCAL_META_PORT)/local/audiences"
	@echo "  Stop with Ctrl-C."
	@echo ""
	# Emptied before the long-running processes start: /metrics counts from their start.
	rm -rf "$$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$$PROMETHEUS_MULTIPROC_DIR"
	$(BIN)/honcho start

# A fresh clone of this commit runs `make run` (other ports, a private Redis database and queue) until
# the local Mailchimp list holds exactly the demo's emails, then everything it started is stopped (CI).
smoke:
	./scripts/smoke-fresh-clone.sh

# Tests use DATABASE_URL when set (CI: PostgreSQL, REQUIRE_SERVICES=1); otherwise SQLite,
# and the end-to-end tests that need PostgreSQL skip with a reason.
test: setup
	$(BIN)/python -m pytest

# The fault suite (tests/faults/): real workers and beat, a private redis-server, a faulty partner.
# Needs PostgreSQL (DATABASE_URL) and the redis-server program; prints a table at the end.
faults: setup
	$(BIN)/python -m pytest -m faults tests/faults

# The tutorial walked in a real browser (Debian's chromium and chromium-driver, selenium, headless) against the
# live server, a real Celery worker and the local Mailchimp; needs PostgreSQL and Redis like the end-to-end tests.
# Screenshots of each step: artifacts/screenshots/ (SCREENSHOTS_DIR).
browser-test: setup
	$(BIN)/python -m pytest -m browser tests/e2e/test_browser_tutorial.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache
