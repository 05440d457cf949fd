"""The worker finds work by the due index, tenants in turn, and is woken rather than polling.

- an idle poll runs the same statements, reading the same rows, whatever the
  number of idle connectors;
- tenants take turns, and none holds every thread of a process;
- a push is delivered through the wake-up alone, with the safety-net poll at
  60 s: in the pushing process, and in a ``flask worker`` process of its own
  (SQLite's ``data_version``; PostgreSQL's ``NOTIFY`` in ``make test-postgres``).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from app import prepared
from app.connectors.models import Connector
from app.delivery import due, leases
from app.delivery.leases import LeaseLost
from app.delivery.models import WorkerProcess
from app.extensions import db
from app.pipelines import service as pipelines
from app.pipelines.models import Pipeline, View
from app.view_data.models import ViewLog
from app.worker import Dispatcher
from tests.conftest import sqlite_only
from tests.faults import (
    FLASK,
    ROOT,
    kill,
    pause_when,
    sink_lines,
    start_worker,
    wait_for,
    worker_env,
)

SAFETY_NET = 60.0


def _sink(app: Flask, tenant: str, path: str) -> Path:
    return Path(app.config["SINK_DIR"]) / tenant / path


def add_idle_connectors(app: Flask, count: int, tenant: str = "idle") -> None:
    """``count`` running pipelines with one view and one in-sync file connector each, idle.

    Built with bulk inserts (the API would take minutes for thousands).
    """
    now = dt.datetime.now(dt.UTC)
    with app.app_context():
        start = db.session.execute(sa.select(sa.func.count()).select_from(Pipeline)).scalar()
        ids = [uuid.uuid4() for _ in range(count)]
        db.session.execute(
            sa.insert(Pipeline),
            [
                {
                    "id": pid,
                    "tenant": tenant,
                    "name": f"idle-{start + n}",
                    "status": "running",
                    "incarnation": 1,
                    "created_at": now,
                    "status_since": now,
                }
                for n, pid in enumerate(ids)
            ],
        )
        db.session.execute(
            sa.insert(View), [{"pipeline_id": pid, "name": "v", "position": 0} for pid in ids]
        )
        view_ids = db.session.execute(sa.select(View.id).where(View.pipeline_id.in_(ids))).scalars()
        rows = list(view_ids)
        db.session.execute(
            sa.insert(Connector),
            [
                {
                    "view_id": view_id,
                    "tenant": tenant,
                    "name": "sink",
                    "transport": "file",
                    "config": {"path": f"idle/{view_id}.jsonl"},
                    "sink_key": f"{tenant}/idle/{view_id}.jsonl",
                    "uid": uuid.uuid4(),
                    "created_at": now,
                }
                for view_id in rows
            ],
        )
        db.session.execute(sa.insert(ViewLog), [{"view_id": v, "last_seq": 0} for v in rows])
        db.session.commit()
        db.session.remove()


@contextmanager
def measured(app: Flask) -> Iterator[dict[str, Any]]:
    """Count the statements run inside the block, and the work the database did for them.

    The work: on SQLite, virtual-machine steps (a progress handler counts them,
    so a scan shows as steps per row); on PostgreSQL, the rows every plan node
    produced (``EXPLAIN ANALYZE`` of each statement, run again after it).
    """
    seen: dict[str, Any] = {"statements": [], "work": 0}
    engine = db.engine

    def before(conn, cursor, statement, parameters, context, executemany):
        seen["statements"].append(statement)
        if conn.dialect.name == "sqlite":
            raw = conn.connection.driver_connection

            def step() -> int:
                seen["work"] += 1
                return 0

            raw.set_progress_handler(step, 1)

    def after(conn, cursor, statement, parameters, context, executemany):
        if conn.dialect.name == "sqlite":
            conn.connection.driver_connection.set_progress_handler(None, 1)
        elif statement.lstrip().upper().startswith(("SELECT", "WITH")):
            plan = cursor.connection.execute(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters
            ).fetchone()[0]
            seen["work"] += _rows_of(plan[0]["Plan"])

    sa.event.listen(engine, "before_cursor_execute", before)
    sa.event.listen(engine, "after_cursor_execute", after)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
        sa.event.remove(engine, "after_cursor_execute", after)


def _rows_of(node: dict) -> int:
    rows = int(node.get("Actual Rows", 0)) * int(node.get("Actual Loops", 1))
    return rows + sum(_rows_of(child) for child in node.get("Plans", []))


def idle_poll(app: Flask) -> dict[str, Any]:
    """One round of a dispatcher's poller on an idle database; what it cost."""
    dispatcher = Dispatcher(app, threading.Event(), threads=2)
    with app.app_context():
        db.session.remove()
        with measured(app) as seen:
            wait = dispatcher.poll()
        db.session.remove()
    assert wait > 1  # nothing to do: it sleeps until woken (or the safety net)
    return seen


