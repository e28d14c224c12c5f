"""Settings, all read from the environment (see README, "Configuration")."""

import json
import os
import re
from datetime import timedelta
from pathlib import Path

import dj_database_url
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from config.queues import declared_queues

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_json(name: str, default: dict) -> dict:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ImproperlyConfigured(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ImproperlyConfigured(f"{name} must be a JSON object (partner key -> base URL)")
    return value


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_fernet_keys() -> list[str]:
    """SECRETS_ENCRYPTION_KEYS (comma-separated: the first encrypts, every one decrypts), or the
    one-key form SECRETS_ENCRYPTION_KEY. Each must be a Fernet key; none is ever derived."""
    keys = env_list("SECRETS_ENCRYPTION_KEYS")
    single = os.environ.get("SECRETS_ENCRYPTION_KEY", "").strip()
    if single and not keys:
        keys = [single]
    elif single and single not in keys:
        raise ImproperlyConfigured(
            "SECRETS_ENCRYPTION_KEY and SECRETS_ENCRYPTION_KEYS are both set and disagree: "
            "set SECRETS_ENCRYPTION_KEYS only (new key first, old keys after it)"
        )
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except ValueError:
            raise ImproperlyConfigured(
                f"SECRETS_ENCRYPTION_KEYS: key {position} is not a Fernet key (32 url-safe base64-encoded bytes)"
            ) from None
    return keys


DEBUG = env_bool("DEBUG", False)

# Real keys or no start: a missing key is never replaced by a default (a database dump would then
# decrypt with the repository's key). `make run` generates its own local keys into var/local.env
# and exports them; DEBUG=true runs without them (development only: no partner secret can be stored).
SECRET_KEY = os.environ.get("SECRET_KEY", "")
# Partner secrets (API keys, tokens) are encrypted at rest with these Fernet keys (MultiFernet).
SECRETS_ENCRYPTION_KEYS = env_fernet_keys()
_missing_keys = [
    name
    for name, value in (("SECRET_KEY", SECRET_KEY), ("SECRETS_ENCRYPTION_KEYS", SECRETS_ENCRYPTION_KEYS))
    if not value
]
if _missing_keys and not DEBUG:
    raise ImproperlyConfigured(
        f"{' and '.join(_missing_keys)} must be set in the environment (README, 'Production'). "
        "`make run` sets local ones for the demo; DEBUG=true starts without them, for development only."
    )
if not SECRET_KEY:
    SECRET_KEY = "django-insecure-debug-only"  # DEBUG only (refused above otherwise)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

# HTTPS, from the environment (README, "Production"; `manage.py check --deploy` is clean with them set).
# Behind a TLS-terminating proxy, SECURE_PROXY_SSL_HEADER names the header it sets, e.g.
# "HTTP_X_FORWARDED_PROTO,https" (the proxy must overwrite any value the client sent).
if os.environ.get("SECURE_PROXY_SSL_HEADER"):
    _header, _, _value = os.environ["SECURE_PROXY_SSL_HEADER"].partition(",")
    if not _header.strip().startswith("HTTP_") or not _value.strip():
        raise ImproperlyConfigured("SECURE_PROXY_SSL_HEADER must look like 'HTTP_X_FORWARDED_PROTO,https'")
    SECURE_PROXY_SSL_HEADER = (_header.strip(), _value.strip())
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)

# Partner key -> base URL, to point a partner at a local or staging server.
# "{dc}" in a Mailchimp URL is replaced with the data center of the API key.
PARTNER_API_BASE_URLS = env_json("PARTNER_API_BASE_URLS", {})
# Partner key -> its request rate limit per account as "requests/seconds" (e.g. {"braze": "2500/3"}), for
# a plan other than the one the partner declares (outputs/partners/budget.py).
PARTNER_REQUEST_RATES = env_json("PARTNER_REQUEST_RATES", {})
for _partner, _rate in PARTNER_REQUEST_RATES.items():
    if not re.fullmatch(r"[1-9]\d*/\d+(\.\d+)?", str(_rate)) or float(str(_rate).partition("/")[2]) <= 0:
        raise ImproperlyConfigured(f"PARTNER_REQUEST_RATES[{_partner!r}]: {_rate!r} is not requests/seconds (3000/3)")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "audiences",
    "outputs",
    "connections",
    "forwarding",
]

