"""Settings for the Express Release Portal, read from the environment (django-environ).

Every variable is documented in `.env.example`. Bad values fail loudly at start-up.
"""

import socket
from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = "insecure-development-key-only-for-debug"
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "adminsortable2",  # drag-and-drop ordering of update groups (static files served locally)
    "atlas",
    "releases",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'portal.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(exist_ok=True)
    # Workers and the web process share the file: wait for locks instead of failing, take the
    # write lock at BEGIN (no deadlock on lock upgrade), and let readers run beside a writer.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"


def _redis_answers(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _broker_settings(url: str | None) -> tuple[str, dict, str]:
    """Return (broker URL, transport options, a description for the start-up log)."""
    if url is None:
        if _redis_answers():
            url = "redis://127.0.0.1:6379/0"
        else:
            url = "filesystem://"
    scheme = urlsplit(url).scheme
    if scheme == "filesystem":
        folder = Path(url[len("filesystem://") :] or VAR_DIR / "broker")
        (folder / "queue").mkdir(parents=True, exist_ok=True)
        (folder / "processed").mkdir(parents=True, exist_ok=True)
        options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
        return "filesystem://", options, f"embedded filesystem broker in {folder}"
    if scheme in {"redis", "rediss"}:
        # Unacknowledged tasks come back after this; a dead worker's step is picked up sooner
        # by the step lease watchdog (releases.watchdog), so this only bounds the worst case.
        options = {"visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)}
        parts = urlsplit(url)
        netloc = f"{parts.hostname}:{parts.port or 6379}"  # never log a password in the URL
        safe = parts._replace(netloc=netloc).geturl()
        return url, options, f"Redis at {safe}"
    if scheme == "memory":
        return url, {}, "in-memory broker (one process only)"
    raise ImproperlyConfigured(
        f"CELERY_BROKER_URL has an unsupported scheme {scheme!r}: use redis://, filesystem:// or memory://"
    )


CELERY_BROKER_URL, CELERY_BROKER_TRANSPORT_OPTIONS, CELERY_BROKER_DESCRIPTION = _broker_settings(
    env.str("CELERY_BROKER_URL", default=None)
)
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# The three Atlas environments, used by `loadrunbook` when the Environment rows are first created.
# Afterwards the rows are the source of truth; passwords are only ever read from the variable a
# row names (ATLAS_<ENV>_PASSWORD by default) and never stored.
ATLAS_DEFAULTS = {
    name: {
        "url": env.str(f"ATLAS_{name}_URL", default=f"http://127.0.0.1:{port}/"),
        "username": env.str(f"ATLAS_{name}_USERNAME", default="release-portal"),
        "password_env": f"ATLAS_{name}_PASSWORD",
        "site_url": env.str(f"ATLAS_{name}_SITE_URL", default=f"https://{name.lower()}.express.example.edu/"),
    }
    for name, port in (("DEV", 5101), ("TEST", 5102), ("PROD", 5103))
}
# An environment reads its password from ATLAS_<NAME>_PASSWORD and its Slack webhook from
# ATLAS_<NAME>_SLACK_WEBHOOK; these list the other variable names a row may name instead (e.g. a
# shared service account). Never another environment's variable, nor the process's own secrets.
_PROCESS_SECRETS = {"SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "PORTAL_ADMIN_PASSWORD"}
ATLAS_PASSWORD_VARIABLES = env.list("ATLAS_PASSWORD_VARIABLES", default=[])
ATLAS_SLACK_VARIABLES = env.list("ATLAS_SLACK_VARIABLES", default=[])
for _setting in ("ATLAS_PASSWORD_VARIABLES", "ATLAS_SLACK_VARIABLES"):
    _refused = sorted(set(globals()[_setting]) & _PROCESS_SECRETS)
    if _refused:
        raise ImproperlyConfigured(
            f"{_setting} must not list the portal's own secrets: {', '.join(_refused)}"
        )
# Defaults for new Environment rows (then edited per environment in the admin or `environment set`).
ATLAS_DEPLOY_WAIT_SECONDS = env.float("ATLAS_DEPLOY_WAIT_SECONDS", default=60.0)
ATLAS_POOL_WAIT_SECONDS = env.float("ATLAS_POOL_WAIT_SECONDS", default=600.0)
ATLAS_BATCH_PAUSE_SECONDS = env.float("ATLAS_BATCH_PAUSE_SECONDS", default=5.0)
# A running step is held by one worker's lease, renewed every quarter of it; a step whose lease
# lapsed (its worker died) is enqueued again by every live worker's watchdog.
STEP_LEASE_SECONDS = env.float("STEP_LEASE_SECONDS", default=30.0)
WATCHDOG_INTERVAL_SECONDS = env.float("WATCHDOG_INTERVAL_SECONDS", default=15.0)
PORTAL_BASE_URL = env.str("PORTAL_BASE_URL", default="http://127.0.0.1:8000")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"urllib3": {"level": "WARNING"}},
}