def poll_and_run(app: Flask, dispatcher: Dispatcher) -> None:
    """One poller round, then every job it handed out, run here and given back."""
    with app.app_context():
        dispatcher.poll()
        db.session.remove()
    for slot in dispatcher.slots:
        while not slot.inbox.empty():
            job = slot.inbox.get()
            with app.app_context():
                dispatcher._do(slot, job)
                db.session.remove()
            dispatcher._give_back(slot, job)


def test_an_idle_poll_costs_the_same_with_50_or_3000_idle_connectors(app):
    add_idle_connectors(app, 50)
    small = idle_poll(app)
    add_idle_connectors(app, 2950)
    large = idle_poll(app)
    assert len(small["statements"]) == len(large["statements"]) <= 3
    assert large["work"] <= small["work"] * 1.1 + 5, (small["work"], large["work"])


def test_an_idle_poll_reads_nothing_of_connectors_that_were_served(app, api, client):
    """Connectors that delivered everything leave the index: polls do not read them again."""
    api.create_pipeline()
    for n in range(20):
        api.add_file_connector(name=f"s{n}", path=f"out/{n}.jsonl")
    api.action("orders", "start")
    assert (
        client.post(
            "/v0/pipelines/orders/views/totals/changes", json=[{"insert": {"a": 1}}]
        ).status_code
        == 200
    )
    with app.app_context():
        assert len(due.in_turn(100)) == 20
    dispatcher = Dispatcher(app, threading.Event(), threads=1)
    for _ in range(40):  # one thread, run by hand: take a claim, do it, give it back
        poll_and_run(app, dispatcher)
    with app.app_context():
        assert due.in_turn(100) == []
        left = db.session.execute(
            sa.select(sa.func.count()).where(Connector.due_at.is_not(None))
        ).scalar()
        db.session.remove()
    assert left == 0
    for n in range(20):
        assert len(sink_lines(_sink(app, "default", f"out/{n}.jsonl"))) == 1


# -- the path of one push -----------------------------------------------------------------------


@contextmanager
def counted() -> Iterator[dict[str, Any]]:
    """Count the statements run inside the block, and the transactions the server opened.

    Statements: SQLAlchemy's, and those ``app.prepared`` runs on DB-API cursors.
    Transactions: on PostgreSQL, the session transactions begun out of
    autocommit (each one a ``BEGIN`` and a ``COMMIT`` or ``ROLLBACK`` round
    trip around its statements); SQLite opens its own for writes, in process.
    Also the connections given back to the pool still in autocommit (none may be).
    """
    seen: dict[str, Any] = {"statements": [], "transactions": 0, "back_in_autocommit": 0}

    def before(conn, cursor, statement, parameters, context, executemany):
        seen["statements"].append(statement)

    def prepared_before(statement: str, _parameters: Any) -> None:
        seen["statements"].append(statement)

    def begun(session, transaction, connection):
        raw = connection.connection.dbapi_connection
        if connection.dialect.name == "postgresql" and not raw.autocommit:
            seen["transactions"] += 1

    engine = db.engine

    def checked_in(dbapi_connection, _record):
        if engine.dialect.name == "postgresql" and dbapi_connection.autocommit:
            seen["back_in_autocommit"] += 1

    sa.event.listen(engine, "before_cursor_execute", before)
    sa.event.listen(engine, "checkin", checked_in)
    sa.event.listen(Session, "after_begin", begun)
    prepared.statement_listeners.append(prepared_before)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
        sa.event.remove(engine, "checkin", checked_in)
        sa.event.remove(Session, "after_begin", begun)
        prepared.statement_listeners.remove(prepared_before)


def _kinds(statements: list[str]) -> list[str]:
    return [
        "read" if s.lstrip().upper().startswith(("SELECT", "WITH")) else "write" for s in statements
    ]