MIDDLEWARE = [
    # A request id on every log line of the request (config/logs.py), echoed as X-Request-ID.
    "config.logs.RequestIdMiddleware",
    # /healthz and /readyz, answered before host checks and HTTPS redirects (probes use the IP, plain HTTP).
    "config.health.HealthMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # A chunked body Django would read as empty answers 411 (config/request_parsing.py).
    "config.request_parsing.RequireKnownLength",
    # Serves the admin's static files under gunicorn, without a separate web server.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                # The admin's banner of faulted connections (templates/admin/base_site.html).
                "forwarding.context_processors.faulted_connections",
            ],
        },
    },
]

# SQLite is the embedded default; set DATABASE_URL=postgres://... for PostgreSQL.
if not os.environ.get("DATABASE_URL"):
    # The SQLite file lives in var/, which a fresh clone does not have yet.
    VAR_DIR.mkdir(parents=True, exist_ok=True)
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")),
        # A persistent connection is checked (SELECT 1) before a request or task first uses it,
        # and replaced if the database dropped it meanwhile, instead of failing that request
        # (issue 6; config/db.py covers a connection lost in the middle of a transaction).
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Wait for the writer instead of failing with "database is locked" when the web
    # process and the worker write at once.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    # BEGIN IMMEDIATE: a transaction takes the write lock up front and waits for it, instead of
    # failing with "database is locked" when it upgrades from reading to writing.
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    # WAL: the web, the worker and beat read while one of them writes (a rollback journal would
    # make every reader wait for the writer, and the writer for every reader).
    DATABASES["default"]["OPTIONS"]["init_command"] = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL"
    DATABASES["default"]["CONN_MAX_AGE"] = 0
if os.environ.get("DATABASE_TEST_NAME"):
    DATABASES["default"]["TEST"] = {"NAME": os.environ["DATABASE_TEST_NAME"]}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# The REST API (README, "REST API"): Django's model permissions per action (config/roles.py),
# one error shape, strict filters, capped pages, JSON bodies, an OpenAPI 3.1 schema.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["config.api_permissions.ActionPermissions"],
    "DEFAULT_PAGINATION_CLASS": "config.api_lists.CappedLimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_FILTER_BACKENDS": [
        "config.api_lists.KnownQueryParameters",
        "django_filters.rest_framework.DjangoFilterBackend",
        "config.api_lists.SearchFilter",
        "config.api_lists.StrictOrderingFilter",
    ],
    # Strict JSON bodies only (415 otherwise); Django's DATA_UPLOAD_MAX_MEMORY_SIZE bounds them (413,
    # config/api_errors.py).
    "DEFAULT_PARSER_CLASSES": ["config.request_parsing.StrictJSONParser"],
    "EXCEPTION_HANDLER": "config.api_errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "config.api_schema.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Audience forwarding service",
    "DESCRIPTION": "REST API (/api/v1/, token authentication) and the mParticle-compatible Events API "
    "(/v2/, HTTP Basic with an input's key and secret). See the README.",
    "VERSION": "1",
    "OAS_VERSION": "3.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "audiences.events_api.openapi.add_events_api",
    ],
    "ENUM_NAME_OVERRIDES": {"IdentityTypeEnum": "audiences.identities.IDENTITY_TYPE_CHOICES"},
}

