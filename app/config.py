"""Configuration defaults and the instance-folder bootstrap.

Settings come, in order, from these defaults, ``instance/config.py``, environment
variables prefixed ``PIPELINE_MANAGER_`` (JSON-decoded where possible), and
finally the ``test_config`` mapping given to :func:`app.create_app`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

# Never a sink: "this host" (http://0/ reaches the server itself), link-local
# (where clouds serve instance metadata and credentials) and the metadata
# services that live elsewhere. Loopback and private ranges are not here: see
# docs/security.md ("Where http sinks may connect"). The rules that apply them
# live in app/transports/destinations.py.
DEFAULT_DENIED: tuple[str, ...] = (
    "0.0.0.0/8",
    "::/128",
    "169.254.0.0/16",
    "fe80::/10",
    "100.100.100.200/32",  # Alibaba Cloud metadata
    "fd00:ec2::254/128",  # AWS instance metadata over IPv6
    "192.0.0.192/32",  # Oracle Cloud metadata
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "metadata.azure.com",
    "instance-data",
    "instance-data.ec2.internal",
)


SECRET_KEY_FILE = "secret_key"  # noqa: S105 (a file name, not a secret)


def default_config(instance_path: str) -> dict[str, Any]:
    """Return the defaults that every deployment starts from."""
    return {
        "SQLALCHEMY_DATABASE_URI": "sqlite:///"
        + os.path.join(instance_path, "pipeline-manager.db"),
        "SQLALCHEMY_ENGINE_OPTIONS": {},
        # Milliseconds a SQLite statement waits for another connection's lock.
        "SQLITE_BUSY_TIMEOUT_MS": 5000,
        # Bodies bigger than this answer 413 PayloadTooLarge.
        "MAX_CONTENT_LENGTH": 16 * 1024 * 1024,
        # Reset tokens older than this answer 400 InvalidResetToken (reason "expired").
        "RESET_TOKEN_MAX_AGE": 7 * 24 * 3600,
        # Signing keys that are being rotated out; tokens they signed still verify.
        "SECRET_KEY_FALLBACKS": [],
        # Folder that file sinks live in; relative sink paths are taken from here.
        "SINK_DIR": os.path.join(instance_path, "sinks"),
        # The environment variables a postgres connector may name for its sink's
        # DSN start with this, so none can name the service's own database.
        "POSTGRES_SINK_DSN_PREFIX": "SINK_DSN_",
        # Which tenants may name each of those variables, e.g.
        # {"SINK_DSN_ACME": ["acme"], "SINK_DSN_SHARED": "*"}; once set, a variable
        # it does not list is named by none. Empty: every tenant may name every one.
        "POSTGRES_SINK_DSN_TENANTS": {},
        # Seconds a worker's claim on a reset or a connector lasts without renewal.
        "WORKER_LEASE_SECONDS": 30,
        # Connectors one worker process serves at once (threads), so that a slow or
        # dead sink holds up one of them, not every connector.
        "DELIVERY_CONCURRENCY": 4,
        # Per-tenant quotas (app/quotas.py): answered 409 QuotaExceeded past them
        # (0 or None: no quota).
        "TENANT_MAX_PIPELINES": 10_000,
        "TENANT_MAX_CONNECTORS": 100_000,
        "TENANT_MAX_QUEUED_RESETS": 10_000,
        # The most of those threads one tenant's connectors hold at once in a process
        # (None: all but one, so another tenant's work always finds a thread).
        "TENANT_MAX_CONCURRENT_CLAIMS": None,
        # A connector whose sink diverges again and again (each time redoing its
        # snapshot) is failed after this many redos within this many seconds; the
        # redos before that wait longer and longer (the delivery backoff).
        "REDO_MAX_IN_WINDOW": 5,
        "REDO_WINDOW_SECONDS": 3600,
        # A reset whose sink fails is retried with the delivery backoff; it fails (and
        # its connector is marked failed) once it made this many attempts *and* has
        # been going on this many seconds: a sink down for minutes is ridden out.
        "RESET_MAX_ATTEMPTS": 5,
        "RESET_RETRY_SECONDS": 900,
        # The worker is woken when there is work (app/delivery/wake.py); it also
        # looks on its own every this many seconds, a safety net.
        "WORKER_POLL_INTERVAL": 5.0,
        # On SQLite, seconds between the worker's checks that another process
        # committed (one PRAGMA data_version read each), for commits that do not
        # announce themselves (the service's own do: app/delivery/wake.py).
        "WORKER_WAKE_CHECK_SECONDS": 0.25,
        # Delivery processes that gunicorn runs beside the request workers (set by
        # gunicorn.conf.py). With any, the request workers run no worker of their
        # own, and their /readyz checks the worker processes' heartbeats instead.
        "DELIVERY_PROCESSES": 0,
        # Changes per batch a connector delivers, and records per batch a reset
        # replays: one file write or one http message each.
        "DELIVERY_BATCH_SIZE": 10_000,
        "REPLAY_BATCH_SIZE": 10_000,
        # A batch of either kind also ends once its records' JSON reaches this many
        # characters (at least one record): it bounds memory and http bodies.
        "DELIVERY_BATCH_BYTES": 4 * 1024 * 1024,
        # Backoff after a failed delivery: doubled per failure in a row, up to the cap.
        "DELIVERY_RETRY_BASE_SECONDS": 1.0,
        "DELIVERY_RETRY_MAX_SECONDS": 60.0,
        # The most changes and bytes one pushed batch may carry (413 PayloadTooLarge above).
        "VIEW_CHANGES_MAX_RECORDS": 100_000,
        "VIEW_CHANGES_MAX_BYTES": 16 * 1024 * 1024,
        # Change-log compaction (app/view_data/compaction.py): the worker removes log
        # rows every connector of the view has delivered, this many per statement,
        # once a whole batch can go; a pass every this many seconds (0: never).
        "COMPACTION_BATCH_SIZE": 10_000,
        "COMPACTION_INTERVAL_SECONDS": 1.0,
        # Seconds an Idempotency-Key is remembered after its first request (24 h).
        "IDEMPOTENCY_RETENTION_SECONDS": 24 * 3600,
        # Error answers larger than this release their key instead of being kept.
        "IDEMPOTENCY_MAX_ERROR_BYTES": 64 * 1024,
        # Keys a tenant may hold at once (409 QuotaExceeded past it; 0: no quota).
        "IDEMPOTENCY_MAX_KEYS_PER_TENANT": 1_000_000,
        # Notification endpoints (app/notifications): the most a tenant may register
        # (409 QuotaExceeded past it; 0: no quota); seconds one attempt may take, all
        # of it (connect, send, answer); the retry backoff, doubled per failed attempt
        # up to the cap; hours after the event before a delivery is given up (failed).
        "TENANT_MAX_NOTIFICATION_ENDPOINTS": 100,
        "NOTIFICATION_TIMEOUT_SECONDS": 10.0,
        "NOTIFICATION_RETRY_BASE_SECONDS": 5.0,
        "NOTIFICATION_RETRY_MAX_SECONDS": 3600.0,
        "NOTIFICATION_RETRY_HOURS": 24,
        # The worker's poller looks for due notifications at most this often (seconds).
        "NOTIFICATION_LOOK_SECONDS": 1.0,
        # Run the worker loop in a background thread of each serving process.
        "BACKGROUND_WORKER": True,
        # Seconds a client is told to wait when the database is busy.
        "RETRY_AFTER_SECONDS": 1,
        # reset_status as Server-Sent Events (app/resets/events.py): streams one process
        # serves at once (each holds a request thread; gunicorn.conf.py sets half of its
        # threads), how often a stream reads the reset, how often a quiet one writes a
        # comment line, and how long one lasts before the client reconnects.
        "EVENT_STREAMS_PER_PROCESS": 2,
        "EVENT_STREAM_POLL_SECONDS": 1.0,
        "EVENT_STREAM_HEARTBEAT_SECONDS": 15.0,
        "EVENT_STREAM_MAX_SECONDS": 300.0,
        # GET /metrics without credentials (True), or with a read credential that sees
        # its own tenant's series (False; see app/metrics.py and the README).
        "METRICS_PUBLIC": False,
        # Credentials of this tenant see every tenant's series on /metrics (None: none do).
        "METRICS_OPERATOR_TENANT": None,
        # The most connectors, and views, one scrape lists one by one (those that need
        # attention first; an operator scrape shares it fairly among tenants). A listed
        # connector and its view cost about 1.7 KB of text with short names (up to
        # ~8 KB with 100-character ones): 500 keep a scrape under 1 MB with short
        # names (python -m bench.metrics_scale). Per-tenant totals are always all there.
        "METRICS_MAX_ROWS": 500,
        # Seconds each process keeps a scope's (a tenant's, or every tenant's)
        # database series; concurrent scrapes of one scope wait for one computation
        # (0: compute at every scrape, still once for concurrent ones).
        "METRICS_CACHE_SECONDS": 5.0,
        # Log lines as "text" or "json" (one object per line), from this level up.
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "INFO",
        # Where http sinks may connect (CIDRs, addresses, host names; "*.x" for
        # subdomains), checked on the resolved addresses at every connect: denied
        # wins; a non-empty allowed list admits only what it names. The default
        # denies link-local and cloud metadata services (see app/transports/destinations.py).
        "HTTP_SINK_ALLOWED_NETWORKS": [],
        "HTTP_SINK_DENIED_NETWORKS": list(DEFAULT_DENIED),
        # Seconds each process remembers a checked API key: a key revoked elsewhere
        # still works in another process for up to this long (0: no cache).
        "API_KEY_CACHE_SECONDS": 2.0,
        # JWT bearer tokens (see app/auth/jwt.py); off while no key is configured.
        "JWT_HS256_SECRET": None,
        "JWT_PUBLIC_KEY_FILES": [],
        "JWT_JWKS_FILE": None,
        "JWT_ISSUER": None,
        "JWT_AUDIENCE": None,
        "JWT_LEEWAY": 30,
        "JWT_TENANT_CLAIM": "tenant",
        "JWT_ROLE_CLAIM": "role",
        # The operator console's session (app/console): a signed cookie, sent to
        # /console only and never with another site's request; Secure whenever the
        # request came over TLS (or always, with SESSION_COOKIE_SECURE). Seconds
        # before a sign-in must be repeated, however the key stands.
        "SESSION_COOKIE_NAME": "console_session",
        "SESSION_COOKIE_PATH": "/console",
        "SESSION_COOKIE_SAMESITE": "Strict",
        "PERMANENT_SESSION_LIFETIME": 12 * 3600,
        # Pipelines per page of the console's list, and connectors per page of a
        # pipeline (what one page, and its one poll, loads and renders).
        "CONSOLE_PAGE_SIZE": 25,
        "API_TITLE": "Pipeline manager",
        "API_VERSION": "v0",
        "OPENAPI_VERSION": "3.0.3",
        "OPENAPI_JSON_PATH": "openapi.json",
        "OPENAPI_URL_PREFIX": "/",
    }


def load_or_create_secret_key(instance_path: str) -> str:
    """Return the instance's signing key, creating it on first start.

    The key is created with ``O_EXCL`` so that several processes starting at
    once agree on one key: the loser of the race reads the winner's file.
    """
    path = Path(instance_path) / SECRET_KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):
            key = path.read_text().strip()
            if key:
                return key
            # The creating process has not written it yet.
            import time

            time.sleep(0.01)
        raise RuntimeError(f"{path} is empty; delete it to create a new key") from None
    key = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key
