"""Settings for the Express Release Portal, read from the environment (django-environ).

Every variable is documented in `.env.example`. Bad values fail loudly at start-up.
"""

from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# Off unless set: `make run` and the test settings turn it on for themselves.
DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off (a long random string); `make run` turns DEBUG on."
        )
    SECRET_KEY = "insecure-development-key-only-for-debug"
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# HTTPS by default when DEBUG is off. A deployment served over plain HTTP on an internal network
# says so explicitly with PORTAL_PLAIN_HTTP=true (no redirect, no HSTS, cookies without `Secure`).
PORTAL_PLAIN_HTTP = env.bool("PORTAL_PLAIN_HTTP", default=DEBUG)
_https = not PORTAL_PLAIN_HTTP
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=_https)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # load balancers probe over plain HTTP
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000 if _https else 0)
# The portal's own host name and its subdomains: turn these off if the portal's host name is a
# parent of sites that are not served over HTTPS.
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=_https)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=_https)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=_https)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=_https)
# Behind a proxy that terminates TLS: the header it sets, e.g. X-Forwarded-Proto.
if env.str("SECURE_PROXY_SSL_HEADER", default=""):
    SECURE_PROXY_SSL_HEADER = (
        "HTTP_" + env.str("SECURE_PROXY_SSL_HEADER").upper().replace("-", "_"),
        "https",
    )
SILENCED_SYSTEM_CHECKS = env.list("SILENCED_SYSTEM_CHECKS", default=[])
if PORTAL_PLAIN_HTTP and not DEBUG:
    # The operator chose plain HTTP: the HTTPS warnings of `check --deploy` are that choice.
    SILENCED_SYSTEM_CHECKS += ["security.W004", "security.W008", "security.W012", "security.W016"]
# Sessions expire: after SESSION_COOKIE_AGE seconds (default 8 hours) and when the browser closes.
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=8 * 3600)
SESSION_EXPIRE_AT_BROWSER_CLOSE = True

INSTALLED_APPS = [
    "releases",  # first: its admin/base_site.html (branding, the site-wide stylesheet) wins
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "adminsortable2",  # drag-and-drop ordering of update groups (static files served locally)
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # the API docs' Swagger UI, served locally (no CDN)
    "atlas",
    "api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
    "releases.channel.AdminChannelMiddleware",
]

# Failed-login throttling (django-axes): after AXES_FAILURE_LIMIT failed logins for one username
# from one client address, that pair is locked out for AXES_COOLOFF_HOURS (a lockout is logged).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=0.25)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False  # lockouts are still logged; not the banner at every start
# The client address is the one the reverse proxies saw. PORTAL_TRUSTED_PROXIES is how many
# proxies, each appending the address it received from to X-Forwarded-For, stand in front of the
# web process: 0 (default) uses the connection's address (REMOTE_ADDR) and ignores the header;
# N uses the Nth entry from the right, the one the outermost proxy wrote. Entries left of it come
# from the client and are never read. Behind one proxy without this, every login would share the
# proxy's address and five wrong guesses would lock a username out for everyone.
try:
    PORTAL_TRUSTED_PROXIES = env.int("PORTAL_TRUSTED_PROXIES", default=0)
except ValueError:
    PORTAL_TRUSTED_PROXIES = -1
if PORTAL_TRUSTED_PROXIES < 0:
    raise ImproperlyConfigured(
        "PORTAL_TRUSTED_PROXIES must be a whole number, 0 or more (the number of reverse proxies)."
    )


def _login_client_address(request) -> str | None:
    """The address a login attempt is counted against (AXES_CLIENT_IP_CALLABLE).

    django-ipware is not installed, so axes's own AXES_IPWARE_* settings would be ignored: the
    address is picked here. A header with fewer entries than trusted proxies (the request did not
    come through all of them) or a malformed entry falls back to REMOTE_ADDR.
    """
    import ipaddress

    from django.conf import settings

    remote_addr = request.META.get("REMOTE_ADDR")
    proxies = settings.PORTAL_TRUSTED_PROXIES
    if proxies <= 0:
        return remote_addr
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    forwarded = [part for part in forwarded if part]
    if len(forwarded) < proxies:
        return remote_addr
    try:
        return str(ipaddress.ip_address(forwarded[-proxies]))
    except ValueError:
        return remote_addr


AXES_CLIENT_IP_CALLABLE = _login_client_address

# The HTTP API (`api/`): personal tokens only, JSON, errors as {"code", "detail"}. Failed token
# authentications are throttled per client address (the same proxy rule as the login lockout:
# NUM_PROXIES); each token's user is throttled too.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["api.authentication.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["api.permissions.TokenUser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "user": env.str("API_USER_RATE", default="1200/min"),
        "failed_auth": env.str("API_FAILED_AUTH_RATE", default="20/min"),
    },
    "NUM_PROXIES": PORTAL_TRUSTED_PROXIES,
    "EXCEPTION_HANDLER": "api.errors.handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Express Release Portal API",
    "DESCRIPTION": "The release manager's operations for CI and laptops: the same permissions, rules "
    "and audit as the admin and `manage.py release`. Authenticate with a personal token: "
    "`Authorization: Bearer erp_…`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
}

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


