"""gunicorn settings for ``make serve``; every value can be overridden on the command line."""

import json
import multiprocessing
import os
import re

from gunicorn import glogging

bind = os.environ.get("PIPELINE_MANAGER_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("PIPELINE_MANAGER_WORKERS", min(4, multiprocessing.cpu_count() * 2)))
threads = int(os.environ.get("PIPELINE_MANAGER_THREADS", 4))
worker_class = "gthread"
timeout = 60
graceful_timeout = 20
accesslog = "-"


class RedactingLogger(glogging.Logger):
    """gunicorn's logger, with secrets in query strings left out of the access log.

    A reset token travels in ``reset_status?token=...``: anyone who can read the
    log could poll that reset. Every parameter whose name ends in ``token``,
    ``key``, ``secret`` or ``password`` is logged as ``name=***``, in the request
    line (``%(r)s``), the query (``%(q)s``) and the headers (a ``Referer``).
    """

    def atoms(self, resp, req, environ, request_time):
        """gunicorn's atoms with secret query values replaced."""
        atoms = super().atoms(resp, req, environ, request_time)
        for name, value in atoms.items():
            if isinstance(value, str) and "=" in value:
                atoms[name] = SECRET_QUERY_VALUE.sub(r"\1***", value)
        return atoms


SECRET_QUERY_VALUE = re.compile(
    r"((?:^|[?&;])[^=&;\s\"]*(?:token|key|secret|password)=)[^&;\s\"]*", re.IGNORECASE
)
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

    from app.errors import _HTTP_ERROR_CODES

    message = f"{reason}: {mesg}" if mesg else reason
    error_code = _HTTP_ERROR_CODES.get(status_int, "HttpError")
    body = json.dumps({"message": message, "error_code": error_code, "details": {}}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nCache-Control: no-store\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


def on_starting(server):
    """Bring the database schema up to date once, before any worker starts.

    Also swaps gunicorn's HTML error page for the service's JSON error body;
    the workers, forked later, inherit the swap.
    """
    from flask_migrate import upgrade
    from gunicorn import util

    from app import create_app

    util.write_error = _write_json_error
    app = create_app()
    with app.app_context():
        upgrade()


def post_worker_init(worker):
    """Start the worker process's background worker thread (resets, delivery)."""
    from app.worker import start_background

    start_background(worker.wsgi)