# Celery: Redis is the broker. Tasks are idempotent doorbells, so acks_late is safe
# and a killed worker's task is delivered again.
CELERY_BROKER_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# CELERY_QUEUE is the prefix of the queues, one per kind of work (config/queues.py): forwarding.realtime,
# forwarding.recompute, ... A worker started without -Q consumes them all.
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_QUEUE", "forwarding")
CELERY_TASK_ROUTES = ["config.queues.route_task"]
CELERY_TASK_QUEUES = declared_queues(CELERY_TASK_DEFAULT_QUEUE)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# A worker keeps its database connection from one task to the next, checked before each task as a request's
# is (config/celery.py: close_old_connections before and after each task). Celery's Django fix-up would
# otherwise close it around every task: a new PostgreSQL backend per ring, about 8 ms of CPU on the
# 2-core machine (README, "Real-time latency"). The fix-up still closes them every this many tasks.
CELERY_DB_REUSE_MAX = 1000

# Forwarding knobs (README, "Configuration").
FORWARDING = {
    # Seconds between sweeps that re-ring pending work nobody is handling (a killed worker's).
    "SWEEP_INTERVAL": float(os.environ.get("FORWARDING_SWEEP_INTERVAL", "5")),
    # A ring of a connection whose delivery task is queued and not started yet is not queued again
    # (forwarding/doorbell.py, ring_coalesced).
    "COALESCE_RINGS": env_bool("FORWARDING_COALESCE_RINGS", True),
    # A connection's delivery lease, renewed every third of it while its holder works (partner call
    # included): a killed worker's connection is taken over within this, plus a sweep.
    "LEASE_SECONDS": float(os.environ.get("FORWARDING_LEASE_SECONDS", "15")),
    # Exponential backoff with jitter: per member (a RETRY answer) up to BACKOFF_MAX_SECONDS, and
    # per connection while every call fails, up to PROBE_MAX_SECONDS between probes.
    # Seconds between checks of bulk connections' upload criteria (forwarding/bulk.py).
    "BULK_CHECK_INTERVAL": float(os.environ.get("FORWARDING_BULK_CHECK_INTERVAL", "60")),
    "BACKOFF_BASE_SECONDS": float(os.environ.get("FORWARDING_BACKOFF_BASE_SECONDS", "2")),
    "BACKOFF_MAX_SECONDS": float(os.environ.get("FORWARDING_BACKOFF_MAX_SECONDS", "900")),
    "PROBE_MAX_SECONDS": float(os.environ.get("FORWARDING_PROBE_MAX_SECONDS", "10")),
    # A connection whose every call failed this long is faulted (an outage); it is then probed
    # every FAULTED_PROBE_SECONDS and resumes by itself when the partner answers.
    "OUTAGE_FAULT_MINUTES": float(os.environ.get("FORWARDING_OUTAGE_FAULT_MINUTES", "30")),
    "FAULTED_PROBE_SECONDS": float(os.environ.get("FORWARDING_FAULTED_PROBE_SECONDS", "60")),
    # Deliveries at once per partner account (Mailchimp: 10 simultaneous connections per API key).
    "ACCOUNT_MAX_CONNECTIONS": int(os.environ.get("FORWARDING_ACCOUNT_MAX_CONNECTIONS", "10")),
    # Partner HTTP timeouts (connect, read) in seconds.
    "HTTP_TIMEOUT": (
        float(os.environ.get("PARTNER_CONNECT_TIMEOUT", "5")),
        float(os.environ.get("PARTNER_READ_TIMEOUT", "60")),
    ),
}
# Partner calls (outputs/partners/http.py). The total deadline of one call (connect, send and the
# whole answer; the read timeout above bounds only one silence; the delivery lease is renewed
# during the call, and a call is cut if it cannot be, forwarding/leases.py); and the
# largest answer read (the local Mailchimp answers a 500-member batch in 222 KB; real Mailchimp
# echoes more of each member: room to spare).
PARTNER_CALL_DEADLINE_SECONDS = float(os.environ.get("PARTNER_CALL_DEADLINE_SECONDS", "90"))
PARTNER_MAX_RESPONSE_BYTES = int(os.environ.get("PARTNER_MAX_RESPONSE_BYTES", str(8 * 1024 * 1024)))
if PARTNER_CALL_DEADLINE_SECONDS <= 0 or PARTNER_MAX_RESPONSE_BYTES <= 0:
    raise ImproperlyConfigured("PARTNER_CALL_DEADLINE_SECONDS and PARTNER_MAX_RESPONSE_BYTES must be positive")
