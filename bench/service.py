"""The service under measurement: the real app on a temporary SQLite file, or in a
PostgreSQL schema of its own (``--database-url``)."""

from __future__ import annotations

import importlib
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app import create_app
from app.extensions import db

PIPELINE = "bench"
VIEW = "totals"
CONNECTOR = "sink"
SINK = "bench/totals.jsonl"
NOOP_PATH = "/bench-noop"
HEALTH_PATH = "/healthz"
CHANGES_RULE = "/v0/pipelines/<pipeline_name>/views/<view_name>/changes"


def database_url(workdir: Path, postgres_url: str | None, name: str) -> str:
    """The database of one service: a SQLite file in ``workdir``, or a fresh PostgreSQL schema.

    On PostgreSQL each service of a run gets a schema of its own (``bench_<name>``,
    dropped and created again here), set as the connections' ``search_path`` in
    the URL, so that every process given the URL sees the same tables, and an
    ``application_name`` of ``pm-bench-<name>``, so that ``pg_stat_activity`` tells
    the service's server processes apart (:mod:`bench.served` counts their CPU).
    """
    if not postgres_url:
        return f"sqlite:///{workdir / f'{name}.db'}"
    schema = f"bench_{name}"
    url = sa.make_url(postgres_url)
    admin = sa.create_engine(url)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    finally:
        admin.dispose()
    url = url.update_query_dict(
        {"options": f"-csearch_path={schema}", "application_name": f"pm-bench-{name}"}
    )
    return url.render_as_string(hide_password=False)


def compaction_module() -> Any:
    """The app's change-log compaction module, or None while it has none."""
    try:
        return importlib.import_module("app.view_data.compaction")
    except ImportError:
        return None


def log_note(rows: int, appended: int, lag: int) -> str:
    """Say how the change log stands: rows kept of all appended, and the largest lag."""
    if compaction_module() is None:
        kept = "the app does not compact its log"
    else:
        kept = f"{appended - rows:,} of {appended:,} removed by the worker's compaction"
    return f"{kept}; largest connector lag {lag:,} rows"


def create_api_key(app: Flask) -> str | None:
    """Create a write key through the auth service, if the app has one; return its secret."""
    try:
        auth_service = importlib.import_module("app.auth.service")
    except ImportError:
        return None
    create_key = getattr(auth_service, "create_key", None)
    if create_key is None:
        return None
    with app.app_context():
        _record, secret = create_key(tenant="default", name="bench", role="write")
    return secret


def change_bodies(first: int, records: int, batch: int) -> list[bytes]:
    """``POST .../changes`` bodies of ``records`` inserts from id ``first``, ``batch`` per body."""
    return [
        json.dumps(
            [
                {"insert": {"id": i, "customer": f"c{i % 997}", "amount": i % 10_000 / 100}}
                for i in range(start, min(start + batch, first + records))
            ]
        ).encode()
        for start in range(first, first + records, batch)
    ]