def test_a_push_reaches_its_sink_in_eight_statements_none_in_a_transaction(
    app, running_pipeline, client
):
    """From a push to its line in a file sink: the poller reads three times (tenants,
    candidates, their work) and takes the lease; the delivery thread reads the
    connector, checks its lease after opening the file, reads the log, writes the
    line, then records it and gives the lease back in one write. On PostgreSQL each
    statement is a transaction by itself, one round trip (no BEGIN, COMMIT or
    ROLLBACK of its own): ``make bench``, section c (push -> line in the file sink).
    """
    app.config["COMPACTION_INTERVAL_SECONDS"] = 0  # no compaction look in the round
    # The setup's round looks for due notifications; the measured one, soon after, does not.
    app.config["NOTIFICATION_LOOK_SECONDS"] = 3600
    dispatcher = Dispatcher(app, threading.Event(), threads=2)
    changes = "/v0/pipelines/orders/views/totals/changes"
    # The first push creates the view's log: the next one is the path measured.
    assert client.post(changes, json=[{"insert": {"n": 0}}]).status_code == 200
    poll_and_run(app, dispatcher)
    assert client.post(changes, json=[{"insert": {"n": 1}}]).status_code == 200

    with app.app_context(), counted() as poll:
        dispatcher.poll()
        db.session.remove()
    [(slot, job)] = [
        (slot, slot.inbox.get()) for slot in dispatcher.slots if not slot.inbox.empty()
    ]
    with app.app_context(), counted() as delivery:
        dispatcher._do(slot, job)
        db.session.remove()
    dispatcher._give_back(slot, job)

    assert [
        line["insert"]["n"] for line in sink_lines(_sink(app, "default", "out/totals.jsonl"))
    ] == [0, 1]
    assert _kinds(poll["statements"]) == ["read", "read", "read", "write"], poll["statements"]
    assert _kinds(delivery["statements"]) == ["read", "read", "read", "write"], delivery[
        "statements"
    ]
    assert poll["transactions"] == delivery["transactions"] == 0
    assert poll["back_in_autocommit"] == delivery["back_in_autocommit"] == 0
    with app.app_context():
        row = db.session.execute(
            sa.select(Connector.delivered_seq, Connector.lease_owner, Connector.due_at)
        ).one()
        db.session.remove()
    assert tuple(row) == (2, None, None)  # delivered, given back, out of the due index


