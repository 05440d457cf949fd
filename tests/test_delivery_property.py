"""A property test of delivery and resets under pauses, stops, crashes and stalls.

Random sequences of change batches (valid, and refused whole), pauses and
resumes, stops and starts, delivery runs (random batch size and batches per
claim) and resets, with a fault at a chosen sink write of a worker (a
streaming write of the delivery worker, or a replay write of a reset):

- **crash**: the worker dies right after the write, before recording it: no
  handler runs, its lease stays taken, its staging file stays behind (a
  reset's final rename counts as a write for a crash: it dies before its commit);
- **stall**: before the write the worker is suspended past its lease: every
  lease runs out and, meanwhile, changes may be pushed, a reset requested, and
  another worker (delivery, resets, or both) runs to completion; then the
  stalled worker wakes up and goes on with its write;
- **stop**: the pipeline is stopped there, and maybe started again at once;
- **push**: changes are pushed there (during a replay: after its snapshot).

All in one process and one thread: the fault runs inside the wrapped sink
write, and the workers that take over run in app contexts (so database
sessions) of their own, while the stalled one waits on the stack.

Checked, besides the service's own answers:

- a worker writes to the sink only while it holds the connector's lease, unless
  it stalled and was taken over; such a worker never renews its lease again,
  and finds out (``LeaseLost``) on its next commit;
- every completed reset leaves the sink holding exactly the snapshot of its
  moment (the view as of the connector's ``delivered_seq`` at completion);
- after every operation, an in-sync sink's committed bytes are exactly the
  last snapshot followed by the log after it, up to ``delivered_seq``;
- at the end (start or resume, leases and backoffs run out, resets run,
  delivery catches up): the connector is in sync with no error, the sink folds
  to the view, its lines are the last snapshot followed by every change after
  it exactly once (so no line is there more often than the view's weights
  allow), and no staging file is left behind.

``PROPERTY_MAX_EXAMPLES=500 pytest tests/test_delivery_property.py`` runs more.

One interleaving cannot be had on one thread: a stalled worker waking up while
the one that took over is still at work. The last test plays one such case
out with a second thread, stepped from the first.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app import create_app
from app.connectors import service as connectors
from app.connectors.models import Connector, SyncState
from app.database import db_time
from app.delivery import leases
from app.delivery.leases import LeaseLost
from app.delivery.service import connector_stats
from app.delivery.worker import DeliveryWorker
from app.errors import InvalidRequest, PipelineNotRunning
from app.extensions import db
from app.pipelines import service as pipelines
from app.resets import service as resets
from app.resets.executor import ResetExecutor
from app.resets.models import Reset, ResetStatus
from app.transports.file import SinkFile, StagingFile
from app.view_data import service as view_data
from tests.faults import canonical, fold, fold_file, sink_lines, time_passes, view_multiset

MAX_EXAMPLES = int(os.environ.get("PROPERTY_MAX_EXAMPLES", "60"))


class SimulatedCrash(BaseException):
    """A worker dying on the spot: no handler runs, its lease stays taken."""


@dataclass(frozen=True)
class Takeover:
    """What happens while a worker is stalled past its lease, in this order."""

    push: bool  # changes are pushed
    request_reset: bool  # a reset of the connector is requested
    run: str  # "resets", "deliver", "both" (resets, then delivery) or "nothing" run


@dataclass(frozen=True)
class Fault:
    """What happens at the ``at``-th sink write of a worker run."""

    kind: str  # "crash", "stall", "stop" or "push"
    at: int
    takeover: Takeover | None = None  # what a stall lets happen
    restart: bool = False  # whether a stop is followed by a start at once


# Pushed by a fault (mid-replay: changes that follow the reset's snapshot).
MEANWHILE = [("insert", {"id": 9, "name": "meanwhile"}), ("delete", 0)]

records = st.builds(lambda i: {"id": i, "name": f"r{i}"}, st.integers(0, 5))
# A delete names a record by its place among those present at that point
# (an insert when none is), so that most batches are valid...
change = st.one_of(
    st.tuples(st.just("insert"), records),
    st.tuples(st.just("insert"), records),
    st.tuples(st.just("delete"), st.integers(0, 10)),
)
push = st.tuples(st.just("push"), st.lists(change, min_size=1, max_size=8))
# ...and some batches end with a delete of a record that is not there: refused whole.
bad_push = st.tuples(st.just("push"), st.lists(change, max_size=4), st.just(True))
write = st.sampled_from([1, 1, 2, 3])
takeover = st.builds(
    Takeover,
    st.booleans(),
    st.booleans(),
    st.sampled_from(["resets", "deliver", "both", "both", "nothing"]),
)
faults = st.sampled_from(["crash", "stall", "stall", "stop", "push", None]).flatmap(
    lambda kind: (
        st.none()
        if kind is None
        else st.builds(
            Fault,
            st.just(kind),
            write,
            takeover=takeover if kind == "stall" else st.none(),
            restart=st.booleans() if kind == "stop" else st.just(False),
        )
    )
)
# Hypothesis picks each alternative of one_of alike (the same object twice
# counts once), so the weights are in the sampled names.
operation = st.sampled_from(
    ["push"] * 3 + ["bad_push"] + ["deliver"] * 3 + ["reset", "run_resets", "expire", "lifecycle"]
).flatmap(
    lambda kind: {
        "push": push,
        "bad_push": bad_push,
        # batch size, batches per claim, fault
        "deliver": st.tuples(st.just("deliver"), st.integers(1, 4), st.integers(1, 3), faults),
        # run it at once?, fault
        "reset": st.tuples(st.just("reset"), st.sampled_from([True, True, False]), faults),
        "run_resets": st.tuples(st.just("run_resets"), faults),
        "expire": st.just(("expire_leases",)),
        # Weighted so that the pipeline runs most of the time.
        "lifecycle": st.tuples(
            st.sampled_from(["pause", "stop", "resume", "start", "start", "start"])
        ),
    }[kind]
)
# A view with something in it first, so that most operations have work to do.
operations = st.builds(
    lambda first, rest: [first, *rest], push, st.lists(operation, min_size=8, max_size=40)
)

# Where each lifecycle action may be taken, and where it leads.
LIFECYCLE = {
    "pause": ({"running"}, "paused"),
    "resume": ({"paused"}, "running"),
    "stop": ({"running", "paused"}, "stopped"),
    "start": ({"stopped", "paused"}, "running"),
}


class Harness:
    """One app on a fresh database, a model of the view, the operations and the checks."""

    def __init__(self, root: Path) -> None:
        self.app = create_app(
            {
                "TESTING": True,
                "SECRET_KEY": "property",
                "SQLALCHEMY_DATABASE_URI": f"sqlite:///{root / 'p.db'}",
                "SINK_DIR": str(root / "sinks"),
                "BACKGROUND_WORKER": False,
                "REPLAY_BATCH_SIZE": 3,
            }
        )
        self.sink = root / "sinks" / "default" / "out.jsonl"
        self.status = "running"
        # The model: the view's contents, its log (change seq n at n - 1), and its
        # contents after each log position (what a snapshot at it holds).
        self.model: Counter = Counter()
        self.log: list[dict] = []
        self.at_seq: dict[int, Counter] = {0: Counter()}
        # The last completed reset: its snapshot's seq and record count.
        self.base = (0, 0)
        self.checked_resets: set = set()
        # The worker run under way and its fault.
        self.fault: Fault | None = None
        self.writes = 0
        self.crashing = False
        self.workers = 0
        self.running: list[str] = []  # owners of the workers on the stack, innermost last
        # Stalled workers taken over: their epochs, those that found out, and
        # the owners that do not know yet.
        self.stale_epochs: set[int] = set()
        self.lost_epochs: set[int] = set()
        self.stale_owners: set[str] = set()
        self.violations: list[str] = []
        with self.app.app_context():
            db.create_all()
            pipeline = pipelines.create_pipeline("default", "orders", views=["totals"])
            connectors.add_connector(
                pipeline, "totals", "sink1", {"name": "file", "config": {"path": "out.jsonl"}}
            )
            pipelines.start(pipeline)
            db.session.remove()

    def close(self) -> None:
        """Let go of the database."""
        with self.app.app_context():
            db.session.remove()
            db.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[None]:
        """An app context, so a database session, of its own."""
        with self.app.app_context():
            try:
                yield
            finally:
                db.session.remove()

    def connector(self) -> Connector:
        """The connector as committed now (read in the current session)."""
        return db.session.execute(sa.select(Connector)).scalar_one()

    # -- operations ---------------------------------------------------------

    def push(self, changes: list[tuple[str, Any]], bad_end: bool = False) -> None:
        """Push a batch; with ``bad_end`` it ends with an invalid delete and is refused whole."""
        after = self.model.copy()
        batch = []
        for op, what in changes:
            present = sorted(k for k, w in after.items() if w > 0)
            if op == "delete" and present:
                key = present[what % len(present)]
                batch.append({"delete": json.loads(key)})
                after[key] -= 1
            else:
                record = what if op == "insert" else {"id": what, "name": f"r{what}"}
                batch.append({"insert": record})
                after[canonical(record)] += 1
        if bad_end:
            batch.append({"delete": {"id": -1, "name": "never inserted"}})
        with self.session():
            try:
                pipeline = pipelines.get_pipeline("default", "orders")
                view = view_data.writable_view(pipeline, "totals")
                parsed = view_data.parse_changes(json.dumps(batch).encode())
                result = view_data.push_changes(view, parsed)
            except PipelineNotRunning:
                assert self.status == "stopped"
                return
            except InvalidRequest as exc:
                assert bad_end and exc.details["index"] == len(batch) - 1
                return
        assert not bad_end and self.status != "stopped"
        assert (result.first_seq, result.last_seq) == (
            len(self.log) + 1,
            len(self.log) + len(batch),
        )
        self.log.extend(batch)
        self.model = +after
        self.at_seq[result.last_seq] = self.model.copy()

    def lifecycle(self, action: str) -> None:
        """Pause, resume, stop or start the pipeline, where that action applies."""
        allowed, leads_to = LIFECYCLE[action]
        if self.status not in allowed:
            return
        with self.session():
            getattr(pipelines, action)(pipelines.get_pipeline("default", "orders"))
        self.status = leads_to

    def expire_leases(self) -> None:
        """Let time pass: every lease and every backoff runs out."""
        with self.session():
            past = db_time(-3600)
            db.session.execute(sa.update(Connector).values(lease_expires_at=past))
            for model in (Connector, Reset):
                db.session.execute(
                    sa.update(model)
                    .where(model.next_attempt_at.is_not(None))
                    .values(next_attempt_at=past)
                )
            time_passes()
            db.session.commit()

    def request_reset(self) -> None:
        """Request a reset of the connector (refused while the pipeline is stopped)."""
        with self.session():
            try:
                resets.request_reset(pipelines.get_pipeline("default", "orders"), "totals", "sink1")
            except PipelineNotRunning:
                assert self.status == "stopped"

    def deliver(self, batch_size: int, max_batches: int, fault: Fault | None) -> None:
        """Run one delivery claim, with ``fault`` at one of its sink writes."""

        def work() -> None:
            with self.worker("deliverer") as owner:
                DeliveryWorker(owner, batch_size=batch_size, max_batches=max_batches).run_once()

        self.run_worker(work, fault)

    def reset(self, run_now: bool, fault: Fault | None) -> None:
        """Request a reset of the connector, and maybe run the resets at once."""
        self.request_reset()
        if run_now:
            self.run_resets(fault)

    def run_resets(self, fault: Fault | None) -> None:
        """Run the resets that are due, with ``fault`` at one of their sink writes."""
        self.run_worker(self.execute_resets, fault)

    # -- workers --------------------------------------------------------------

    @contextmanager
    def worker(self, role: str) -> Iterator[str]:
        """A worker's session and unique owner id; its sink writes are checked against it."""
        self.workers += 1
        owner = f"{role}-{self.workers}"
        self.running.append(owner)
        try:
            with self.session():
                yield owner
        finally:
            self.running.pop()

    def run_worker(self, work: Callable[[], None], fault: Fault | None) -> None:
        """Run a worker with ``fault`` planned at its ``fault.at``-th sink write."""
        self.fault, self.writes = fault, 0
        try:
            work()
        except SimulatedCrash:
            event("a worker died after a sink write")
        finally:
            self.fault, self.crashing = None, False
        self.check_stale_workers()

    def execute_resets(self) -> None:
        """Carry out due resets one at a time, checking each completed one at once."""
        with self.worker("resetter") as owner:
            executor = ResetExecutor(owner)
            for _claim in range(50):
                if not executor.run_once():
                    return
                self.check_completed_reset()
        raise AssertionError("the executor kept finding resets to do")

    def deliver_all(self) -> None:
        """Deliver until no connector has anything to deliver."""
        with self.worker("deliverer") as owner:
            assert DeliveryWorker(owner, batch_size=2).run_pending(limit=500) < 500

    # -- faults, run from inside the sink writes -------------------------------

    def sink_write(self, real: Callable[..., int], sink: Any, *args: Any) -> int:
        """Write to the sink for the innermost worker, with the fault planned at this write."""
        self.writes += 1
        fault = self.fault if self.fault and self.fault.at == self.writes else None
        if fault is not None:
            self.fault = None
        self.check_writer()
        if fault is not None:
            event(f"fault: {fault.kind} at a {type(sink).__name__} write")
        if fault is not None and fault.kind == "stall":
            assert fault.takeover is not None
            self.stall(fault.takeover)
        elif fault is not None and fault.kind == "stop":
            self.lifecycle("stop")
            if fault.restart:
                self.lifecycle("start")
        elif fault is not None and fault.kind == "push":
            self.push(MEANWHILE)
        written = real(sink, *args)
        if fault is not None and fault.kind == "crash":
            self.crashing = True
            raise SimulatedCrash
        return written

    def switch_in(self, real: Callable[[StagingFile], None], staging: StagingFile) -> None:
        """Switch a reset's staging file in; a crash planned here strikes after the rename.

        The worker dies before its commit. Only a crash can happen here: the worker
        holds the database's write lock, so nothing else could write meanwhile.
        """
        crash = self.fault is not None and self.fault.kind == "crash"
        if crash:
            self.writes += 1
        self.check_writer()
        real(staging)
        if crash and self.fault is not None and self.fault.at == self.writes:
            self.fault, self.crashing = None, True
            event("fault: crash at a switch-in")
            raise SimulatedCrash

    def stall(self, takeover: Takeover) -> None:
        """The writing worker stalls past its lease; the others go on meanwhile."""
        owner = self.running[-1]
        with self.session():
            epoch = self.connector().lease_epoch
        self.expire_leases()
        if takeover.push:
            self.push(MEANWHILE)
        if takeover.request_reset:
            self.request_reset()
        if takeover.run in ("resets", "both"):
            self.execute_resets()
        if takeover.run in ("deliver", "both"):
            self.deliver_all()
        with self.session():
            taken_over = self.connector().lease_epoch != epoch
        if taken_over:
            event(f"a stalled {owner.split('-')[0]} was taken over")
            self.stale_epochs.add(epoch)
            self.stale_owners.add(owner)

    def discard_staging(self, real: Callable[[StagingFile], None], staging: StagingFile) -> None:
        """Discard a staging file, unless its worker is dying (then it stays behind)."""
        if self.crashing:
            os.close(staging.fd)
        else:
            real(staging)

    def renew(self, real: Callable[..., None], lease: leases.Lease, **values: Any) -> None:
        """Renew a lease, noting what a stalled worker that was taken over attempts."""
        try:
            real(lease, **values)
        except LeaseLost:
            if lease.epoch in self.stale_epochs:
                self.lost_epochs.add(lease.epoch)
                self.stale_owners.discard(lease.owner)
            raise
        if lease.epoch in self.stale_epochs:
            self.violations.append(
                f"{lease.owner} renewed its lease (epoch {lease.epoch}) after it was taken over"
            )

    # -- checks -------------------------------------------------------------

    def check_writer(self) -> None:
        """The worker writing holds the connector's lease (or stalled and does not know yet)."""
        owner = self.running[-1]
        if owner in self.stale_owners:
            return
        with self.session():
            holder = self.connector().lease_owner
        if holder != owner:
            self.violations.append(f"{owner} wrote to the sink while {holder} held the lease")

    def check_stale_workers(self) -> None:
        """Every stalled worker that was taken over found out on its next commit."""
        assert not self.violations, self.violations
        assert self.stale_epochs <= self.lost_epochs, "a stalled worker never found out"

    def check_completed_reset(self) -> None:
        """A reset that just completed left exactly the snapshot of its moment in the sink."""
        with self.session():
            done = db.session.execute(
                sa.select(Reset).where(Reset.status == ResetStatus.COMPLETE)
            ).scalars()
            new = [r for r in done if r.id not in self.checked_resets]
            connector = self.connector()
            assert len(new) <= 1
            for reset in new:
                self.checked_resets.add(reset.id)
                lines = sink_lines(self.sink)
                assert all(set(line) == {"insert"} for line in lines)
                assert len(lines) == reset.snapshot_records == reset.replayed_records
                assert fold(lines) == self.at_seq[connector.delivered_seq]
                assert connector.sync_state == SyncState.IN_SYNC
                assert connector.committed_length == self.sink.stat().st_size
                self.base = (connector.delivered_seq, len(lines))
                event(f"a reset completed (origin {reset.origin})")

    def check_sink(self) -> None:
        """An in-sync sink's committed bytes are the last snapshot, then the log after it."""
        with self.session():
            connector = self.connector()
        if connector.sync_state != SyncState.IN_SYNC:
            return
        data = self.sink.read_bytes() if self.sink.exists() else b""
        assert len(data) >= connector.committed_length, "the sink lost committed bytes"
        committed = data[: connector.committed_length].decode("utf-8")
        lines = [json.loads(line) for line in committed.splitlines()]
        self.assert_snapshot_then_log(lines, connector.delivered_seq)

    def assert_snapshot_then_log(self, lines: list[dict], upto: int) -> None:
        """``lines`` are the last snapshot (any order), then changes after it up to ``upto``."""
        seq, count = self.base
        head, tail = lines[:count], lines[count:]
        assert all(set(line) == {"insert"} for line in head)
        assert fold(head) == self.at_seq[seq]
        assert tail == self.log[seq:upto], "the sink's changes differ from the log's"

    def catch_up(self) -> None:
        """Start or resume, let time pass, finish resets, deliver everything; check it all."""
        self.lifecycle("start")
        self.lifecycle("resume")
        self.expire_leases()
        self.execute_resets()
        self.deliver_all()
        self.check_stale_workers()
        with self.session():
            pipeline = pipelines.get_pipeline("default", "orders")
            stats = connector_stats(pipeline, "totals", "sink1")
            connector = self.connector()
            contents = view_multiset(connector.view_id)
            # A stop abandons every unfinished reset; the others must have completed.
            unfinished = db.session.execute(
                sa.select(Reset.id, Reset.status, Reset.error).where(
                    Reset.status.in_([ResetStatus.IN_PROGRESS, ResetStatus.FAILED])
                )
            ).all()
        assert stats["sync_state"] == SyncState.IN_SYNC, stats
        assert stats["health"] == "healthy", stats
        assert stats["delivered_seq"] == stats["log_end"] == len(self.log), stats
        assert stats["transport_errors"] == 0 and stats["last_error"] is None, stats
        assert not unfinished, unfinished
        assert contents == self.model
        assert fold_file(self.sink) == self.model
        self.assert_snapshot_then_log(sink_lines(self.sink), len(self.log))
        size = self.sink.stat().st_size if self.sink.exists() else 0
        assert size == connector.committed_length
        folder = self.sink.parent
        leftovers = sorted(p.name for p in folder.glob(".*")) if folder.exists() else []
        assert not leftovers, f"staging files left behind: {leftovers}"


