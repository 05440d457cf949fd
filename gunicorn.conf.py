"""gunicorn settings for ``make serve``; every value can be overridden on the command line.

gunicorn runs the request workers (``workers`` processes of ``threads`` threads)
and, beside them, ``PIPELINE_MANAGER_DELIVERY_PROCESSES`` delivery processes
(default 1) as gunicorn dirty workers (:mod:`app.serving`): started, restarted
when they die, and stopped with the server. Requests and delivery never share
a process. With 0 delivery processes, each request worker runs the worker in
a background thread instead, as before.
"""

import glob
import json
import multiprocessing
import os
import re
import shutil
import signal
import tempfile
import time

from gunicorn import glogging

bind = os.environ.get("PIPELINE_MANAGER_BIND", "127.0.0.1:8000")
# A name per server (its address): gunicorn names the dirty arbiter's pid file after it,
# and a starting master kills the arbiter that file names as an orphan, so two servers on
# one host with one name stopped each other's delivery process. The control socket
# (gunicornc) is one per server for the same reason.
proc_name = f"pipeline-manager-{bind}"
control_socket = os.path.join(
    os.environ.get("XDG_RUNTIME_DIR") or os.path.join(os.path.expanduser("~"), ".gunicorn"),
    f"{proc_name.replace('/', '_')}.ctl",
)
workers = int(os.environ.get("PIPELINE_MANAGER_WORKERS", min(4, multiprocessing.cpu_count() * 2)))
threads = int(os.environ.get("PIPELINE_MANAGER_THREADS", 4))
worker_class = "gthread"
# A reset progress stream holds a thread while it lasts: at most half of a worker's
# threads stream, the others answer requests (beyond, 503 with Retry-After).
os.environ.setdefault("PIPELINE_MANAGER_EVENT_STREAMS_PER_PROCESS", str(max(1, threads // 2)))
timeout = 60
graceful_timeout = 20
accesslog = "-"

delivery_processes = int(os.environ.get("PIPELINE_MANAGER_DELIVERY_PROCESSES", 1))
if delivery_processes > 0:
    dirty_apps = ["app.serving:DeliveryApp"]
    dirty_workers = delivery_processes
    # Within the master's own graceful timeout, so their leases are given back.
    dirty_graceful_timeout = graceful_timeout - 2
    # Every process this server starts reads these: the request workers then run
    # no worker of their own, and /readyz checks the delivery processes' heartbeats.
    os.environ["PIPELINE_MANAGER_DELIVERY_PROCESSES"] = str(delivery_processes)
    os.environ["PIPELINE_MANAGER_BACKGROUND_WORKER"] = "false"


SECRET_QUERY_VALUE = re.compile(
    r"((?:^|[?&;])[^=&;\s\"]*(?:token|key|secret|password)=)[^&;\s\"]*", re.IGNORECASE
)


class RedactedAtoms(glogging.SafeAtoms):
    """gunicorn's access-line atoms, each with secret query values replaced as it is read.

    The text format reads a handful of the atoms (the request line, the
    referer...); redacting only those spares every request a pass over all
    of them (its headers included).
    """

    def __getitem__(self, name):
        value = super().__getitem__(name)
        if isinstance(value, str) and "=" in value:
            return SECRET_QUERY_VALUE.sub(r"\1***", value)
        return value


class RedactingLogger(glogging.Logger):
    """gunicorn's logger in the service's ``LOG_FORMAT``, with secrets left out of the access log.

    A reset token travels in ``reset_status?token=...``: anyone who can read the
    log could poll that reset. Every parameter whose name ends in ``token``,
    ``key``, ``secret`` or ``password`` is logged as ``name=***``, in the request
    line (``%(r)s``), the query (``%(q)s``) and the headers (a ``Referer``), in
    both formats.

    gunicorn's error log is also where the application's log lines go (the root
    logger's handlers, see :mod:`app.logs`), in the same format. With
    ``LOG_FORMAT=json`` an access line is one JSON object: the request line,
    status, duration, request id, tenant, pipeline and route template.
    """

    log_format = "text"
    atoms_wrapper_class = RedactedAtoms

    def setup(self, cfg):
        """gunicorn's handlers, then the service's format on them (again after a reload)."""
        super().setup(cfg)
        wanted = os.environ.get("PIPELINE_MANAGER_LOG_FORMAT", self.log_format)
        self.use_format(wanted if wanted in ("text", "json") else "text")

    def use_format(self, log_format, level=None):
        """Write error, application and (for json) access lines in ``log_format``."""
        from app import logs

        self.log_format = log_format
        logs.install(list(self.error_log.handlers), log_format, level or self.loglevel)
        access = logs.formatter("json") if log_format == "json" else None
        for handler in self.access_log.handlers:
            handler.setFormatter(access or glogging.logging.Formatter(self.access_fmt))

    def access(self, resp, req, environ, request_time):
        """The access line: gunicorn's text, or one JSON object with the request's context."""
        if self.log_format != "json":
            return super().access(resp, req, environ, request_time)
        if not self.access_log_enabled:
            return None
        from app.logs import access_context

        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        method = environ.get("REQUEST_METHOD")
        uri = SECRET_QUERY_VALUE.sub(r"\1***", environ.get("RAW_URI", ""))
        fields = {
            **access_context(environ),
            "method": method,
            "path": uri,
            "status": int(status),
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "bytes": getattr(resp, "sent", None),
            "remote_addr": environ.get("REMOTE_ADDR"),
            "user_agent": environ.get("HTTP_USER_AGENT"),
        }
        protocol = environ.get("SERVER_PROTOCOL")
        self.access_log.info("%s %s %s %s", method, uri, protocol, status, extra=fields)
        return None


logger_class = RedactingLogger
# gunicorn answers longer request lines itself (414). 8190 is its ceiling: a
# larger value is silently taken as 8190, and 0 means no bound at all. The
# service answers 414 UriTooLong itself above 8000 bytes of URL
# (app.extensions.MAX_URL_BYTES), and _write_json_error below gives gunicorn's
# own answers the service's error body.
limit_request_line = 8190


def _write_json_error(sock, status_int, reason, mesg):
    """Write gunicorn's own error answers (bad request line, 414, 431...) as the error body."""
    from gunicorn import util

    from app.errors import _HTTP_ERROR_CODES, HTTP_ERROR_FALLBACK

    message = f"{reason}: {mesg}" if mesg else reason
    error_code = _HTTP_ERROR_CODES.get(status_int, HTTP_ERROR_FALLBACK)
    body = json.dumps({"message": message, "error_code": error_code, "details": {}}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nCache-Control: no-store\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


def _fresh_metrics_dir():
    """Give this server start an empty ``PROMETHEUS_MULTIPROC_DIR`` (see app/metrics.py).

    Each worker writes its request samples to files there; a scrape adds them up.
    The operator's directory is emptied; without one, a temporary directory is
    made and removed when gunicorn exits. Runs before anything imports
    prometheus_client, which picks its multiprocess mode from the variable.
    """
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
        return None
    path = tempfile.mkdtemp(prefix="pipeline-manager-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


_made_metrics_dir = None


def on_starting(server):
    """Bring the database schema up to date once, before any worker starts.

    Also prepares the metrics directory, applies the app's ``LOG_FORMAT`` and
    ``LOG_LEVEL`` to gunicorn's logs, and swaps gunicorn's HTML error page for
    the service's JSON error body; the workers, forked later, inherit all three.
    """
    global _made_metrics_dir
    from flask_migrate import upgrade
    from gunicorn import util

    _made_metrics_dir = _fresh_metrics_dir()

    from app import create_app

    util.write_error = _write_json_error
    app = create_app()
    with app.app_context():
        upgrade()
        from app.extensions import db

        # No connection of the master's outlives the fork into the workers.
        db.engine.dispose()
    # After the upgrade: the migrations' logging config replaced the root handlers.
    server.log.use_format(app.config["LOG_FORMAT"], app.config["LOG_LEVEL"])


def post_worker_init(worker):
    """Freeze what the app loaded; start the process's background worker thread, if it runs one.

    On SIGTERM that thread is told to stop at once, so it winds down (finishing
    its claim, giving its leases back) while gunicorn lets in-flight requests
    finish; ``worker_exit`` then waits for it within ``graceful_timeout``.
    """
    from app.serving import freeze_loaded_objects
    from app.worker import start_background, stop_background

    freeze_loaded_objects()
    start_background(worker.wsgi)
    gunicorn_exit = signal.getsignal(signal.SIGTERM)

    def exit_gracefully(signum, frame):
        # The arbiter kills the worker graceful_timeout after its own SIGTERM.
        worker.stop_deadline = time.monotonic() + worker.cfg.graceful_timeout - 1
        stop_background()
        if callable(gunicorn_exit):
            gunicorn_exit(signum, frame)

    signal.signal(signal.SIGTERM, exit_gracefully)
    signal.siginterrupt(signal.SIGTERM, False)


def worker_int(worker):
    """SIGINT or SIGQUIT (a quick stop): tell the background worker to stop, without waiting."""
    from app.worker import stop_background

    stop_background()


def worker_exit(server, worker):
    """As a worker process ends: let its background worker finish and give its leases back.

    Waits until the deadline SIGTERM set (or ``graceful_timeout``); a thread
    still busy then dies with the process, and its leases run out as after a
    crash.
    """
    from app.worker import stop_background

    deadline = getattr(worker, "stop_deadline", time.monotonic() + worker.cfg.graceful_timeout)
    if not stop_background(timeout=max(0.0, deadline - time.monotonic())):
        server.log.warning("background worker still busy at exit; its leases will expire")


def child_exit(server, worker):
    """Drop a dead worker's live gauges from the metrics directory (its counts stay)."""
    from app.metrics import mark_process_dead

    mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics directory this server made."""
    if _made_metrics_dir:
        shutil.rmtree(_made_metrics_dir, ignore_errors=True)