def test_a_lease_check_sees_a_takeover_committed_before_it(app, running_pipeline):
    """``leases.check`` (a read, in autocommit on PostgreSQL) refuses a lease another
    holder took over in a commit made before it, on another connection; inside an
    open transaction, whose snapshot may be older, it renews the lease and commits."""
    with app.app_context():
        cid = db.session.execute(sa.select(Connector.id)).scalar_one()
        first = leases.take(cid, "first", 30.0)
        db.session.commit()
        assert first is not None
        leases.check(first)
        assert not db.session().in_transaction()
        # Another process's takeover of a lease run out, committed on a connection of its own.
        with db.engine.begin() as other:
            other.execute(
                sa.update(Connector)
                .where(Connector.id == cid)
                .values(lease_expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
            )
        db.session.remove()
        second = leases.take(cid, "second", 30.0)
        db.session.commit()
        assert second is not None and second.epoch == first.epoch + 1
        with pytest.raises(LeaseLost):
            leases.check(first)
        leases.check(second)

        def expiry() -> dt.datetime:
            return db.session.execute(
                sa.select(Connector.lease_expires_at).where(Connector.id == cid)
            ).scalar_one()

        before = expiry()  # the read leaves a transaction open
        time.sleep(0.01)
        leases.check(second)
        assert not db.session().in_transaction()
        assert expiry() > before  # renewed and committed
        db.session.remove()


# -- tenants in turn ----------------------------------------------------------------------------


def _tenant_with_pushes(make_key, app, tenant: str, connectors: int) -> Any:
    """A tenant's running pipeline with ``connectors`` file connectors on one view, pushed to."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = make_key(tenant, "admin")["Authorization"]
    from tests.conftest import Api

    api = Api(client)
    api.create_pipeline()
    for n in range(connectors):
        api.add_file_connector(name=f"s{n}", path=f"out/{n}.jsonl")
    api.action("orders", "start")
    r = client.post("/v0/pipelines/orders/views/totals/changes", json=[{"insert": {"t": tenant}}])
    assert r.status_code == 200, r.get_json()
    return client


def handed(dispatcher: Dispatcher) -> list[str]:
    """The tenants of the jobs handed to the dispatcher's threads (not started: they wait)."""
    tenants = []
    for slot in dispatcher.slots:
        while not slot.inbox.empty():
            tenants.append(slot.inbox.get().tenant)
    return tenants


def test_a_tenant_with_a_backlog_waits_its_turn_behind_nobody(app, make_key):
    _tenant_with_pushes(make_key, app, "big", 40)
    time.sleep(0.01)  # the small tenant's work is newer than all of the big one's
    _tenant_with_pushes(make_key, app, "small", 1)
    dispatcher = Dispatcher(app, threading.Event(), threads=2)
    dispatcher.tenant_cap = 2
    with app.app_context():
        dispatcher.poll()
        db.session.remove()
    assert sorted(handed(dispatcher)) == ["big", "small"]


def test_one_tenant_never_holds_every_thread_of_a_process(app, make_key):
    _tenant_with_pushes(make_key, app, "big", 10)
    dispatcher = Dispatcher(app, threading.Event(), threads=4)
    assert dispatcher.tenant_cap == 3  # the default: all threads but one
    with app.app_context():
        dispatcher.poll()
        db.session.remove()
    assert dispatcher._has_free()
    # Another tenant's work, arriving later, finds the thread left free.
    _tenant_with_pushes(make_key, app, "small", 1)
    with app.app_context():
        dispatcher.poll()
        db.session.remove()
    assert sorted(handed(dispatcher)) == ["big", "big", "big", "small"]


def test_within_a_tenant_work_is_taken_oldest_first(app, make_key):
    client = _tenant_with_pushes(make_key, app, "t", 3)
    with app.app_context():
        first = due.candidates("t", 10)
        db.session.remove()
    assert len(first) == 3
    # A new connector's work (started after the others were due) comes last.
    r = client.post("/v0/pipelines", json={"name": "later", "views": ["v"]})
    assert r.status_code == 201
    transport = {"name": "file", "config": {"path": "later.jsonl"}}
    r = client.post(
        "/v0/pipelines/later/views/v/connectors", json={"name": "c", "transport": transport}
    )
    assert r.status_code == 201
    assert client.post("/v0/pipelines/later/start").status_code == 200
    assert (
        client.post("/v0/pipelines/later/views/v/changes", json=[{"insert": {}}]).status_code == 200
    )
    with app.app_context():
        order = due.candidates("t", 10)
        db.session.remove()
    assert order[:3] == first and len(order) == 4


# -- woken, not polled ---------------------------------------------------------------------------


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """The safety-net poll far away: only a wake-up can deliver within the tests' waits."""
    return {**app_config, "WORKER_POLL_INTERVAL": SAFETY_NET, "WORKER_LEASE_SECONDS": 10}


def _pushed_and_delivered(app: Flask, client, n: int) -> float:
    """Push one record; return the seconds until it is in the file sink."""
    before = len(sink_lines(_sink(app, "default", "out/totals.jsonl")))
    started = time.monotonic()
    r = client.post("/v0/pipelines/orders/views/totals/changes", json=[{"insert": {"n": n}}])
    assert r.status_code == 200, r.get_json()
    wait_for(
        lambda: len(sink_lines(_sink(app, "default", "out/totals.jsonl"))) > before,
        timeout=SAFETY_NET / 4,
        what="the push to reach the sink",
    )
    return time.monotonic() - started


def test_a_push_wakes_the_worker_of_its_own_process(app, running_pipeline, client):
    stop = threading.Event()
    dispatcher = Dispatcher(app, stop, threads=2)
    thread = threading.Thread(target=dispatcher.run, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)  # the worker is idle, asleep until woken
        took = [_pushed_and_delivered(app, client, n) for n in range(5)]
    finally:
        stop.set()
        dispatcher.doorbell.ring()
        thread.join(timeout=15)
    assert not thread.is_alive()
    assert max(took) < 5, took


def test_a_push_wakes_a_worker_in_another_process(
    app, app_config, running_pipeline, client, tmp_path
):
    settings = {k: v for k, v in app_config.items() if k != "TESTING"}
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        # Running and asleep: its heartbeat is written.
        def started() -> bool:
            with app.app_context():
                found = db.session.execute(sa.select(sa.func.count(WorkerProcess.id))).scalar()
                db.session.remove()
            return bool(found)

        wait_for(started, timeout=30, what="the worker to start")
        time.sleep(0.3)
        took = [_pushed_and_delivered(app, client, n) for n in range(5)]
    finally:
        kill(worker)
    assert max(took) < 5, (took, (tmp_path / "worker.log").read_text()[-2000:])


# -- a clock that runs fast --------------------------------------------------------------------

LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))), None)


