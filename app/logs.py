"""Log lines: plain text or one JSON object per line (``LOG_FORMAT``), with the request's context.

Every line logged while a request is served carries its request id (the
caller's ``X-Request-Id`` or a new one, see :func:`app.errors.request_id`),
tenant, pipeline and route template. gunicorn's access line, written once the
answer is sent, adds status and duration (``gunicorn.conf.py``).

The standard :mod:`logging` module throughout: one handler on the root logger
with a formatter of each kind and a filter that adds the request's fields.
Under gunicorn that handler is gunicorn's own error log (``--error-logfile``);
elsewhere (``pipeline-manager worker``, ``pipeline-manager run``, commands) it writes to stderr.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

from flask import Flask, Response, g, has_request_context, request

from app.errors import request_id

# Fields a line may carry besides time, level, logger and message, in output order.
CONTEXT_FIELDS = ("request_id", "tenant", "pipeline", "route")
ACCESS_FIELDS = ("method", "path", "status", "duration_ms", "bytes", "remote_addr", "user_agent")
# Where a request's tenant, pipeline and route wait for the access line (WSGI environ).
ACCESS_CONTEXT_KEY = "pipeline_manager.log_context"
FORMATS = ("text", "json")
_OURS = "_pipeline_manager_handler"


class RequestContextFilter(logging.Filter):
    """Adds the current request's id, tenant, pipeline and route to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Fill in the request fields (when a request is being served); never drops a record."""
        if has_request_context() and not hasattr(record, "request_id"):
            record.request_id = request_id()
            principal = g.get("principal")
            record.tenant = principal.tenant if principal is not None else None
            record.pipeline = (request.view_args or {}).get("pipeline_name")
            rule = request.url_rule
            record.route = rule.rule if rule is not None else None
        return True


def _utc_time(record: logging.LogRecord) -> str:
    return (
        dt.datetime.fromtimestamp(record.created, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then whichever fields are known."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as a line of JSON (a traceback goes in ``exception``)."""
        entry: dict[str, Any] = {
            "time": _utc_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in (*CONTEXT_FIELDS, *ACCESS_FIELDS):
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``time [pid] LEVEL logger: message``, then the request's fields as ``name=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as gunicorn-like text; request fields follow the message."""
        line = super().format(record)
        context = " ".join(
            f"{name}={value}"
            for name in CONTEXT_FIELDS
            if (value := record.__dict__.get(name)) is not None
        )
        if not context:
            return line
        head, newline, rest = line.partition("\n")
        return f"{head} [{context}]{newline}{rest}"


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``LOG_FORMAT`` (``text`` or ``json``)."""
    if log_format not in FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(FORMATS)}, not {log_format!r}")
    return JsonFormatter() if log_format == "json" else TextFormatter()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is logged (it may be swapped)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        """The current stderr."""
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def install(handlers: list[logging.Handler], log_format: str, level: str | int) -> None:
    """Make ``handlers`` the root logger's only ones, formatted as ``log_format``, with the filter.

    Whatever was there goes first: an earlier call's handlers (a reload, a
    second app in one process) and a migration's logging config, which would
    repeat every line in its own format.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter(log_format))
        if not any(isinstance(f, RequestContextFilter) for f in handler.filters):
            handler.addFilter(RequestContextFilter())
        setattr(handler, _OURS, True)
        root.addHandler(handler)
    root.setLevel(level)
    # The schema check (app.database) opens a migration context per engine and
    # thread; alembic's INFO lines about it tell an operator nothing.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)


def installed() -> bool:
    """Whether the root logger already has handlers of ours (gunicorn's, or a previous app's)."""
    return any(getattr(handler, _OURS, False) for handler in logging.getLogger().handlers)


def _keep_access_context(response: Response) -> Response:
    """Leave the tenant, pipeline and route in the environ for gunicorn's JSON access line."""
    principal = g.get("principal")
    rule = request.url_rule
    request.environ[ACCESS_CONTEXT_KEY] = (
        principal.tenant if principal is not None else None,
        (request.view_args or {}).get("pipeline_name"),
        rule.rule if rule is not None else None,
    )
    return response


def access_context(environ: dict) -> dict[str, Any]:
    """The request id, tenant, pipeline and route of a served request, for its access line."""
    from app.errors import _REQUEST_ID_KEY

    tenant, pipeline, route = environ.get(ACCESS_CONTEXT_KEY) or (None, None, None)
    return {
        "request_id": environ.get(_REQUEST_ID_KEY),
        "tenant": tenant,
        "pipeline": pipeline,
        "route": route,
    }


def init_app(app: Flask) -> None:
    """Format the process's log lines as ``LOG_FORMAT`` says (not under tests: pytest's own).

    Under gunicorn the root logger already writes to gunicorn's error log (see
    ``gunicorn.conf.py``), and only the level is set here.
    """
    log_format = app.config["LOG_FORMAT"]
    formatter(log_format)  # a wrong value stops the start, with the choices
    if log_format == "json":
        app.after_request(_keep_access_context)
    if app.testing:
        return
    if installed():
        logging.getLogger().setLevel(app.config["LOG_LEVEL"])
    else:
        install([_StderrHandler()], log_format, app.config["LOG_LEVEL"])