@pytest.fixture
def harnesses(monkeypatch: pytest.MonkeyPatch) -> list[Harness]:
    """Route every sink write, staging discard and lease renewal through the harness in use."""
    current: list[Harness] = []
    write_at, append, switch_in, discard, renew = (
        SinkFile.write_at,
        StagingFile.append,
        StagingFile.switch_in,
        StagingFile.discard,
        leases.renew,
    )

    def hooked_write_at(sink: SinkFile, offset: int, data: bytes) -> int:
        """A streaming write, through the harness."""
        return current[-1].sink_write(write_at, sink, offset, data)

    def hooked_append(staging: StagingFile, data: bytes) -> int:
        """A replay write, through the harness."""
        return current[-1].sink_write(append, staging, data)

    def hooked_switch_in(staging: StagingFile) -> None:
        """A reset's switch-in, through the harness."""
        current[-1].switch_in(switch_in, staging)

    def hooked_discard(staging: StagingFile) -> None:
        """A staging file's discard, through the harness."""
        current[-1].discard_staging(discard, staging)

    def hooked_renew(lease: leases.Lease, **values: Any) -> None:
        """A lease renewal (every fenced commit), through the harness."""
        current[-1].renew(renew, lease, **values)

    monkeypatch.setattr(SinkFile, "write_at", hooked_write_at)
    monkeypatch.setattr(StagingFile, "append", hooked_append)
    monkeypatch.setattr(StagingFile, "switch_in", hooked_switch_in)
    monkeypatch.setattr(StagingFile, "discard", hooked_discard)
    monkeypatch.setattr(leases, "renew", hooked_renew)
    return current


