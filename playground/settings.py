"""Django settings for the playground, read from the environment (django-environ).

Precedence: the real environment, then a local `.env` file (written by `make run` with a generated
secret key), then the defaults below, which give a one-machine setup: SQLite, local-memory cache,
the built-in offline model. Every variable is documented in `.env.example`.
"""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# The real environment always wins: read_env only fills variables that are not set yet.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DJANGO_ENV = env.str("DJANGO_ENV", default="development")
PRODUCTION = DJANGO_ENV == "production"

_DEV_SECRET_KEY = "django-insecure-playground-development-key-do-not-deploy"  # noqa: S105
SECRET_KEY = env.str("SECRET_KEY", default="") or _DEV_SECRET_KEY
if PRODUCTION and (SECRET_KEY == _DEV_SECRET_KEY or len(SECRET_KEY) < 40):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("DJANGO_ENV=production needs a real SECRET_KEY (40+ characters).")

DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = [o for o in env.list("CSRF_TRUSTED_ORIGINS", default=[]) if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "template_partials",
    "playground",
]

# Kept short: under ASGI each middleware hook runs through sync_to_async (a thread hop), and
# the stream route pays for every one of them (see docs/ARCHITECTURE.md).
# Under uvicorn, `playground.middleware.ASGIHandler` loads Django's classes below as subclasses
# whose hooks run on the event loop instead of a thread hop each (see that module). The names stay
# Django's: `check --deploy` looks for them by name.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # The admin needs messages; PLAYGROUND_REQUIRE_LOGIN is checked by our own (sync and async).
    "django.contrib.messages.middleware.MessageMiddleware",
    "playground.owners.require_login_middleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "playground.security.security_headers",
]

ROOT_URLCONF = "playground.urls"
ASGI_APPLICATION = "playground.asgi.application"

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
            ],
        },
    },
]

# An empty variable (as copied from .env.example) means "use the default".
DATABASE_URL = env.str("DATABASE_URL", default="") or f"sqlite:///{BASE_DIR / 'var' / 'db.sqlite3'}"
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
DATABASES["default"]["CONN_MAX_AGE"] = 0  # under ASGI persistent connections leak; see ARCHITECTURE
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django's pool (psycopg_pool): connections are reused without CONN_MAX_AGE, which must stay
    # 0 under ASGI (Django refuses a pool with persistent connections anyway).
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = True

CACHE_URL = env.str("CACHE_URL", default="") or "locmemcache://playground"
CACHES = {"default": env.cache_url_config(CACHE_URL)}

SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
# A year: an anonymous visitor's work is bound to this cookie, and must survive a browser restart.
SESSION_COOKIE_AGE = 365 * 24 * 3600
# Messages in the signed cookie too: nothing is kept in a process between requests.
MESSAGE_STORAGE = "django.contrib.messages.storage.cookie.CookieStorage"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "index"
LOGOUT_REDIRECT_URL = "index"
# true: everything but shared links needs a signed-in user (accounts are made in the admin).
PLAYGROUND_REQUIRE_LOGIN = env.bool("PLAYGROUND_REQUIRE_LOGIN", default=False)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
# htmx requests get a status message and the renewed token instead of Django's page.
CSRF_FAILURE_VIEW = "playground.views.csrf_failure"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Our own JS and CSS are served minified unless DEBUG is on (playground/staticfiles.py).
STATICFILES_FINDERS = [
    "playground.staticfiles.MinifyingFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
]
STATIC_ROOT = BASE_DIR / "staticfiles"
# Without collectstatic (make run, tests) ServeStatic serves the finders' files directly.
SERVESTATIC_USE_FINDERS = True
SERVESTATIC_AUTOREFRESH = DEBUG

# The largest request body, in bytes, checked by the ASGI wrapper in security.py before Django
# reads it (a prompt of PLAYGROUND_MAX_PROMPT_CHARS, percent-encoded, fits with room to spare).
PLAYGROUND_MAX_BODY_BYTES = env.int("PLAYGROUND_MAX_BODY_BYTES", default=2_000_000)
DATA_UPLOAD_MAX_MEMORY_SIZE = PLAYGROUND_MAX_BODY_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = PLAYGROUND_MAX_BODY_BYTES

X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if PRODUCTION:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Backends -----------------------------------------------------------------------------
# Upstream URLs come only from here (server configuration), never from a request.
NVIDIA_API_KEY = env.str("NVIDIA_API_KEY", default="")
NVIDIA_BASE_URL = env.str("NVIDIA_BASE_URL", default="https://integrate.api.nvidia.com/v1")
NVIDIA_MODEL = env.str("NVIDIA_MODEL", default="bigcode/starcoder2-7b")
COMPLETIONS_BASE_URL = env.str("COMPLETIONS_BASE_URL", default="")
COMPLETIONS_API_KEY = env.str("COMPLETIONS_API_KEY", default="")
COMPLETIONS_MODEL = env.str("COMPLETIONS_MODEL", default="")
# The server's dialect (playground/dialects.py): openai-compatible (vLLM, self-hosted NIM), openai,
# llamacpp, ollama, tgi or nim-hosted.
COMPLETIONS_DIALECT = env.str("COMPLETIONS_DIALECT", default="") or "openai-compatible"
# A TOML file listing more backends (README: "Several backends").
PLAYGROUND_BACKENDS = env.str("PLAYGROUND_BACKENDS", default="")
PLAYGROUND_MAX_TOKENS = env.int("PLAYGROUND_MAX_TOKENS", default=2048)
PLAYGROUND_CONTEXT_WINDOW = env.int("PLAYGROUND_CONTEXT_WINDOW", default=16384)
PLAYGROUND_MAX_PROMPT_CHARS = env.int("PLAYGROUND_MAX_PROMPT_CHARS", default=100_000)