# Events are kept this many days (mParticle's default audience look-back is 30 days).
EVENT_RETENTION_DAYS = int(os.environ.get("EVENT_RETENTION_DAYS", "30"))
# PostgreSQL work_mem for a recompute's transaction (hash tables of member ids).
RECOMPUTE_WORK_MEM = os.environ.get("RECOMPUTE_WORK_MEM", "128MB")
# Events API: requests over this size are refused with 413, as mParticle does.
EVENTS_API_MAX_BYTES = int(os.environ.get("EVENTS_API_MAX_BYTES", str(256 * 1024)))
DATA_UPLOAD_MAX_MEMORY_SIZE = max(2_621_440, EVENTS_API_MAX_BYTES * 2)
# Events API limits (config/ratelimit.py), in Redis so they hold across web workers. Per input, in
# batches per second with a burst allowance (mParticle: 270 batches/s per account); 0 turns it off.
EVENTS_API_RATE_LIMIT = float(os.environ.get("EVENTS_API_RATE_LIMIT", "1000"))
EVENTS_API_RATE_BURST = int(os.environ.get("EVENTS_API_RATE_BURST", "10000"))
# Failed authentications allowed per client address, and per key, in each window (0: no limit).
EVENTS_API_AUTH_FAILURES_PER_CLIENT = int(os.environ.get("EVENTS_API_AUTH_FAILURES_PER_CLIENT", "20"))
EVENTS_API_AUTH_FAILURES_PER_KEY = int(os.environ.get("EVENTS_API_AUTH_FAILURES_PER_KEY", "200"))
EVENTS_API_AUTH_FAILURE_WINDOW = int(os.environ.get("EVENTS_API_AUTH_FAILURE_WINDOW", "300"))
RATE_LIMIT_REDIS_URL = os.environ.get("RATE_LIMIT_REDIS_URL") or CELERY_BROKER_URL
# Prefix of the limits' Redis keys: deployments sharing one Redis database need different ones.
RATE_LIMIT_KEY_PREFIX = os.environ.get("RATE_LIMIT_KEY_PREFIX", "af:limits:")
# Reverse proxies in front that append the client's address to X-Forwarded-For (nginx: 1). 0: REMOTE_ADDR.
TRUSTED_PROXY_COUNT = int(os.environ.get("TRUSTED_PROXY_COUNT", "0"))
if EVENTS_API_RATE_LIMIT < 0 or EVENTS_API_RATE_BURST < 1 or EVENTS_API_AUTH_FAILURE_WINDOW < 1:
    raise ImproperlyConfigured(
        "EVENTS_API_RATE_LIMIT must be >= 0, EVENTS_API_RATE_BURST and EVENTS_API_AUTH_FAILURE_WINDOW >= 1"
    )

# Fault alerts (forwarding/alerts.py): who is told when a connection faults or recovers. Mail goes
# through Django's mail settings below; the webhook gets a JSON POST, bounded by its timeout.
ALERT_EMAILS = env_list("ALERT_EMAILS")
ALERT_WEBHOOK_URL = os.environ.get("ALERT_WEBHOOK_URL", "")
ALERT_WEBHOOK_TIMEOUT = float(os.environ.get("ALERT_WEBHOOK_TIMEOUT", "10"))
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = float(os.environ.get("EMAIL_TIMEOUT", "10"))
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "audience-forwarding@localhost")