@pytest.mark.slow
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=operations)
def test_sink_folds_to_the_view_and_resets_start_with_their_snapshot(harnesses, ops):
    with tempfile.TemporaryDirectory() as root:
        harness = Harness(Path(root))
        harnesses.append(harness)
        try:
            for name, *args in ops:
                if name in LIFECYCLE:
                    harness.lifecycle(name)
                else:
                    getattr(harness, name)(*args)
                harness.check_sink()
            harness.catch_up()
        finally:
            harnesses.pop()
            harness.close()


def test_a_stale_executor_leaves_the_new_file_of_the_reset_that_took_over_alone(tmp_path):
    """A reset executor stalls past its lease just before it creates its staging file;
    another takes the reset over and starts replaying; the stale one wakes up then.

    Creating its staging file, the stale executor must not delete the live one's:
    that one's switch-in would fail, and the reset with it (an attempt lost, an
    error counted; ``RESET_MAX_ATTEMPTS`` such losses fail the connector).
    """
    harness = Harness(tmp_path)
    create, append = StagingFile.__init__, StagingFile.append
    stalled, woken = threading.Event(), threading.Event()

    def create_staging(staging: StagingFile, target: Path, shown: str, epoch: int) -> None:
        """The stale executor stalls here until the live one is replaying."""
        if threading.current_thread() is stale:
            stalled.set()
            woken.wait(30)
        create(staging, target, shown, epoch)

    def append_staging(staging: StagingFile, data: bytes) -> int:
        """At the live executor's first replay write, the stale one wakes up and finishes."""
        if threading.current_thread() is not stale and not woken.is_set():
            woken.set()
            stale.join(30)
        return append(staging, data)

    def run_stale() -> None:
        """The executor that will stall."""
        with harness.session():
            ResetExecutor("stale").run_once()

    stale = threading.Thread(target=run_stale)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StagingFile, "__init__", create_staging)
        patch.setattr(StagingFile, "append", append_staging)
        try:
            harness.push([("insert", {"id": i, "name": f"r{i}"}) for i in range(4)])
            harness.request_reset()
            stale.start()
            assert stalled.wait(30)
            harness.expire_leases()
            with harness.session():
                ResetExecutor("live").run_once()
            stale.join(30)
            with harness.session():
                reset = db.session.execute(sa.select(Reset)).scalar_one()
                connector = harness.connector()
        finally:
            woken.set()
            if stale.ident is not None:
                stale.join(30)
            harness.close()
    assert reset.status == ResetStatus.COMPLETE, reset.error
    assert connector.transport_errors == 0, connector.last_error
    assert fold_file(harness.sink) == harness.model
    assert [p.name for p in harness.sink.parent.glob(".*")] == [], "a staging file was left"
