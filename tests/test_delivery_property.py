"""A property test of delivery and resets under pauses and worker crashes.

Random sequences of change batches, resets (some interrupted, some with
changes pushed while they replay), pauses, resumes, delivery runs and workers
dying between writing a batch and recording it. Checked: every completed
reset leaves the sink holding exactly the snapshot of its moment, and once
delivery catches up, folding the file sink's lines gives the view's contents.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app import create_app
from app.connectors import service as connectors
from app.connectors.models import Connector
from app.delivery.worker import DeliveryWorker
from app.extensions import db
from app.pipelines import service as pipelines
from app.resets import service as resets
from app.resets.executor import ResetExecutor
from app.resets.models import Reset, ResetStatus
from app.transports.file import FileTransport
from app.view_data import service as view_data
from app.view_data import store


class SimulatedCrash(BaseException):
    """A worker dying on the spot: no handler runs, its leases stay taken."""


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
operations = st.lists(
    st.one_of(
        push,
        push,
        bad_push,
        # batch size, batches per claim, whether the worker dies after its first write
        st.tuples(
            st.just("deliver"), st.integers(1, 4), st.integers(1, 3), st.sampled_from([0, 1, 1])
        ),
        # run it at once?, sink writes before its worker dies (0: never), push meanwhile?
        st.tuples(st.just("reset"), st.sampled_from([1, 1, 0]), st.integers(0, 3), st.booleans()),
        st.tuples(st.just("run_resets"), st.integers(0, 3), st.booleans()),
        st.tuples(st.sampled_from(["pause", "resume", "expire_leases", "expire_leases"])),
    ),
    min_size=4,
    max_size=25,
)


class Harness:
    """One app on a fresh database, a model of the view, and the operations."""

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
        self.model: Counter = Counter()
        # The view's contents after each log position: what a snapshot at it holds.
        self.at_seq: dict[int, Counter] = {0: Counter()}
        self.paused = False
        self.crash_after: int | None = None  # sink writes left before the worker dies
        self.push_during_replay: list[tuple[str, dict]] | None = None
        self.checked_resets: set = set()
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
                after[store.canonical(record)] += 1
        if bad_end:
            batch.append({"delete": {"id": -1, "name": "never inserted"}})
        with self.app.app_context():
            pipeline = pipelines.get_pipeline("default", "orders")
            view = view_data.writable_view(pipeline, "totals")
            parsed = view_data.parse_changes(json.dumps(batch).encode())
            try:
                result = view_data.push_changes(view, parsed)
            except view_data.InvalidRequest as exc:
                assert bad_end and exc.details["index"] == len(batch) - 1
                return
            finally:
                db.session.remove()
        assert not bad_end
        self.model = +after
        if result.last_seq is not None:
            self.at_seq[result.last_seq] = self.model.copy()

    def deliver(self, batch_size: int, max_batches: int, crash: int) -> None:
        """Run one delivery claim; maybe the worker dies after writing, before recording."""
        self.crash_after = 1 if crash else None
        try:
            with self.app.app_context():
                worker = DeliveryWorker("deliverer", batch_size=batch_size, max_batches=max_batches)
                worker.run_once()
        except SimulatedCrash:
            event("a delivery worker died after writing")
        finally:
            self.crash_after = None
            with self.app.app_context():
                db.session.remove()

    def reset(self, run_now: int, crash_after: int, push_during: bool) -> None:
        """Request a reset of the connector, and maybe run it at once."""
        with self.app.app_context():
            resets.request_reset(pipelines.get_pipeline("default", "orders"), "totals", "sink1")
            db.session.remove()
        if run_now:
            self.run_resets(crash_after, push_during)

    def run_resets(self, crash_after: int, push_during: bool) -> None:
        """Run queued resets; maybe die after some sink writes; maybe push meanwhile."""
        self.crash_after = crash_after or None
        if push_during:
            self.push_during_replay = [("insert", {"id": 9, "name": "during"}), ("delete", 0)]
        try:
            with self.app.app_context():
                executor = ResetExecutor("resetter")
                # One at a time: each completed reset is checked before the next starts.
                while executor.run_once():
                    self.check_completed_resets()
        except SimulatedCrash:
            event("a reset died mid-way")
        finally:
            self.crash_after = None
            self.push_during_replay = None
            with self.app.app_context():
                db.session.remove()

    def pause(self) -> None:
        """Pause the pipeline."""
        with self.app.app_context():
            pipelines.pause(pipelines.get_pipeline("default", "orders"))
            db.session.remove()
        self.paused = True

    def resume(self) -> None:
        """Resume the pipeline."""
        with self.app.app_context():
            pipelines.resume(pipelines.get_pipeline("default", "orders"))
            db.session.remove()
        self.paused = False

    def expire_leases(self) -> None:
        """Let every lease run out, as if its holder died long ago."""
        past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        with self.app.app_context():
            db.session.execute(sa.update(Connector).values(lease_expires_at=past))
            db.session.execute(
                sa.update(Reset).where(Reset.lease_owner.is_not(None)).values(lease_expires_at=past)
            )
            db.session.commit()
            db.session.remove()

    # -- the sink as the transport sees it ------------------------------------

    def sink_write(self, real: Any, driver: Any, connector: Any, batch: list, batch_id: str) -> Any:
        """Write to the sink; push changes mid-replay or die as the operation asks."""
        sent = real(driver, connector, batch, batch_id)
        if self.push_during_replay and batch_id.startswith("reset-"):
            changes, self.push_during_replay = self.push_during_replay, None
            event("changes pushed during a replay")
            self.push(changes)
        if self.crash_after is not None:
            self.crash_after -= 1
            if self.crash_after <= 0:
                raise SimulatedCrash
        return sent

    # -- checks -------------------------------------------------------------

    def lines(self) -> list[dict]:
        """The sink file's lines."""
        if not self.sink.exists():
            return []
        return [json.loads(line) for line in self.sink.read_text().splitlines()]

    def check_completed_resets(self) -> None:
        """A reset that just completed left exactly the snapshot of its moment in the sink."""
        with self.app.app_context():
            done = db.session.execute(
                sa.select(Reset).where(Reset.status == ResetStatus.COMPLETE)
            ).scalars()
            new = [r for r in done if r.id not in self.checked_resets]
            connector = db.session.execute(sa.select(Connector)).scalar_one()
            for reset in new:
                self.checked_resets.add(reset.id)
                lines = self.lines()
                assert all(set(line) == {"insert"} for line in lines)
                assert len(lines) == reset.snapshot_records == reset.replayed_records
                expected = self.at_seq[connector.delivered_seq]
                event("a reset completed")
                assert fold(lines) == expected
            db.session.remove()

    def catch_up(self) -> None:
        """Resume, let dead workers' leases run out, finish resets, deliver everything."""
        if self.paused:
            self.resume()
        self.expire_leases()
        self.run_resets(0, False)
        with self.app.app_context():
            DeliveryWorker("final").run_pending()
            connector = db.session.execute(sa.select(Connector)).scalar_one()
            assert connector.delivered_seq == store.log_end(connector.view_id)
            contents = Counter(
                {store.canonical(r): w for r, w in store.contents(connector.view_id)}
            )
            db.session.remove()
        assert contents == self.model
        assert fold(self.lines()) == self.model


def fold(lines: list[dict]) -> Counter:
    """Fold insert/delete lines into a multiset of canonical records."""
    folded: Counter = Counter()
    for line in lines:
        ((op, record),) = line.items()
        folded[store.canonical(record)] += 1 if op == "insert" else -1
    assert all(weight >= 0 for weight in folded.values()), "a delete before its insert"
    return +folded


@pytest.fixture
def harnesses(monkeypatch):
    """Route every sink write through the harness in use."""
    current: list[Harness] = []
    real = FileTransport.deliver

    def deliver(driver, connector, batch, batch_id):
        return current[-1].sink_write(real, driver, connector, batch, batch_id)

    monkeypatch.setattr(FileTransport, "deliver", deliver)
    return current


@pytest.mark.slow
@settings(
    max_examples=30,
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
                if name == "pause" and harness.paused:
                    continue
                if name == "resume" and not harness.paused:
                    continue
                getattr(harness, name)(*args)
            harness.catch_up()
        finally:
            harnesses.pop()
            harness.close()
