"""``python -m bench.soak``: a multi-process soak of delivery and resets on PostgreSQL.

What runs, all on one PostgreSQL database and one temporary folder (sinks, logs):

- two gunicorn instances (``gunicorn.conf.py``) on two free loopback ports;
  ``--background-worker`` says which of them also run the worker thread
  (default: neither, so only the ``flask worker`` processes deliver and every
  process that delivers is subject to the faults);
- two ``flask worker`` processes;
- ``--tenants`` tenants, each with a write API key and one pipeline
  (``orders``, view ``totals``, connector ``sink1``: a file, or with ``--sink`` a
  Delta change table, a keyed Delta table of typed columns (``delta-rows``), a
  PostgreSQL table, or an http endpoint);
- with ``--sink http``, one reference receiver (``tests/receiver.py``) in the
  soak's own process, on loopback, that every tenant's connector POSTs to.

One thread per tenant pushes its share of ``--records`` changes (inserts, and
deletes of records inserted earlier; some records are inserted more than once,
except with ``--sink delta-rows``, whose view is keyed by ``id``)
in batches, alternating between the two ports and paced over the push window.
Meanwhile the main thread injects a bounded number of faults at random times:
connector resets, SIGKILL of a worker (restarted at once), SIGSTOP of a worker
for longer than the lease (then SIGCONT). Every event is logged with a timestamp.

Then faults stop, both workers run, and the soak waits (bounded) until every
connector has caught up; it folds each sink back into a multiset
(``tests/faults.fold``) and compares it with the view's contents read straight
from ``view_records``. An http sink is what the receiver holds for the
connector's id, and the receiver must have seen no breach of the transport's
contract. It exits 1 if any sink differs from its view, a view differs from
what was pushed, the receiver saw a breach, or catch-up did not finish in time;
2 on a usage or setup error; 3 when interrupted or out of time.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import datetime as dt
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

from bench.wrk import free_port
from tests import faults
from tests.receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PIPELINE, VIEW, CONNECTOR = "orders", "totals", "sink1"
SINK_PATH = "out/totals.jsonl"
# --sink delta: each tenant's Delta change table; --sink delta-rows: a keyed Delta table
# of the record's typed columns (mode rows, key id), equal to the view; --sink postgres: a
# jsonb table per tenant in a schema of its own of the --sink-dsn database, named by this
# variable.
DELTA_PATH = "tables/totals"
DELTA_COLUMNS = {
    "id": "long",
    "tenant": "string",
    "qty": "long",
    "label": "string",
    "note": "string",
}
DELTA_KEY = ["id"]
SINK_DSN_ENV = "SINK_DSN_SOAK"
# --sink http: where the workers may connect (the receiver listens on loopback only).
HTTP_SINK_NETWORKS = ["127.0.0.1/32"]
KEPT_MESSAGES = 20  # the receiver's last messages kept for a look after a failure
SOAK_DATABASE = "pipeline_manager_soak"
NOTES = ("plain", "café", "naïve ✓", 'with "quotes" and \\ backslash')
MAX_WEIGHT = 3  # a record is inserted at most this many times while live
HTTP_TIMEOUT = 60
VERIFY_RESERVE = 20  # seconds kept after catch-up for the fold and the summary
PROGRESS_EVERY = 15

VIEW_SQL = sa.text(
    "SELECT r.record, r.weight FROM view_records r"
    " JOIN views v ON v.id = r.view_id JOIN pipelines p ON p.id = v.pipeline_id"
    " WHERE p.tenant = :tenant AND p.name = :pipeline AND v.name = :view"
)
CONNECTOR_SQL = sa.text(
    "SELECT c.* FROM connectors c"
    " JOIN views v ON v.id = c.view_id JOIN pipelines p ON p.id = v.pipeline_id"
    " WHERE p.tenant = :tenant AND p.name = :pipeline AND v.name = :view AND c.name = :connector"
)
# Snapshots the service redid by itself (origin redo): it redoes one when it finds a
# sink that no longer holds what it was given, which no fault of the soak should cause
# (no pipeline is stopped), and which would heal a sink that had gone wrong.
REDOS_SQL = sa.text(
    "SELECT count(*) FROM resets r JOIN pipelines p ON p.id = r.pipeline_id"
    " WHERE p.tenant = :tenant AND p.name = :pipeline AND r.origin = 'redo'"
)
# Who holds what, whatever the columns are today (a worker's owner id holds its pid).
HELD_CONNECTORS_SQL = sa.text(
    "SELECT p.tenant, c.lease_expires_at < clock_timestamp() AS lease_expired, c.*"
    " FROM connectors c"
    " JOIN views v ON v.id = c.view_id JOIN pipelines p ON p.id = v.pipeline_id"
    " WHERE c.lease_owner IS NOT NULL"
)
HELD_RESETS_SQL = sa.text(
    "SELECT p.tenant, r.* FROM resets r JOIN pipelines p ON p.id = r.pipeline_id"
    " WHERE r.status = 'inprogress'"
)
AIM_SQL = sa.text("SELECT 1 FROM connectors WHERE lease_owner LIKE :mark LIMIT 1")
# The worker running a tenant's reset: its connector's lease holder while the reset is under way.
RESET_HOLDER_SQL = sa.text(
    "SELECT c.lease_owner FROM resets r JOIN connectors c ON c.id = r.connector_id"
    " JOIN pipelines p ON p.id = r.pipeline_id"
    " WHERE p.tenant = :tenant AND r.status = 'inprogress' AND r.phase <> 'queued'"
    " AND c.lease_owner IS NOT NULL LIMIT 1"
)
AIM_SECONDS = 3  # a worker fault waits this long at most for its victim to be at work


class SoakAborted(Exception):
    """SIGTERM, or the hard wall-clock limit: stop everything and clean up."""


# --------------------------------------------------------------------------- events


class Events:
    """Timestamped event log: stdout and ``events.log`` in the soak's folder."""

    def __init__(self, path: Path) -> None:
        self.start = time.monotonic()
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.lock = threading.Lock()

    def elapsed(self) -> float:
        """Seconds since the soak started."""
        return time.monotonic() - self.start

    def __call__(self, message: str) -> None:
        now = dt.datetime.now().strftime("%H:%M:%S.%f")[:-3]
        line = f"[{now} +{self.elapsed():7.2f}s] {message}"
        with self.lock:
            print(line, flush=True)
            if not self.file.closed:  # a pusher thread may outlive the run by a request
                self.file.write(line + "\n")
                self.file.flush()

    def close(self) -> None:
        """Close the log file."""
        with self.lock:
            self.file.close()


# --------------------------------------------------------------------------- database