def _database(url: str) -> dict:
    """The database settings from DATABASE_URL; a malformed URL is refused without echoing it
    (it may hold a password)."""
    try:
        db = environ.Env.db_url_config(url) if urlsplit(url).scheme in environ.Env.DB_SCHEMES else {}
    except Exception:  # django-environ raises several kinds for a malformed URL
        db = {}
    if not db.get("ENGINE") or not db.get("NAME"):
        raise ImproperlyConfigured(
            "DATABASE_URL is not a database URL: use postgres://USER:PASSWORD@HOST:5432/NAME "
            "or sqlite:////absolute/path.sqlite3"
        )
    return db


DATABASES = {"default": _database(env.str("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'portal.sqlite3'}"))}
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
STATIC_ROOT = env.path("STATIC_ROOT", default=VAR_DIR / "static")
# WhiteNoise serves the admin's static files from the web process (`collectstatic` at deploy);
# with DEBUG on, Django serves them from the apps and the folder only needs to exist.
WHITENOISE_USE_FINDERS = DEBUG
if DEBUG:
    Path(STATIC_ROOT).mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedStaticFilesStorage"
    },
}


def _broker_settings(url: str | None, *, embedded_allowed: bool = False) -> tuple[str, dict, str]:
    """Return (broker URL, transport options, a description for the start-up log).

    The broker is chosen explicitly: CELERY_BROKER_URL when set; without it the embedded
    filesystem broker, which only works across processes of one machine, and only with DEBUG
    on (the demo and the tests). Nothing is probed: every process of a deployment reads the same
    variable, so the web process and the workers cannot end up on different brokers.
    """
    if url is None:
        if not embedded_allowed:
            raise ImproperlyConfigured(
                "CELERY_BROKER_URL must be set when DEBUG is off (e.g. redis://127.0.0.1:6379/0)."
            )
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
        # No ack emulation: a delivered task leaves Redis at once. With it on (kombu 5.7.0, the
        # newest), a worker whose Redis restarted while an acks_late task ran exits when that
        # task ends: its ack goes to the channel of the lost connection, whose `_connparams`
        # raises AttributeError('NoneType' ... 'hostname'), and the fleet is left without a
        # worker or a watchdog (tests/test_drills.py). What emulation gave us, redelivering a
        # dead worker's task after the visibility timeout, the step lease and the watchdog
        # (releases.watchdog) do within a minute; and a step that runs longer than the
        # visibility timeout is no longer handed to a second worker meanwhile.
        options = {"ack_emulation": False}
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
    env.str("CELERY_BROKER_URL", default=None), embedded_allowed=DEBUG
)
# Several portals may share one Redis: give each its own queue (or its own Redis database).
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_QUEUE", default="celery")
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
# How often, while sites are updating at Atlas, the portal asks for their reports and reads them.
ATLAS_VERIFY_POLL_SECONDS = env.float("ATLAS_VERIFY_POLL_SECONDS", default=3.0)
# ...and how long after asking it reads them (the reports run on Atlas's command queue meanwhile).
ATLAS_VERIFY_READ_SECONDS = env.float("ATLAS_VERIFY_READ_SECONDS", default=1.0)
# A round reads only the reports that show the release cleanly; a site still updating is looked
# at whole (what it reports, shown on the step page) once it has waited this long, and as often:
# at Atlas's update times (a minute or more a site, as long again in its queue) most sites are
# verified before, so each site's report is read about once.
ATLAS_VERIFY_LOOK_SECONDS = env.float("ATLAS_VERIFY_LOOK_SECONDS", default=300.0)
# A running step is held by one worker's lease, renewed every quarter of it; a step whose lease
# lapsed (its worker died) is enqueued again by every live worker's watchdog.
STEP_LEASE_SECONDS = env.float("STEP_LEASE_SECONDS", default=30.0)
WATCHDOG_INTERVAL_SECONDS = env.float("WATCHDOG_INTERVAL_SECONDS", default=15.0)
PORTAL_BASE_URL = env.str("PORTAL_BASE_URL", default="http://127.0.0.1:8000")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {
        "one_line_4xx": {"()": "portal.logfilters.OneLineClientErrors"},
        "no_broker_hostname": {"()": "portal.logfilters.NoBrokerHostnameNotice"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "urllib3": {"level": "WARNING"},
        # Django's own console handler (DEBUG only) would print every django.* line a second time.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        # A 403 or 404 is one line ("Forbidden (Permission denied): /admin/…"), not a traceback.
        "django.request": {"filters": ["one_line_4xx"]},
        "kombu.connection": {"filters": ["no_broker_hostname"]},
    },
}