# Health (config/health.py): beat and every worker write a heartbeat this often (seconds); /readyz is
# unready when either is older than HEARTBEAT_MAX_AGE.
HEARTBEAT_INTERVAL = float(os.environ.get("HEARTBEAT_INTERVAL", "10"))
HEARTBEAT_MAX_AGE = float(os.environ.get("HEARTBEAT_MAX_AGE", "60"))
if not 0 < HEARTBEAT_INTERVAL < HEARTBEAT_MAX_AGE:
    raise ImproperlyConfigured("HEARTBEAT_INTERVAL must be positive and below HEARTBEAT_MAX_AGE")

# /metrics (config/metrics.py) wants "Authorization: Bearer <METRICS_TOKEN>" when this is set.
# PROMETHEUS_MULTIPROC_DIR (read by prometheus-client itself) adds up the figures of several processes.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")

# Periodic tasks are defined here, in code; django-celery-beat's DatabaseScheduler
# copies them into its tables at start-up (and the admin shows them).
CELERY_BEAT_SCHEDULE = {
    "forwarding-sweep": {
        "task": "forwarding.tasks.sweep_pending_work",
        "schedule": timedelta(seconds=FORWARDING["SWEEP_INTERVAL"]),
    },
    # Audiences whose membership changes with the clock (event recency, "within the last").
    # Bulk connections whose upload criteria are met get their upload (forwarding/bulk.py).
    "forwarding-bulk-uploads": {
        "task": "forwarding.tasks.flush_bulk_uploads",
        "schedule": timedelta(seconds=FORWARDING["BULK_CHECK_INTERVAL"]),
    },
    "audiences-recompute-time-based": {
        "task": "audiences.tasks.recompute_time_based_audiences",
        "schedule": timedelta(seconds=float(os.environ.get("TIME_BASED_RECOMPUTE_INTERVAL", "300"))),
    },
    # Alerts whose task was lost (broker down at commit) or gave up its retries are sent again.
    "forwarding-resend-alerts": {
        "task": "forwarding.tasks.send_unsent_alerts",
        "schedule": timedelta(seconds=60),
    },
    # Erasures whose partner removes were all delivered are finished (their last values forgotten).
    "forwarding-finish-erasures": {
        "task": "forwarding.tasks.finish_erasures",
        "schedule": timedelta(seconds=FORWARDING["SWEEP_INTERVAL"]),
    },
    "audiences-purge-events": {
        "task": "audiences.tasks.purge_expired_events",
        "schedule": timedelta(hours=1),
    },
    # The daily history of audiences and connections (today's row refreshed, yesterday's completed).
    "history-snapshot": {
        "task": "forwarding.tasks.snapshot_history",
        "schedule": timedelta(hours=1),
    },
    # Beat's heartbeat (config/health.py): beat records the time as it sends it; /readyz reads it.
    "health-heartbeat": {
        "task": "config.health.heartbeat",
        "schedule": timedelta(seconds=HEARTBEAT_INTERVAL),
        "options": {"expires": HEARTBEAT_INTERVAL},
    },
}

# LOG_FORMAT=json: one JSON object a line (config/logs.py); plain otherwise. Both carry the request id,
# task id, connection id and partner when known; the frequent periodic tasks' Celery lines are DEBUG.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "plain").strip().lower()
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured("LOG_FORMAT must be 'plain' or 'json'")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # No personal data in logs: PostgreSQL's DETAIL lines (which quote the values of a failed
    # constraint, e.g. an email) are redacted from every record and traceback.
    "filters": {
        "redact_personal_data": {"()": "config.log_redaction.RedactPersonalData"},
        "log_context": {"()": "config.logs.AddLogContext"},
        "quiet_periodic_tasks": {"()": "config.logs.QuietPeriodicTasks"},
    },
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s%(context)s"},
        "json": {"()": "config.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["quiet_periodic_tasks", "redact_personal_data", "log_context"],
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
# The Celery worker and beat log through LOGGING above (and its redaction), not handlers of their own.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