@sqlite_only
@pytest.mark.skipif(
    LIBFAKETIME is None and not os.environ.get("CI"), reason="needs libfaketime (apt faketime)"
)
def test_a_worker_an_hour_fast_leaves_nothing_stuck_when_it_dies(
    app, app_config, running_pipeline, client, tmp_path
):
    """On SQLite each process's clock is the database's: a worker an hour fast writes leases
    ending an hour ahead. Killed holding one, it must not keep the connector for that hour:
    a lease ending further ahead than a lease can counts as run out, and the log says why."""
    assert LIBFAKETIME is not None, "CI installs faketime"
    settings = {
        **{k: v for k, v in app_config.items() if k != "TESTING"},
        "WORKER_LEASE_SECONDS": 3,
        "DELIVERY_BATCH_SIZE": 1,
        "DELIVERY_CONCURRENCY": 1,
    }
    fast_env = {
        **worker_env(settings),
        # The preload form: the worker is this process's child, so signals reach it.
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME": "+1h",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    changes = "/v0/pipelines/orders/views/totals/changes"
    for start in range(0, 1500, 500):
        batch = [{"insert": {"id": i}} for i in range(start, start + 500)]
        assert client.post(changes, json=batch).status_code == 200
    log = open(tmp_path / "fast.log", "ab")  # noqa: SIM115 (closed below)
    fast = subprocess.Popen(
        [FLASK, "--app", "wsgi", "worker"], cwd=ROOT, env=fast_env, stdout=log, stderr=log
    )
    try:

        def lease_ahead() -> float:
            with app.app_context():
                row = db.session.execute(
                    sa.select(Connector.lease_owner, Connector.lease_expires_at)
                ).one()
                db.session.remove()
            owner, until = row
            if owner is None or until is None:
                return 0.0
            return (until - dt.datetime.now(dt.UTC)).total_seconds()

        sink = _sink(app, "default", "out/totals.jsonl")
        wait_for(lambda: sink_lines(sink), timeout=30, what="the fast worker to deliver")
        # Killed while it holds the lease, which ends an hour ahead.
        pause_when(fast, lambda: lease_ahead() > 3000)
        kill(fast)
    finally:
        kill(fast)
        log.close()
    heir = start_worker(settings, tmp_path / "heir.log")
    try:
        sink = _sink(app, "default", "out/totals.jsonl")
        wait_for(lambda: len(sink_lines(sink)) == 1500, timeout=60, what="the heir to deliver")
    finally:
        kill(heir)
    assert sorted(line["insert"]["id"] for line in sink_lines(sink)) == list(range(1500))
    assert "clock runs fast" in (tmp_path / "heir.log").read_text()


def test_marks_and_settles_of_many_connectors_never_deadlock(app, running_pipeline):
    """Every write of several connectors' rows locks them in id order (app/delivery/due.py).

    A pipeline's resume marks all its connectors in one statement while the
    poller settles a batch of them in one transaction. On PostgreSQL the two
    took row locks in different orders and deadlocked (seen in ``make
    bench-scale``: the resume answered 503). Here two settlers with their
    batches in random orders run beside a resume's mark and a push's, for a
    few seconds, and restarts (each ends the incarnation's resets and marks
    the connectors again): no statement may fail.
    """
    with app.app_context():
        view = db.session.execute(sa.select(View)).scalar_one()
        now = dt.datetime.now(dt.UTC)
        db.session.execute(
            sa.insert(Connector),
            [
                {
                    "view_id": view.id,
                    "tenant": "default",
                    "name": f"more{n}",
                    "transport": "file",
                    "config": {"path": f"more/{n}.jsonl"},
                    "sink_key": f"default/more/{n}.jsonl",
                    "uid": uuid.uuid4(),
                    "created_at": now,
                }
                for n in range(199)
            ],
        )
        db.session.commit()
        pipeline_id, view_id = view.pipeline_id, view.id
        db.session.remove()
    stop = time.monotonic() + 4.0
    failures: list[str] = []
    rounds = {"settle": 0, "mark": 0, "restart": 0}
    rng = random.Random(7)

    def repeat(name: str, step: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            with app.app_context():
                while time.monotonic() < stop and not failures:
                    try:
                        step()
                    except sa.exc.DBAPIError as exc:
                        failures.append(f"{name}: {exc.orig}")
                    rounds[name] += 1
                    db.session.remove()

        return run

    def settle() -> None:
        seen = db.session.execute(sa.select(Connector.id, Connector.wakes)).all()
        db.session.commit()
        works = [due.Work(cid, "default", due.Kind.NONE, wakes) for cid, wakes in seen]
        rng.shuffle(works)
        due.settle_all(works)

    def mark() -> None:
        due.mark_pipeline(pipeline_id)
        db.session.commit()
        due.mark_view(view_id)
        db.session.commit()

    def restart() -> None:
        # A restart ends the incarnation's resets (writing the pipeline's connectors),
        # then marks them all (app.pipelines.service).
        pipelines.restart(db.session.get(Pipeline, pipeline_id))

    jobs = [repeat("settle", settle), repeat("settle", settle)]
    jobs += [repeat("mark", mark), repeat("restart", restart)]
    threads = [threading.Thread(target=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert min(rounds.values()) >= 2, rounds