def database_url(explicit: str | None) -> str:
    """The soak database: --database-url, PIPELINE_MANAGER_SOAK_POSTGRES_URL, or the test URL
    with its database swapped for ``pipeline_manager_soak``."""
    if explicit:
        return explicit
    if os.environ.get("PIPELINE_MANAGER_SOAK_POSTGRES_URL"):
        return os.environ["PIPELINE_MANAGER_SOAK_POSTGRES_URL"]
    test_url = os.environ.get("PIPELINE_MANAGER_TEST_POSTGRES_URL")
    if not test_url:
        print(
            "set PIPELINE_MANAGER_SOAK_POSTGRES_URL or PIPELINE_MANAGER_TEST_POSTGRES_URL "
            "(sudo bash .ci/postgres.sh prints one)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return sa.make_url(test_url).set(database=SOAK_DATABASE).render_as_string(hide_password=False)


def prepare_database(url: str, log: Events) -> None:
    """Create the database if missing, then give it an empty public schema."""
    target = sa.make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": target.database},
            ).first()
            if not exists:
                conn.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
                log(f"created database {target.database}")
    finally:
        admin.dispose()
    engine = sa.create_engine(target, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(sa.text("CREATE SCHEMA public"))
            version = conn.execute(sa.text("SHOW server_version")).scalar_one()
    finally:
        engine.dispose()
    log(f"database {target.database} on PostgreSQL {version}: public schema recreated")


# --------------------------------------------------------------------------- http sink


class SoakReceiver(Receiver):
    """The reference receiver, keeping only its last ``KEPT_MESSAGES`` messages.

    The soak checks what the receiver holds and its violations. Every batch and
    snapshot message of a run, kept parsed and raw, would take hundreds of MiB.
    ``outcomes`` is kept whole (one short string per message).
    """

    def _decide(
        self, message: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes, str]:
        answer = super()._decide(message, headers)
        for kept in (self.messages, self.headers, self.raw, self.client_ports):
            del kept[:-KEPT_MESSAGES]
        return answer


def receiver_mark(receiver: Receiver, connector_id: str) -> tuple[int | None, int, int] | None:
    """Where the receiver stands for a connector: epoch, applied_seq, snapshot_applied."""
    state = receiver.states.get(connector_id)
    if state is None:
        return None
    return state.epoch, state.applied_seq, state.snapshot_applied


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A process the soak started, in a session (process group) of its own."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None
    stalled_until: float | None = None  # monotonic time of the SIGCONT owed

    def start(self) -> None:
        """Start (or restart) the process, appending to its log."""
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 (fixed argv, no shell)
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self.stalled_until = None

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        """Whether the process has not exited."""
        return self.process is not None and self.process.poll() is None

    def signal_group(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the process group, ignoring one that is gone."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)


def terminate_all(procs: list[Proc], grace: float = 5.0) -> None:
    """SIGCONT and SIGTERM every group, wait up to ``grace`` seconds, then SIGKILL the groups."""
    for proc in procs:
        proc.signal_group(signal.SIGCONT)
        proc.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(p.alive() for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    for proc in procs:
        # Whatever is left of the group (gunicorn's workers, a stuck process) goes too.
        proc.signal_group(signal.SIGKILL)
        if proc.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.process.wait(timeout=10)


def flask_cli(env: dict[str, str], *args: str) -> str:
    """Run ``flask --app wsgi ARGS`` to completion; its stdout."""
    done = subprocess.run(  # noqa: S603 (fixed argv, no shell)
        [faults.FLASK, "--app", "wsgi", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"flask {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def wait_healthy(proc: Proc, base: str, timeout: float = 60) -> None:
    """Wait until gunicorn answers /healthz."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited; see {proc.log_path}")
        try:
            if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} did not answer /healthz within {timeout}s")


# --------------------------------------------------------------------------- workload


def record(tenant: str, i: int) -> dict[str, Any]:
    """Record ``i`` of a tenant: a pure function of both, so the soak keeps only ids."""
    return {
        "id": i,
        "tenant": tenant,
        "qty": (i * 7919) % 1000,
        "label": f"item-{i:06d}",
        "note": NOTES[i % len(NOTES)],
    }


@dataclass
class Draft:
    """A batch drawn from the model, applied to it only once the service took it."""

    ops: list[tuple[str, int]]
    live: list[int]
    weight: bytearray
    next_id: int


class Model:
    """What a tenant pushed: the live ids (an id of weight w appears w times) and totals."""

    def __init__(self, capacity: int) -> None:
        self.live: list[int] = []
        self.weight = bytearray(capacity)
        self.inserted = array.array("I", bytes(4 * capacity))  # inserts ever pushed, per id
        self.deleted = array.array("I", bytes(4 * capacity))  # deletes ever pushed, per id
        self.next_id = 0

    def draft(self, n: int, rng: random.Random, delete_ratio: float, again_ratio: float) -> Draft:
        """Draw ``n`` changes: deletes of live records, inserts of new or live ones."""
        live, weight, next_id = self.live.copy(), bytearray(self.weight), self.next_id
        ops: list[tuple[str, int]] = []
        for _ in range(n):
            roll = rng.random()
            if live and roll < delete_ratio:
                j = rng.randrange(len(live))
                i = live[j]
                live[j] = live[-1]
                live.pop()
                weight[i] -= 1
                ops.append(("delete", i))
                continue
            i = -1
            if live and roll < delete_ratio + again_ratio:
                i = live[rng.randrange(len(live))]
                if weight[i] >= MAX_WEIGHT:
                    i = -1
            if i < 0:
                i, next_id = next_id, next_id + 1
            live.append(i)
            weight[i] += 1
            ops.append(("insert", i))
        return Draft(ops, live, weight, next_id)

    def apply(self, draft: Draft) -> None:
        """The service stored the draft: it becomes the model."""
        self.live, self.weight, self.next_id = draft.live, draft.weight, draft.next_id
        for op, i in draft.ops:
            (self.inserted if op == "insert" else self.deleted)[i] += 1


@dataclass
class Tenant:
    """One tenant: its key, its pipeline's pushes, its resets."""

    name: str
    share: int
    rng: random.Random
    key: str = ""
    model: Model = field(init=False)
    pushed: int = 0
    inserts: int = 0
    deletes: int = 0
    batches: int = 0
    push_errors: int = 0
    log_end: int = 0
    desynced: bool = False
    tokens: list[str] = field(default_factory=list)
    connector_id: str = ""  # the connector's uid, which an http sink's messages carry

    def __post_init__(self) -> None:
        self.model = Model(max(self.share, 1))

    def session(self) -> requests.Session:
        """A session carrying the tenant's key."""
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {self.key}"
        return s

    @property
    def sink(self) -> str:
        """The file sink's path below SINK_DIR."""
        return f"{self.name}/{SINK_PATH}"

    @property
    def table(self) -> str:
        """The postgres sink's table name (in the soak's schema)."""
        return f"totals_{self.name}"


# --------------------------------------------------------------------------- the run


@dataclass
class Soak:
    """Everything the phases share."""

    args: argparse.Namespace
    log: Events
    folder: Path
    bases: list[str]
    tenants: list[Tenant]
    workers: list[Proc]
    servers: list[Proc]
    engine: sa.Engine
    stop: threading.Event = field(default_factory=threading.Event)
    push_start: float = 0.0
    push_window: float = 1.0
    counts: Counter = field(default_factory=Counter)
    receiver: Receiver | None = None  # --sink http

    def url(self, n: int, path: str) -> str:
        """``path`` on server ``n`` (mod 2)."""
        return self.bases[n % len(self.bases)] + path


def connector_path(suffix: str = "") -> str:
    """The path of the tenant pipeline's connector, plus ``suffix``."""
    return f"/v0/pipelines/{PIPELINE}/views/{VIEW}/connectors/{CONNECTOR}{suffix}"


def push_batch(soak: Soak, tenant: Tenant, session: requests.Session, n: int) -> bool:
    """Push one batch; return False when the tenant has to stop pushing."""
    draft = tenant.model.draft(n, tenant.rng, soak.args.delete_ratio, soak.args.again_ratio)
    body = [{op: record(tenant.name, i)} for op, i in draft.ops]
    for attempt in range(1, 6):
        url = soak.url(tenant.batches + attempt, f"/v0/pipelines/{PIPELINE}/views/{VIEW}/changes")
        try:
            answer = session.post(url, json=body, timeout=HTTP_TIMEOUT)
        except requests.RequestException as exc:
            soak.log(f"{tenant.name}: push of {n} failed ({exc!r}); checking the log's end")
            answer = None
        if answer is not None and answer.status_code == 200:
            tenant.log_end = answer.json()["last_seq"]
            break
        if answer is not None and answer.status_code == 503:
            soak.log(f"{tenant.name}: push answered 503 {answer.text[:200]}; retrying")
            time.sleep(float(answer.headers.get("Retry-After", 1)))
            continue
        tenant.push_errors += 1
        if answer is not None and answer.status_code < 500:
            soak.log(f"{tenant.name}: push refused {answer.status_code} {answer.text[:300]}")
            tenant.desynced = True
            return False
        if answer is not None:
            soak.log(f"{tenant.name}: push answered {answer.status_code} {answer.text[:300]}")
        # The outcome is unknown: only this thread writes this view, so its log's end says.
        end = connector_stats(soak, session, attempt).get("log_end")
        if end == tenant.log_end + n:
            tenant.log_end = end
            soak.log(f"{tenant.name}: the failed push had been stored")
            break
        if end != tenant.log_end:
            soak.log(f"{tenant.name}: log end {end}, expected {tenant.log_end}: stop pushing")
            tenant.desynced = True
            return False
    else:
        soak.log(f"{tenant.name}: push failed 5 times: stop pushing")
        return False
    tenant.model.apply(draft)
    tenant.pushed += n
    tenant.batches += 1
    tenant.inserts += sum(op == "insert" for op, _ in draft.ops)
    tenant.deletes += sum(op == "delete" for op, _ in draft.ops)
    return True


def pusher(soak: Soak, tenant: Tenant, push_stop: float) -> None:
    """Push the tenant's share, paced over the push window, until done or told to stop."""
    session = tenant.session()
    try:
        while tenant.pushed < tenant.share and not soak.stop.is_set():
            if time.monotonic() > push_stop:
                soak.log(f"{tenant.name}: out of push time at {tenant.pushed}/{tenant.share}")
                return
            due = soak.push_start + soak.push_window * tenant.pushed / tenant.share
            if soak.stop.wait(max(0.0, due - time.monotonic())):
                return
            n = min(tenant.share - tenant.pushed, tenant.rng.randint(*soak.args.batch))
            if not push_batch(soak, tenant, session, n):
                return
    except Exception as exc:  # a thread's failure is reported, not lost
        soak.log(f"{tenant.name}: pusher failed: {exc!r}")
        tenant.desynced = True
    finally:
        session.close()


def connector_stats(soak: Soak, session: requests.Session, n: int) -> dict[str, Any]:
    """The connector's stats through server ``n``, or ``{}`` with the error logged."""
    try:
        answer = session.get(soak.url(n, connector_path("/stats")), timeout=HTTP_TIMEOUT)
    except requests.RequestException as exc:
        soak.log(f"stats failed: {exc!r}")
        return {}
    if answer.status_code != 200:
        soak.log(f"stats answered {answer.status_code}: {answer.text[:300]}")
        return {}
    return answer.json()


def issue_reset(soak: Soak, tenant: Tenant, session: requests.Session) -> None:
    """POST .../reset for the tenant's connector; keep the token."""
    n = soak.counts["reset"]
    try:
        answer = session.post(soak.url(n, connector_path("/reset")), timeout=HTTP_TIMEOUT)
    except requests.RequestException as exc:
        soak.log(f"RESET {tenant.name}: request failed {exc!r}")
        return
    if answer.status_code != 202:
        soak.log(f"RESET {tenant.name}: answered {answer.status_code} {answer.text[:300]}")
        return
    token = answer.json()["token"]
    again = token in tenant.tokens
    if not again:
        tenant.tokens.append(token)
    soak.log(
        f"RESET {tenant.name} at {tenant.pushed} pushed: token ...{token[-10:]}"
        + (" (the one already queued)" if again else "")
    )


def restart_dead_workers(soak: Soak) -> None:
    """Restart any worker that exited on its own (the soak restarts the ones it kills)."""
    for worker in soak.workers:
        if worker.alive():
            continue
        code = worker.process.returncode if worker.process else None
        soak.counts["unexpected_exit"] += 1
        soak.log(f"{worker.name} (pid {worker.pid}) EXITED on its own, code {code}")
        if soak.counts["unexpected_exit"] > 30:
            raise RuntimeError(f"workers keep exiting; see {worker.log_path}")
        time.sleep(0.5)
        worker.start()
        soak.log(f"{worker.name} restarted: pid {worker.pid}")


def inject(
    soak: Soak, kind: str, rng: random.Random, sessions: dict[str, requests.Session]
) -> bool:
    """Carry out one fault; False when it has to wait (no worker to stop)."""
    if kind == "reset":
        tenant = rng.choice(soak.tenants)
        issue_reset(soak, tenant, sessions[tenant.name])
        soak.counts["reset"] += 1
        return True
    if kind.endswith("@reset"):
        return strike_reset(soak, kind.removesuffix("@reset"), rng, sessions)
    # A stall picks a worker that is not stopped already; a kill may hit a stopped one.
    candidates = [
        w for w in soak.workers if w.alive() and (kind == "kill" or w.stalled_until is None)
    ]
    if not candidates:
        return False
    worker = rng.choice(candidates)
    if worker.stalled_until is None:
        aim(soak, worker, rng)
    strike(soak, kind, worker, rng)
    return True


def strike(soak: Soak, kind: str, worker: Proc, rng: random.Random) -> None:
    """SIGKILL ``worker`` and restart it, or SIGSTOP it for longer than the lease."""
    if kind == "kill":
        was = " (stopped)" if worker.stalled_until else ""
        os.kill(worker.pid, signal.SIGKILL)
        worker.process.wait(timeout=10)
        soak.counts["kill"] += 1
        soak.log(f"SIGKILL {worker.name} (pid {worker.pid}){was}: {holdings(soak, kind, worker)}")
        worker.start()
        soak.log(f"{worker.name} restarted: pid {worker.pid}")
    else:
        seconds = soak.args.lease + rng.uniform(1.0, 3.0)
        os.kill(worker.pid, signal.SIGSTOP)
        worker.stalled_until = time.monotonic() + seconds
        soak.counts["stall"] += 1
        held = holdings(soak, kind, worker)
        soak.log(f"SIGSTOP {worker.name} (pid {worker.pid}) for {seconds:.1f}s: {held}")


def strike_reset(
    soak: Soak, kind: str, rng: random.Random, sessions: dict[str, requests.Session]
) -> bool:
    """Issue a reset, then kill or stop the worker that carries it out, mid-way."""
    candidates = [w for w in soak.workers if w.alive() and w.stalled_until is None]
    if not candidates:
        return False
    tenant = rng.choice(soak.tenants)
    issue_reset(soak, tenant, sessions[tenant.name])
    soak.counts["reset"] += 1
    until = time.monotonic() + AIM_SECONDS
    owner = None
    try:
        with soak.engine.connect() as conn:
            while owner is None and time.monotonic() < until:
                owner = conn.execute(RESET_HOLDER_SQL, {"tenant": tenant.name}).scalar()
                conn.rollback()
                time.sleep(0.005)
    except sa.exc.SQLAlchemyError as exc:
        soak.log(f"{kind}@reset skipped: cannot see who runs the reset ({type(exc).__name__})")
        return True
    pid = owner.split(":")[1] if owner and owner.count(":") >= 2 else None
    worker = next((w for w in candidates if str(w.pid) == pid), None)
    if worker is None:
        soak.log(f"{kind}@reset skipped: the reset was run by {owner or 'nobody in time'}")
        return True
    time.sleep(rng.uniform(0.0, 0.3))  # somewhere in the sink's reset or the replay
    soak.counts[f"{kind}@reset"] += 1
    strike(soak, kind, worker, rng)
    return True


def aim(soak: Soak, worker: Proc, rng: random.Random) -> None:
    """Wait (up to AIM_SECONDS) until ``worker`` holds a connector's lease, i.e. is at work."""
    mark = {"mark": f"%:{worker.pid}:%"}
    until = time.monotonic() + AIM_SECONDS
    try:
        with soak.engine.connect() as conn:
            while time.monotonic() < until:
                found = conn.execute(AIM_SQL, mark).first()
                conn.rollback()
                if found:
                    time.sleep(rng.uniform(0.0, 0.02))
                    return
                time.sleep(0.005)
    except sa.exc.SQLAlchemyError as exc:
        soak.log(f"cannot aim ({type(exc).__name__}): the fault hits at random")


def holdings(soak: Soak, kind: str, worker: Proc) -> str:
    """What a worker held when it was hit: leases, and a sink written past its committed length."""
    mark = f":{worker.pid}:"
    held = []
    try:
        with soak.engine.connect() as conn:
            for row in conn.execute(HELD_CONNECTORS_SQL).mappings():
                if mark not in row["lease_owner"]:
                    continue
                note = f"{row['tenant']} connector lease"
                if row["lease_expired"]:
                    note += " (expired)"
                size = _size(soak.folder / "sinks" / row["tenant"] / SINK_PATH)
                committed = row.get("committed_length")
                if committed is not None and size > committed:
                    note += f", mid-write (file {size} > committed {committed})"
                    soak.counts[f"{kind} mid-write"] += 1
                held.append(note)
            for row in conn.execute(HELD_RESETS_SQL).mappings():
                if mark in (row.get("lease_owner") or ""):
                    held.append(
                        f"{row['tenant']} reset {row.get('phase')} "
                        f"{row.get('replayed_records')}/{row.get('snapshot_records')}"
                    )
    except sa.exc.SQLAlchemyError as exc:
        return f"leases unknown ({type(exc).__name__})"
    if held:
        soak.counts[f"{kind} holding a lease"] += 1
    return "held " + "; ".join(held) if held else "held nothing"


def resume_due(soak: Soak, everyone: bool = False) -> None:
    """SIGCONT the stopped workers whose time is up (or all of them)."""
    for worker in soak.workers:
        if worker.stalled_until is None:
            continue
        if everyone or time.monotonic() >= worker.stalled_until:
            if worker.alive():
                os.kill(worker.pid, signal.SIGCONT)
                soak.log(f"SIGCONT {worker.name} (pid {worker.pid})")
            worker.stalled_until = None


def progress(soak: Soak, session: requests.Session) -> None:
    """One line: pushed and queued per tenant."""
    parts = []
    for tenant in soak.tenants:
        session.headers["Authorization"] = f"Bearer {tenant.key}"
        stats = connector_stats(soak, session, 0)
        parts.append(
            f"{tenant.name} {tenant.pushed}/{tenant.share} q={stats.get('queued_records')}"
        )
    soak.log("progress: " + ", ".join(parts))


def run_faults(soak: Soak, push_stop: float, threads: list[threading.Thread]) -> None:
    """The fault phase: inject the scheduled faults while the pushers run."""
    args = soak.args
    rng = random.Random(args.seed)
    schedule = sorted(
        (soak.push_start + soak.push_window * rng.uniform(0.05, 0.95), kind)
        for kind, count in (
            ("kill", args.kills),
            ("stall", args.stalls),
            ("reset", args.resets),
            ("kill@reset", args.reset_kills),
            ("stall@reset", args.reset_stalls),
        )
        for _ in range(count)
    )
    sessions = {t.name: t.session() for t in soak.tenants}
    watch = requests.Session()
    next_progress = time.monotonic() + PROGRESS_EVERY
    while schedule or any(t.is_alive() for t in threads):
        now = time.monotonic()
        if now > push_stop:
            soak.log(f"push time is over: stopping the pushers; {len(schedule)} faults left out")
            soak.stop.set()
            break
        resume_due(soak)
        restart_dead_workers(soak)
        for server in soak.servers:
            if not server.alive():
                raise RuntimeError(f"{server.name} exited; see {server.log_path}")
        while schedule and schedule[0][0] <= now:
            _, kind = schedule.pop(0)
            if not inject(soak, kind, rng, sessions):  # both workers stopped: a bit later
                schedule.append((time.monotonic() + 1.0, kind))
                schedule.sort()
                break
        if now >= next_progress:
            progress(soak, watch)
            next_progress = now + PROGRESS_EVERY
        time.sleep(0.05)
    for thread in threads:
        thread.join(timeout=HTTP_TIMEOUT + 5)
    for session in (*sessions.values(), watch):
        session.close()


def caught_up(stats: dict[str, Any]) -> bool:
    """Nothing queued, no reset under way, and in sync where the stats say so."""
    if not stats:
        return False
    resets = stats.get("resets") or {}
    return (
        stats.get("queued_records") == 0
        and resets.get("last_status") != "inprogress"
        and stats.get("sync_state", "in_sync") == "in_sync"
    )


def describe(stats: dict[str, Any]) -> str:
    """The stats that matter for catch-up, short."""
    if not stats:
        return "no stats"
    resets = stats.get("resets") or {}
    text = (
        f"queued={stats.get('queued_records')} delivered={stats.get('delivered_seq')}"
        f"/{stats.get('log_end')} reset={resets.get('last_status')}/{resets.get('last_phase')}"
        f" health={stats.get('health')} errors={stats.get('transport_errors')}"
    )
    if "sync_state" in stats:
        text += f" sync={stats['sync_state']}"
    if stats.get("last_error"):
        text += f" last_error={stats['last_error'][:120]!r}"
    return text


def wait_caught_up(soak: Soak, until: float) -> bool:
    """Wait until every connector has caught up (twice in a row, sinks unchanged between)."""
    sessions = {t.name: t.session() for t in soak.tenants}
    next_report, n, previous = 0.0, 0, None
    stats: dict[str, dict[str, Any]] = {}
    try:
        while True:  # at least one look, even when the time is up already
            restart_dead_workers(soak)
            n += 1
            stats = {t.name: connector_stats(soak, sessions[t.name], n) for t in soak.tenants}
            sizes = tuple(sink_mark(soak, t) for t in soak.tenants)
            done = all(caught_up(s) for s in stats.values())
            if done and previous == sizes:
                soak.log("every connector caught up, sinks unchanged for 2s")
                return True
            if time.monotonic() >= until + (2.5 if done and previous is None else 0):
                break
            if done:  # look again in 2s: still caught up, and nothing written meanwhile?
                previous = sizes
                time.sleep(2.0)
                continue
            previous = None
            if time.monotonic() >= next_report:
                for name, s in stats.items():
                    soak.log(f"catch-up {name}: {describe(s)}")
                next_report = time.monotonic() + 10
            time.sleep(0.5)
        for name, s in stats.items():
            soak.log(f"NOT caught up in time: {name}: {describe(s)}")
        return False
    finally:
        for session in sessions.values():
            session.close()


def sink_path(soak: Soak, tenant: Tenant) -> Path:
    """The tenant's sink on disk: its file, or its Delta table's folder (missing for others)."""
    if soak.args.sink in ("delta", "delta-rows"):
        return soak.folder / "sinks" / tenant.name / DELTA_PATH
    return soak.folder / "sinks" / tenant.sink


def sink_mark(soak: Soak, tenant: Tenant) -> object:
    """What changes when the tenant's sink is written: its size, or where the receiver stands."""
    if soak.receiver is not None:
        return receiver_mark(soak.receiver, tenant.connector_id)
    return _size(sink_path(soak, tenant))


def _size(path: Path) -> int:
    """A file's size, or a folder's (a Delta table's files); -1 when missing."""
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except FileNotFoundError:
        return -1


# --------------------------------------------------------------------------- verification


@dataclass
class Tally:
    """What the sink file holds, line by line."""

    lines: int = 0
    inserts: int = 0
    deletes: int = 0
    bad: list[str] = field(default_factory=list)
    foreign: int = 0  # records of another tenant, or ids never pushed
    unterminated: bool = False
    seen_inserts: array.array = field(default_factory=lambda: array.array("I"))
    seen_deletes: array.array = field(default_factory=lambda: array.array("I"))


def file_lines(path: Path) -> Iterator[str]:
    """A file sink's lines, as they are."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as fh:
        yield from fh


def delta_lines(path: Path) -> Iterator[str]:
    """A Delta change table's rows as the lines a file sink would hold, in change-log order.

    Rows come in no set order from the table's files: the seq orders them (a
    snapshot's rows share one seq and are all inserts).
    """
    from deltalake import DeltaTable

    if not path.exists():
        return
    data = DeltaTable(str(path)).to_pyarrow_dataset().to_table(use_threads=False)
    rows = sorted(
        zip(
            data["seq"].to_pylist(), data["op"].to_pylist(), data["record"].to_pylist(), strict=True
        ),
        key=lambda row: (row[0], row[1] != "insert"),
    )
    for _seq, op, text in rows:
        yield '{"' + op + '":' + text + "}\n"


def delta_rows_lines(path: Path) -> Iterator[str]:
    """A keyed Delta table's rows (mode rows), each as an insert line: the table is the view.

    A key held twice would fold to an extra copy of a record, and so fail the run.
    """
    from deltalake import DeltaTable

    if not path.exists():
        return
    data = DeltaTable(str(path)).to_pyarrow_dataset().to_table(use_threads=False)
    for row in data.to_pylist():
        yield '{"insert":' + json.dumps(row, ensure_ascii=False) + "}\n"


def postgres_lines(dsn: str, schema: str, table: str) -> Iterator[str]:
    """A jsonb sink table's rows, each as an insert line (the table holds the view itself)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn) as conn:
        name = sql.Identifier(schema, table)
        for (record,) in conn.execute(sql.SQL("SELECT record::text FROM {}").format(name)):
            yield '{"insert":' + record + "}\n"


def receiver_lines(receiver: Receiver, connector_id: str) -> Iterator[str]:
    """What the receiver holds for a connector, each copy of a record as an insert line."""
    for text, weight in receiver.contents(connector_id).items():
        for _ in range(weight):
            yield '{"insert":' + text + "}\n"


def sink_lines_of(soak: Soak, tenant: Tenant) -> Iterator[str]:
    """The tenant's sink as change lines, whatever its transport."""
    if soak.args.sink == "delta":
        return delta_lines(sink_path(soak, tenant))
    if soak.args.sink == "delta-rows":
        return delta_rows_lines(sink_path(soak, tenant))
    if soak.args.sink == "postgres":
        return postgres_lines(soak.args.sink_dsn, soak.args.sink_schema, tenant.table)
    if soak.receiver is not None:
        return receiver_lines(soak.receiver, tenant.connector_id)
    return file_lines(sink_path(soak, tenant))


def sink_changes(lines: Iterator[str], tenant: Tenant, tally: Tally) -> Iterator[dict[str, Any]]:
    """Stream the sink's changes, counting them; malformed lines are counted and skipped."""
    size = len(tenant.model.weight)
    tally.seen_inserts = array.array("I", bytes(4 * size))
    tally.seen_deletes = array.array("I", bytes(4 * size))
    for line in lines:
        tally.lines += 1
        if not line.endswith("\n"):
            tally.unterminated = True
        try:
            change = json.loads(line)
            ((op, rec),) = change.items()
            if op not in ("insert", "delete") or not isinstance(rec, dict):
                raise ValueError(op)
        except (ValueError, AttributeError, TypeError):
            tally.bad.append(line[:160])
            continue
        i = rec.get("id")
        if rec.get("tenant") != tenant.name or not isinstance(i, int) or not 0 <= i < size:
            tally.foreign += 1
        elif op == "insert":
            tally.seen_inserts[i] += 1
        else:
            tally.seen_deletes[i] += 1
        if op == "insert":
            tally.inserts += 1
        else:
            tally.deletes += 1
        yield change


def tolerant_fold(changes: Iterator[dict[str, Any]]) -> tuple[Counter, int]:
    """Fold like ``faults.fold``, but go on past a delete before its insert; count those."""
    net: Counter = Counter()
    early = 0
    for change in changes:
        ((op, rec),) = change.items()
        key = faults.canonical(rec)
        net[key] += 1 if op == "insert" else -1
        if net[key] < 0:
            early += 1
    return net, early


@dataclass
class Result:
    """One tenant's verdict."""

    tenant: str
    view_rows: int
    view_weight: int
    view_matches_pushed: bool
    pushed_difference: str
    tally: Tally
    sink_bytes: int
    early_deletes: int
    missing: Counter
    extra: Counter
    negative: int
    repeated_lines: int
    connector: dict[str, Any]
    resets: Counter
    redos: int = 0
    violations: list[str] = field(default_factory=list)  # the receiver's, for this connector

    @property
    def ok(self) -> bool:
        """The sink folds to the view, the view is what was pushed, no line is extra, no redo,
        and an http sink's receiver saw no breach of the contract."""
        t = self.tally
        return (
            self.view_matches_pushed
            and not self.redos
            and not self.violations
            and not (self.missing or self.extra or self.negative or self.early_deletes)
            and not (t.bad or t.foreign or t.unterminated or self.repeated_lines)
        )


def view_contents(engine: sa.Engine, tenant: str) -> Counter:
    """The view's Z-set as stored: Counter({canonical record text: weight})."""
    contents: Counter = Counter()
    with engine.connect() as conn:
        rows = conn.execution_options(
            postgresql_readonly=True, stream_results=True, yield_per=5000
        ).execute(VIEW_SQL, {"tenant": tenant, "pipeline": PIPELINE, "view": VIEW})
        for text, weight in rows:
            contents[text] += weight
    return contents


def connector_row(engine: sa.Engine, tenant: str) -> dict[str, Any]:
    """The connector's row, whatever its columns are today."""
    params = {"tenant": tenant, "pipeline": PIPELINE, "view": VIEW, "connector": CONNECTOR}
    with engine.connect() as conn:
        row = conn.execute(CONNECTOR_SQL, params).mappings().first()
    return dict(row) if row else {}


def expected_contents(tenant: Tenant) -> Counter:
    """The view the pushes should have left: Counter({canonical record: weight})."""
    return Counter(
        {
            faults.canonical(record(tenant.name, i)): w
            for i, w in enumerate(tenant.model.weight)
            if w
        }
    )


def diff_summary(a: Counter, b: Counter) -> str:
    """How ``a`` and ``b`` differ, briefly: weights and an example each way."""
    more, less = a - b, b - a
    if not more and not less:
        return ""
    parts = []
    for label, d in (("only in view", more), ("only pushed", less)):
        if d:
            example = next(iter(d))
            parts.append(f"{label}: {len(d)} records/{sum(d.values())} weight, e.g. {example}")
    return "; ".join(parts)


def verify(soak: Soak, engine: sa.Engine, tenant: Tenant, session: requests.Session) -> Result:
    """Fold the tenant's sink and compare it with the view (and the view with the pushes)."""
    view = view_contents(engine, tenant.name)
    expected = expected_contents(tenant)
    pushed_difference = diff_summary(view, expected)
    del expected
    tally = Tally()
    early = 0
    try:
        folded = faults.fold(sink_changes(sink_lines_of(soak, tenant), tenant, tally))
        negative = 0
    except AssertionError:
        # A delete came before its insert: fold again, past it, to say what differs.
        tally = Tally()
        net, early = tolerant_fold(sink_changes(sink_lines_of(soak, tenant), tenant, tally))
        negative = sum(1 for v in net.values() if v < 0)
        folded = +net
    repeated = sum(
        max(0, seen - pushed)
        for seen_counts, pushed_counts in (
            (tally.seen_inserts, tenant.model.inserted),
            (tally.seen_deletes, tenant.model.deleted),
        )
        for seen, pushed in zip(seen_counts, pushed_counts, strict=False)
    )
    # The receiver names the connector_id in each breach it notes.
    breaches = soak.receiver.violations if soak.receiver is not None else []
    resets: Counter = Counter()
    for token in tenant.tokens:
        try:
            answer = session.get(
                soak.url(0, f"/v0/pipelines/{PIPELINE}/reset_status"),
                params={"token": token},
                timeout=HTTP_TIMEOUT,
            )
        except requests.RequestException as exc:
            resets[type(exc).__name__] += 1
            continue
        body = answer.json() if answer.headers.get("Content-Type", "").endswith("json") else {}
        resets[body.get("status", f"HTTP {answer.status_code}")] += 1
    return Result(
        tenant=tenant.name,
        view_rows=len(view),
        view_weight=sum(view.values()),
        view_matches_pushed=not pushed_difference and not tenant.desynced,
        pushed_difference=pushed_difference or ("pushes desynced" if tenant.desynced else ""),
        tally=tally,
        sink_bytes=_size(sink_path(soak, tenant)),
        early_deletes=early,
        missing=view - folded,
        extra=folded - view,
        negative=negative,
        repeated_lines=repeated,
        connector=connector_row(engine, tenant.name),
        resets=resets,
        redos=redo_count(engine, tenant.name),
        violations=[v for v in breaches if tenant.connector_id in v],
    )


def redo_count(engine: sa.Engine, tenant: str) -> int:
    """Snapshots the service redid by itself for the tenant's pipeline (see REDOS_SQL)."""
    with engine.connect() as conn:
        return int(conn.execute(REDOS_SQL, {"tenant": tenant, "pipeline": PIPELINE}).scalar_one())


def example(d: Counter) -> str:
    """One record of a difference and its weight."""
    key, weight = next(iter(d.items()))
    return f"{key[:140]} x{weight}"


def passed(soak: Soak, results: list[Result], caught: bool) -> bool:
    """Caught up in time, every tenant's sink right, and no breach seen by the receiver."""
    breaches = soak.receiver.violations if soak.receiver is not None else []
    return caught and all(r.ok for r in results) and not breaches


def report_receiver(soak: Soak, receiver: Receiver) -> None:
    """The receiver's side: what became of the messages, and any breach of the contract."""
    outcomes = Counter(receiver.outcomes)
    shown = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
    soak.log(
        f"receiver: {len(receiver.outcomes)} messages ({shown}); "
        f"contract violations {len(receiver.violations)}"
    )
    for violation in receiver.violations[:20]:
        soak.log(f"    VIOLATION: {violation[:400]}")
    if len(receiver.violations) > 20:
        soak.log(f"    ... and {len(receiver.violations) - 20} more")


def report(soak: Soak, results: list[Result], caught: bool) -> None:
    """Print the summary: per tenant, then the faults and the verdict."""
    log = soak.log
    log("=" * 30 + " summary " + "=" * 30)
    for r in results:
        t, c = r.tally, r.connector
        tenant = next(x for x in soak.tenants if x.name == r.tenant)
        on_disk = f", {r.sink_bytes} bytes" if soak.args.sink not in ("postgres", "http") else ""
        log(
            f"{r.tenant}: {'OK' if r.ok else 'FAIL'}  pushed {tenant.pushed} changes "
            f"({tenant.inserts} inserts, {tenant.deletes} deletes, {tenant.batches} batches); "
            f"view {r.view_rows} records, weight {r.view_weight}; "
            f"sink {t.lines} lines ({t.inserts} inserts, {t.deletes} deletes){on_disk}"
        )
        if tenant.push_errors or tenant.desynced:
            log(f"    push errors {tenant.push_errors}, stopped pushing: {tenant.desynced}")
        resets = ", ".join(f"{k} {v}" for k, v in sorted(r.resets.items())) or "none"
        state = {k: c[k] for k in ("delivered_seq", "committed_length", "sync_state") if k in c}
        log(f"    resets issued {len(tenant.tokens)} ({resets}); connector {state}")
        if soak.args.sink == "file" and c.get("committed_length") not in (None, r.sink_bytes):
            log(
                f"    the sink is {r.sink_bytes} bytes, "
                f"its committed length {c['committed_length']}"
            )
        log(
            f"    sink vs view: missing {sum(r.missing.values())}, extra {sum(r.extra.values())}, "
            f"repeated lines {r.repeated_lines}, deletes before their insert {r.early_deletes}, "
            f"malformed {len(t.bad)}, foreign {t.foreign}, snapshots redone {r.redos}; "
            f"view vs pushes: {'same' if r.view_matches_pushed else 'DIFFERENT'}"
        )
        if not r.view_matches_pushed:
            log(f"    VIEW differs from what was pushed: {r.pushed_difference}")
        if r.missing:
            log(
                f"    MISSING from sink: {len(r.missing)} records, weight "
                f"{sum(r.missing.values())}; e.g. {example(r.missing)}"
            )
        if r.extra:
            log(
                f"    EXTRA in sink: {len(r.extra)} records, weight {sum(r.extra.values())};"
                f" e.g. {example(r.extra)}"
            )
        if r.early_deletes or r.negative:
            log(f"    deletes before their insert: {r.early_deletes} ({r.negative} records < 0)")
        if r.repeated_lines:
            log(f"    REPEATED lines (more than ever pushed): {r.repeated_lines}")
        if t.bad:
            log(f"    MALFORMED lines: {len(t.bad)}; first {t.bad[0]!r}")
        if t.foreign:
            log(f"    FOREIGN lines (another tenant's or never pushed): {t.foreign}")
        if t.unterminated:
            log("    the sink's last line has no newline (a torn write)")
        if soak.receiver is not None:
            mark = receiver_mark(soak.receiver, tenant.connector_id)
            held = (
                "nothing received"
                if mark is None
                else f"epoch {mark[0]}, applied_seq {mark[1]}, snapshot_applied {mark[2]}"
            )
            log(
                f"    receiver, connector_id {tenant.connector_id}: {held}; "
                f"contract violations {len(r.violations)}"
            )
    if soak.receiver is not None:
        report_receiver(soak, soak.receiver)
    faults_done = ", ".join(f"{k} {v}" for k, v in sorted(soak.counts.items()))
    log(f"faults: {faults_done}")
    log(f"catch-up {'finished' if caught else 'DID NOT finish'} in time")
    log(f"verdict: {'PASS' if passed(soak, results, caught) else 'FAIL'}")


# --------------------------------------------------------------------------- main


def settings_of(args: argparse.Namespace, url: str, folder: Path) -> dict[str, Any]:
    """The ``PIPELINE_MANAGER_*`` settings every process shares."""
    return {
        "SQLALCHEMY_DATABASE_URI": url,
        "SECRET_KEY": f"soak-{random.getrandbits(64):016x}",
        "SINK_DIR": str(folder / "sinks"),
        "WORKER_LEASE_SECONDS": args.lease,
        "WORKER_POLL_INTERVAL": 0.1,
        "DELIVERY_BATCH_SIZE": args.delivery_batch,
        "REPLAY_BATCH_SIZE": args.delivery_batch,
        # Only the receiver's loopback address (the default denied list leaves loopback open).
        "HTTP_SINK_ALLOWED_NETWORKS": HTTP_SINK_NETWORKS,
    }


def define_processes(
    args: argparse.Namespace, settings: dict[str, Any], folder: Path
) -> tuple[list[Proc], list[str], list[Proc]]:
    """Two gunicorns (and their base URLs) and two ``flask worker`` processes, not started."""
    base_env = faults.worker_env(settings)  # BACKGROUND_WORKER false
    with_thread = {"none": 0, "one": 1, "both": 2}[args.background_worker]
    servers, bases = [], []
    for n in range(2):
        port = free_port()
        env = {
            **base_env,
            "PIPELINE_MANAGER_BIND": f"127.0.0.1:{port}",
            "PIPELINE_MANAGER_WORKERS": str(args.gunicorn_workers),
            "PIPELINE_MANAGER_BACKGROUND_WORKER": "true" if n < with_thread else "false",
            # No delivery process beside gunicorn's request workers (gunicorn.conf.py
            # starts one by default, never faulted): only the processes named above deliver.
            "PIPELINE_MANAGER_DELIVERY_PROCESSES": "0",
        }
        argv = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"]
        servers.append(Proc(f"gunicorn-{n + 1}", argv, env, folder / f"gunicorn-{n + 1}.log"))
        bases.append(f"http://127.0.0.1:{port}")
    worker_argv = [faults.FLASK, "--app", "wsgi", "worker"]
    workers = [
        Proc(f"worker-{n}", worker_argv, base_env, folder / f"worker-{n}.log") for n in (1, 2)
    ]
    return servers, bases, workers


def transport_of(soak: Soak, tenant: Tenant) -> dict[str, Any]:
    """The tenant's connector's transport: ``--sink`` says which."""
    if soak.args.sink == "delta":
        return {"name": "delta", "config": {"path": DELTA_PATH}}
    if soak.args.sink == "delta-rows":
        config = {"path": DELTA_PATH, "mode": "rows", "columns": DELTA_COLUMNS, "key": DELTA_KEY}
        return {"name": "delta", "config": config}
    if soak.args.sink == "postgres":
        table = f"{soak.args.sink_schema}.{tenant.table}"
        return {
            "name": "postgres",
            "config": {"dsn_env": SINK_DSN_ENV, "table": table, "mode": "jsonb"},
        }
    if soak.receiver is not None:
        return {"name": "http", "config": {"url": soak.receiver.url}}
    return {"name": "file", "config": {"path": SINK_PATH}}


def set_up_tenants(soak: Soak, env: dict[str, str]) -> None:
    """A key per tenant (CLI), then its pipeline, view, connector, started (HTTP)."""
    for n, tenant in enumerate(soak.tenants):
        tenant.key = flask_cli(
            env, "api-keys", "create", "soak", "--tenant", tenant.name, "--role", "write"
        ).strip()
        with tenant.session() as s:
            steps = [
                ("/v0/pipelines", {"name": PIPELINE, "views": [VIEW]}),
                (
                    f"/v0/pipelines/{PIPELINE}/views/{VIEW}/connectors",
                    {"name": CONNECTOR, "transport": transport_of(soak, tenant)},
                ),
                (f"/v0/pipelines/{PIPELINE}/start", None),
            ]
            for path, body in steps:
                answer = s.post(soak.url(n, path), json=body, timeout=HTTP_TIMEOUT)
                if not answer.ok:
                    raise RuntimeError(f"POST {path}: {answer.status_code} {answer.text[:500]}")
        tenant.connector_id = str(connector_row(soak.engine, tenant.name)["uid"])
        soak.log(f"tenant {tenant.name}: key, pipeline {PIPELINE}, connector {CONNECTOR} ready")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="A multi-process soak of delivery and resets on PostgreSQL (bench/SOAK.md).",
        epilog="Exit 0: every sink matches its view; 1: a sink or view differs, or catch-up "
        "did not finish; 2: setup error; 3: interrupted or out of time.",
    )
    p.add_argument("--seconds", type=float, default=360, help="hard wall-clock limit (360)")
    p.add_argument("--records", type=int, default=200_000, help="changes pushed in all (200000)")
    p.add_argument("--tenants", type=int, default=4, help="tenants, one pipeline each (4)")
    p.add_argument(
        "--batch", type=int, nargs=2, default=(500, 2000), metavar=("MIN", "MAX"),
        help="changes per pushed batch, drawn between MIN and MAX (500 2000)",
    )  # fmt: skip
    p.add_argument("--delete-ratio", type=float, default=0.3, help="share of deletes (0.3)")
    p.add_argument(
        "--again-ratio", type=float, default=None,
        help="share of inserts of a record already in the view, weight up to 3 (0.05; "
        "0 with --sink delta-rows, whose view is keyed by id)",
    )  # fmt: skip
    p.add_argument("--kills", type=int, default=6, help="SIGKILLs of a worker (6)")
    p.add_argument("--stalls", type=int, default=4, help="SIGSTOPs of a worker past the lease (4)")
    p.add_argument("--resets", type=int, default=12, help="connector resets issued (12)")
    p.add_argument(
        "--reset-kills", type=int, default=3,
        help="more resets, each followed by a SIGKILL of the worker running it (3)",
    )  # fmt: skip
    p.add_argument(
        "--reset-stalls", type=int, default=3,
        help="more resets, each followed by a SIGSTOP of the worker running it (3)",
    )  # fmt: skip
    p.add_argument("--lease", type=float, default=3, help="WORKER_LEASE_SECONDS (3)")
    p.add_argument(
        "--delivery-batch", type=int, default=500,
        help="DELIVERY_BATCH_SIZE and REPLAY_BATCH_SIZE (500)",
    )  # fmt: skip
    p.add_argument(
        "--push-seconds", type=float, default=None,
        help="spread the pushes (and the faults) over this long (55%% of the time left)",
    )  # fmt: skip
    p.add_argument(
        "--background-worker", choices=("none", "one", "both"), default="none",
        help="gunicorn instances that also run the worker thread (none: only the two "
        "flask worker processes deliver)",
    )  # fmt: skip
    p.add_argument("--gunicorn-workers", type=int, default=2, help="processes per gunicorn (2)")
    p.add_argument("--seed", type=int, default=None, help="workload and fault schedule seed")
    p.add_argument("--database-url", default=None, help="overrides the environment's URL")
    p.add_argument("--keep", action="store_true", help="keep the temp folder even on success")
    p.add_argument(
        "--sink", choices=("file", "delta", "delta-rows", "postgres", "http"), default="file",
        help="the connectors' transport: a file, a Delta change table, a keyed Delta table "
        "of typed columns (mode rows), a jsonb table in the --sink-dsn database, or http "
        "to a receiver in the soak's process (file)",
    )  # fmt: skip
    p.add_argument(
        "--sink-dsn", default=os.environ.get("BENCH_SINK_DSN"),
        help="--sink postgres: the sink database (default: $BENCH_SINK_DSN)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    if args.batch[0] < 1 or args.batch[0] > args.batch[1]:
        p.error("--batch MIN MAX needs 1 <= MIN <= MAX")
    if args.sink == "postgres" and not args.sink_dsn:
        p.error("--sink postgres needs --sink-dsn (or BENCH_SINK_DSN)")
    if args.again_ratio is None:
        args.again_ratio = 0.0 if args.sink == "delta-rows" else 0.05
    elif args.again_ratio and args.sink == "delta-rows":
        # A record twice in the view is two rows of one key: a keyed table refuses it.
        p.error("--sink delta-rows needs --again-ratio 0 (the view is keyed by id)")
    args.sink_schema = f"soak_{args.seed}"
    if args.tenants < 1 or args.records < args.tenants:
        p.error("--records must be at least --tenants, and --tenants at least 1")
    return args


def code_version() -> str:
    """The commit, and the files of app/ changed since it (the code may be mid-change)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 (git from PATH)
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "app"],  # noqa: S607 (git from PATH)
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.split("\n")  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    files = [line[3:] for line in changed if line]
    return f"{head}" + (f" + uncommitted changes in {', '.join(files)}" if files else "")


def _abort(signum: int, _frame: Any) -> None:
    raise SoakAborted(signal.Signals(signum).name)


def sink_schema(args: argparse.Namespace, create: bool) -> None:
    """Create (or drop) the schema of the postgres sink tables in the sink database."""
    import psycopg
    from psycopg import sql

    name = sql.Identifier(args.sink_schema)
    with psycopg.connect(args.sink_dsn, autocommit=True) as conn:
        if create:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(name))
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(name))
        else:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(name))


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 when every sink matches its view."""
    args = parse_args(argv)
    url = database_url(args.database_url)
    folder = Path(tempfile.mkdtemp(prefix="pipeline-manager-soak-"))
    log = Events(folder / "events.log")
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    # Ctrl-C raises KeyboardInterrupt even where the shell started the soak with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _abort)
    signal.signal(signal.SIGALRM, _abort)
    # The last resort: whatever hangs, the soak ends (cleanly) a minute past its limit.
    signal.alarm(int(args.seconds) + 60)
    log(
        f"soak: {args.records} changes, {args.tenants} tenants, seed {args.seed}, "
        f"limit {args.seconds:.0f}s, folder {folder}"
    )
    log(f"nproc {os.cpu_count()}, background worker in gunicorn: {args.background_worker}")
    version = code_version()
    log(f"code under test: {version}")
    procs: list[Proc] = []
    soak: Soak | None = None
    engine: sa.Engine | None = None
    receivers = contextlib.ExitStack()
    code, ok = 3, False
    try:
        prepare_database(url, log)
        if args.sink == "postgres":
            os.environ[SINK_DSN_ENV] = args.sink_dsn  # the servers and workers inherit it
            sink_schema(args, create=True)
            log(f"sink tables in schema {args.sink_schema} of the --sink-dsn database")
        settings = settings_of(args, url, folder)
        env = faults.worker_env(settings)
        flask_cli(env, "db", "upgrade")
        log("migrations applied")
        servers, bases, workers = define_processes(args, settings, folder)
        share, rest = divmod(args.records, args.tenants)
        tenants = [
            Tenant(f"tenant{n + 1}", share + (n < rest), random.Random(args.seed * 100 + n))
            for n in range(args.tenants)
        ]
        engine = sa.create_engine(url, pool_size=2)
        soak = Soak(args, log, folder, bases, tenants, workers, servers, engine)
        if args.sink == "http":
            soak.receiver = receivers.enter_context(SoakReceiver())
            log(f"http sinks: every connector POSTs to the receiver at {soak.receiver.url}")
        for proc in (*servers, *workers):
            procs.append(proc)
            proc.start()
            log(f"{proc.name} started: pid {proc.pid}")
        for server, base in zip(servers, bases, strict=True):
            wait_healthy(server, base)
        log(f"serving on {', '.join(bases)}")
        set_up_tenants(soak, env)

        soak.push_start = time.monotonic()
        left = deadline - soak.push_start
        # Pushing and faults end in time to leave catch-up at least a fifth of what is left.
        catch_up_until = deadline - VERIFY_RESERVE
        push_stop = catch_up_until - max(10.0, 0.2 * left)
        if push_stop - soak.push_start < 5:
            raise RuntimeError(f"only {left:.0f}s left after setting up: raise --seconds")
        wanted = args.push_seconds or 0.55 * left
        soak.push_window = min(wanted, 0.9 * (push_stop - soak.push_start))
        log(f"pushing over {soak.push_window:.0f}s (at the latest until +{push_stop - t0:.0f}s)")
        threads = [
            threading.Thread(target=pusher, args=(soak, t, push_stop), daemon=True, name=t.name)
            for t in tenants
        ]
        for thread in threads:
            thread.start()
        run_faults(soak, push_stop, threads)
        log(f"pushed {sum(t.pushed for t in tenants)} changes; faults over")

        resume_due(soak, everyone=True)
        restart_dead_workers(soak)
        caught = wait_caught_up(soak, catch_up_until)
        results = []
        for tenant in tenants:
            with tenant.session() as s:
                results.append(verify(soak, engine, tenant, s))
        report(soak, results, caught)
        if code_version() != version:
            # Restarted workers ran the newer code: say so next to the verdict.
            log(f"NOTE: the code changed during the run; now {code_version()}")
        ok = passed(soak, results, caught)
        code = 0 if ok else 1
    except (KeyboardInterrupt, SoakAborted) as exc:
        log(f"ABORTED ({type(exc).__name__} {exc}): cleaning up")
    except (RuntimeError, OSError, sa.exc.SQLAlchemyError, requests.RequestException) as exc:
        log(f"ERROR: {exc}")
        code = 2
    finally:
        signal.alarm(0)
        # Cleanup is not interrupted: a second Ctrl-C or SIGTERM waits for it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if soak is not None:
            soak.stop.set()
        terminate_all(procs)
        if procs:
            log(f"stopped {len(procs)} processes")
        receivers.close()
        if engine is not None:
            engine.dispose()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        log(
            f"done in {time.monotonic() - t0:.0f}s; "
            f"soak process peak RSS {peak:.0f} MiB; exit {code}"
        )
        log.close()
        if ok and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
            if args.sink == "postgres":
                sink_schema(args, create=False)
        else:
            print(f"logs and sinks kept in {folder}", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