class Service:
    """The app on a temporary instance, with a key, a running pipeline and a reset token.

    ``migrate``: make the schema with the migrations (``flask db upgrade``), as
    gunicorn's ``on_starting`` expects it when the project's ``gunicorn.conf.py``
    serves the database (:mod:`bench.served`); otherwise ``create_all``.
    """

    def __init__(
        self,
        workdir: Path,
        postgres_url: str | None = None,
        name: str = "bench",
        migrate: bool = False,
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.config: dict[str, Any] = {
            "SQLALCHEMY_DATABASE_URI": database_url(workdir, postgres_url, name),
            # Not JSON, so it survives being passed through PIPELINE_MANAGER_* variables.
            "SECRET_KEY": "bench-" + secrets.token_urlsafe(32),
            "SINK_DIR": str(workdir / f"sinks-{name}"),
            # The benchmark drives the worker itself, so its timings are its own.
            "BACKGROUND_WORKER": False,
        }
        self.app = create_app(self.config)
        # The in-app baseline: the app's hooks and error layer, no database, no auth.
        self.app.add_url_rule(NOOP_PATH, "bench_noop", lambda: {})
        with self.app.app_context():
            if migrate:
                from flask_migrate import upgrade

                logging.disable(logging.INFO)  # alembic's line per migration
                try:
                    upgrade()
                finally:
                    logging.disable(logging.NOTSET)
                # The migrations' logging config made alembic talk at INFO on stderr.
                logging.getLogger("alembic").setLevel(logging.WARNING)
            else:
                db.create_all()
        self.api_key = create_api_key(self.app)
        self.client: FlaskClient = self.app.test_client()
        if self.api_key:
            self.client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {self.api_key}"
        self.token: str | None = None

    def new_key(self, tenant: str, role: str, name: str | None = None) -> str:
        """Create an API key of ``tenant`` through the auth service; return its secret.

        Key names are unique within a tenant: without ``name``, a fresh one.
        """
        from app.auth.service import create_key

        name = name or f"bench-{role}-{secrets.token_hex(4)}"
        with self.app.app_context():
            try:
                return create_key(tenant=tenant, name=name, role=role)[1]
            finally:
                db.session.remove()

    def client_with(self, key: str) -> FlaskClient:
        """A test client that sends ``key`` (another tenant's, another role's)."""
        client = self.app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
        return client

    def call(
        self,
        method: str,
        path: str,
        expect: tuple[int, ...],
        client: FlaskClient | None = None,
        **kwargs: Any,
    ) -> TestResponse:
        """Send a request (as ``client``, by default the bench key's); raise if unexpected."""
        response = (client or self.client).open(path, method=method, **kwargs)
        if response.status_code not in expect:
            body = response.get_data(as_text=True)
            raise RuntimeError(f"{method} {path} answered {response.status_code}: {body}")
        return response

    def has_rule(self, rule: str) -> bool:
        """Tell whether the app serves a URL rule."""
        return any(r.rule == rule for r in self.app.url_map.iter_rules())

    def setup_pipeline(self) -> None:
        """Create the pipeline with a file connector, start it and issue a reset."""
        self.call("POST", "/v0/pipelines", (201,), json={"name": PIPELINE, "views": [VIEW]})
        self.call(
            "POST",
            f"/v0/pipelines/{PIPELINE}/views/{VIEW}/connectors",
            (201,),
            json={
                "name": CONNECTOR,
                "transport": {"name": "file", "config": {"path": SINK}},
            },
        )
        self.call("POST", f"/v0/pipelines/{PIPELINE}/start", (200, 202))
        self.token = self.issue_reset()

    def make_pipeline(
        self,
        name: str,
        views: list[str],
        sinks: list[tuple[str, str, str]] = (),  # type: ignore[assignment]
        client: FlaskClient | None = None,
        start: bool = True,
    ) -> None:
        """Create a pipeline with file connectors (view, connector, path) and start it."""
        self.call("POST", "/v0/pipelines", (201,), client, json={"name": name, "views": views})
        for view, connector, path in sinks:
            self.call(
                "POST",
                f"/v0/pipelines/{name}/views/{view}/connectors",
                (201,),
                client,
                json={"name": connector, "transport": {"name": "file", "config": {"path": path}}},
            )
        if start:
            self.call("POST", f"/v0/pipelines/{name}/start", (200, 202), client)

    def sink_file(self, tenant: str, path: str) -> Path:
        """Where a file connector of ``tenant`` with a relative ``path`` writes."""
        return Path(self.config["SINK_DIR"]).resolve() / tenant / path

    def issue_reset(self) -> str:
        """Issue a reset of the connector; return its token."""
        response = self.call(
            "POST", f"/v0/pipelines/{PIPELINE}/views/{VIEW}/connectors/{CONNECTOR}/reset", (202,)
        )
        return response.get_json()["token"]

    @property
    def sink_path(self) -> Path:
        """The connector's sink file, wherever the file transport keeps it."""
        from app.connectors.models import Connector
        from app.pipelines.models import Pipeline, View
        from app.transports import get_transport

        with self.app.app_context():
            try:
                connector = db.session.execute(
                    sa.select(Connector)
                    .join(View, View.id == Connector.view_id)
                    .join(Pipeline, Pipeline.id == View.pipeline_id)
                    .where(Pipeline.name == PIPELINE, Connector.name == CONNECTOR)
                ).scalar_one()
                return get_transport("file").path_of(connector)
            finally:
                db.session.remove()

    def status_path(self, token: str | None = None) -> str:
        """The reset_status URL of a token (by default the one made by ``setup_pipeline``)."""
        return f"/v0/pipelines/{PIPELINE}/reset_status?token={token or self.token}"

    def status(self, token: str) -> dict[str, Any]:
        """Return the reset_status body of a token."""
        return self.call("GET", self.status_path(token), (200,)).get_json()

    def run_worker_until_idle(self, limit: int = 1_000_000, seconds: float | None = None) -> int:
        """Run the worker's units of work until none is left (or ``seconds`` passed).

        Each round is the worker loop's: one unit of work, then the change-log
        compaction pass when one is due (if the app compacts its log). Return
        how many units ran.
        """
        from app import worker

        run_due = getattr(compaction_module(), "run_due", None)
        done = 0
        deadline = None if seconds is None else time.monotonic() + seconds
        with self.app.app_context():
            try:
                while done < limit:
                    busy = worker.run_once()
                    if run_due is not None:
                        run_due()
                    if not busy:
                        break
                    done += 1
                    if deadline is not None and time.monotonic() > deadline:
                        break
            finally:
                db.session.remove()
        return done

    def compact_log(self, seconds: float) -> int | None:
        """Run compaction passes until one removes nothing (or ``seconds`` passed).

        What an idle worker does every ``COMPACTION_INTERVAL_SECONDS``. Return
        the rows removed, or None when the app does not compact its log.
        """
        compact = getattr(compaction_module(), "compact", None)
        if compact is None:
            return None
        removed = 0
        deadline = time.monotonic() + seconds
        with self.app.app_context():
            try:
                while time.monotonic() < deadline:
                    count = compact()
                    removed += count
                    if not count:
                        break
            finally:
                db.session.remove()
        return removed

    def scalar(self, sql: str, **params: Any) -> Any:
        """Run one SQL query on the service's database; return its single value."""
        with self.app.app_context():
            try:
                return db.session.execute(sa.text(sql), params).scalar()
            finally:
                db.session.remove()

    def log_state(self) -> tuple[int, int, int]:
        """The change log: rows now (every view), rows ever appended, largest connector lag."""
        rows = self.scalar("SELECT count(*) FROM view_changes")
        appended = self.scalar("SELECT coalesce(sum(last_seq), 0) FROM view_logs")
        lag = self.scalar(
            "SELECT coalesce(max(l.last_seq - c.delivered_seq), 0)"
            " FROM connectors c JOIN view_logs l ON l.view_id = c.view_id"
        )
        return int(rows), int(appended), int(lag)

    @property
    def dialect(self) -> str:
        """The database engine's name: ``sqlite`` or ``postgresql``."""
        with self.app.app_context():
            return db.engine.dialect.name

    def close(self) -> None:
        """Release the database connections; on PostgreSQL, drop the service's schema."""
        with self.app.app_context():
            db.session.remove()
            engine = db.engine
            if engine.dialect.name == "postgresql":
                with engine.begin() as conn:
                    schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
                    conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            engine.dispose()