# Upstream timeouts in seconds: connect, the longest gap between chunks (covers the prefill of a
# long prompt), waiting for a pooled connection, and a deadline for a whole run.
UPSTREAM_CONNECT_TIMEOUT = env.float("UPSTREAM_CONNECT_TIMEOUT", default=5.0)
UPSTREAM_READ_TIMEOUT = env.float("UPSTREAM_READ_TIMEOUT", default=120.0)
UPSTREAM_POOL_TIMEOUT = env.float("UPSTREAM_POOL_TIMEOUT", default=2.0)
UPSTREAM_TOTAL_TIMEOUT = env.float("UPSTREAM_TOTAL_TIMEOUT", default=600.0)
UPSTREAM_MAX_CONNECTIONS = env.int("UPSTREAM_MAX_CONNECTIONS", default=100)
# Retries before the first token only (connection errors, 408, 409, 429, 5xx): how many, the
# first backoff (doubling, jittered), and the longest Retry-After honoured (longer: give up).
UPSTREAM_RETRIES = env.int("UPSTREAM_RETRIES", default=2)
UPSTREAM_RETRY_BACKOFF = env.float("UPSTREAM_RETRY_BACKOFF", default=0.5)
UPSTREAM_RETRY_MAX_WAIT = env.float("UPSTREAM_RETRY_MAX_WAIT", default=10.0)

# Abuse limits (limits.py): generations per user (or per IP, IPv6 per /64) in a window of
# seconds (0 = no limit), concurrent generations per user, and per worker process. The
# per-process cap stays below the connection pool so a burst is told "busy" at once instead of
# waiting on the pool. Counted in the default cache: set CACHE_URL=redis://… for several workers.
PLAYGROUND_RATE_LIMIT = env.int("PLAYGROUND_RATE_LIMIT", default=30)
PLAYGROUND_RATE_LIMIT_WINDOW = env.int("PLAYGROUND_RATE_LIMIT_WINDOW", default=60)
# Four by default: a four-column compare is four generations at once.
PLAYGROUND_MAX_CONCURRENT_PER_USER = env.int("PLAYGROUND_MAX_CONCURRENT_PER_USER", default=4)
PLAYGROUND_MAX_CONCURRENT = env.int(
    "PLAYGROUND_MAX_CONCURRENT",
    default=max(1, UPSTREAM_MAX_CONNECTIONS - max(1, UPSTREAM_MAX_CONNECTIONS // 10)),
)
if PLAYGROUND_MAX_CONCURRENT >= UPSTREAM_MAX_CONNECTIONS:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("PLAYGROUND_MAX_CONCURRENT must be below UPSTREAM_MAX_CONNECTIONS.")
# Behind a reverse proxy that appends the client address to X-Forwarded-For (and only then):
# limits count per the last address in it instead of the proxy's.
PLAYGROUND_TRUST_X_FORWARDED_FOR = env.bool("PLAYGROUND_TRUST_X_FORWARDED_FOR", default=False)

# The built-in model is much faster than a real one; the playground paces it to this many tokens
# a second so a completion visibly streams in (0 = as fast as it generates).
OFFLINE_MODEL_TOKENS_PER_SECOND = env.float("OFFLINE_MODEL_TOKENS_PER_SECOND", default=120.0)
# The built-in offline model's cache (built on first use, or by `make run` ahead of time).
OFFLINE_MODEL_PATH = BASE_DIR / (
    env.str("OFFLINE_MODEL_PATH", default="") or "var/offline-model.bin"
)

# Every record passes redaction.RedactSecrets, which masks keys and Authorization headers.
# httpx and httpcore print request details at DEBUG: they have their own level, WARNING unless
# HTTP_CLIENT_LOG_LEVEL asks for more.
HTTP_CLIENT_LOG_LEVEL = env.str("HTTP_CLIENT_LOG_LEVEL", default="WARNING")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "playground.redaction.RedactSecrets"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["redact"]}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "httpx": {"level": HTTP_CLIENT_LOG_LEVEL},
        "httpcore": {"level": HTTP_CLIENT_LOG_LEVEL},
    },
}

# Django's error reports (the 500 mail to ADMINS, the DEBUG page) are masked the same way.
DEFAULT_EXCEPTION_REPORTER = "playground.error_reports.RedactingExceptionReporter"
