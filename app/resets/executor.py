"""The reset executor: moves resets through their phases.

queued -> resetting_sink -> replaying_snapshot -> done

A reset is a durable intent. The executor claims a reset together with its
connector's lease (a new fencing epoch, see :mod:`app.delivery.leases`) and,
in that same transaction, marks the connector ``resetting``: from then on the
connector owes a full snapshot and never streams, until a replay completes.
Whatever stops the work half-way (a crash, a stall past the lease, a failed
sink, the pipeline stopping) leaves that mark, so nothing partial is ever
taken for in sync:

- a worker that died or stalled: the lease runs out, another executor takes
  the reset over and does it again from the start;
- a sink that failed: the attempt is retried with backoff, for at least
  ``RESET_MAX_ATTEMPTS`` attempts and ``RESET_RETRY_SECONDS``; then the reset
  fails and the connector is ``failed``;
- the pipeline stopped: the reset is abandoned with its incarnation, and after
  the next start :func:`queue_owed_resets` queues a new one (origin ``redo``).

The work of one attempt:

1. open a snapshot of the view: its log position ``S`` and its Z-set at ``S``,
   read in one read transaction that stays open during the replay;
2. ``resetting_sink``: a file sink gets a new staging file beside it, a table
   sink (postgres, delta) a staging copy; an http sink gets a reset message
   carrying the new epoch and ``S``;
3. ``replaying_snapshot``: the snapshot in batches (keyset pages, bounded
   memory), recording ``replayed_records`` under the fence after each;
4. ``done``: in one fenced transaction the connector's position becomes ``S``
   and it is in sync again, and a file's staging file is renamed over the sink
   while that transaction holds the connector's row: a stale executor can
   never switch its file in. A table sink's staging copy is switched in by one
   commit of the sink, made while that transaction holds the row, and records
   ``S`` in the sink as the connector's position.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import socket
import uuid
from collections import deque
from typing import Any

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.exc import IntegrityError

from app.connectors.models import Connector, SyncState
from app.database import db_time, utcnow
from app.delivery import due, leases, reader, sinks
from app.delivery.leases import Lease, LeaseLost
from app.delivery.worker import MAX_ERROR_LENGTH, backoff_seconds, error_text
from app.extensions import db
from app.notifications import events
from app.notifications.models import EventType
from app.pipelines.models import Pipeline, PipelineStatus, View
from app.resets.models import Reset, ResetOrigin, ResetPhase, ResetStatus, state_given_back
from app.resets.tokens import reset_tokens
from app.transports import TransportError, get_transport
from app.transports.file import StagingFile
from app.transports.tables import TableReset, is_table_sink
from app.view_data import compaction

log = logging.getLogger(__name__)

REPLAY_BATCH_SIZE = 10_000
# How far back the replay-rate sample is kept (see _Progress and reset_status).
RATE_WINDOW_SECONDS = 5.0
# Due connectors one claim looks at (tenants in turn) when called on its own.
CANDIDATES = 20


def new_owner_id() -> str:
    """Return a worker id unique across hosts, processes and threads."""
    return f"{socket.gethostname()[:24]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


__all__ = ["REPLAY_BATCH_SIZE", "LeaseLost", "ResetExecutor", "new_owner_id", "queue_owed_reset"]


def _live() -> sa.ColumnElement[bool]:
    """The reset is still in progress in its pipeline's live, running incarnation."""
    return sa.and_(
        Reset.status == ResetStatus.IN_PROGRESS,
        Pipeline.status == PipelineStatus.RUNNING,
        Pipeline.incarnation == Reset.incarnation,
    )


def _no_reset_in_progress() -> sa.ColumnElement[bool]:
    """No reset of the connector is in progress in its pipeline's live incarnation."""
    return ~sa.exists().where(
        Reset.connector_id == Connector.id,
        Reset.status == ResetStatus.IN_PROGRESS,
        Reset.incarnation == Pipeline.incarnation,
    )


def _owed(connector_id: int) -> sa.Select:
    """The connector, if its pipeline runs and it owes a snapshot with no reset in progress."""
    return (
        sa.select(Connector.sync_reason, Pipeline.id, Pipeline.incarnation)
        .join(View, View.id == Connector.view_id)
        .join(Pipeline, Pipeline.id == View.pipeline_id)
        .where(
            Connector.id == connector_id,
            Connector.sync_state == SyncState.RESETTING,
            Pipeline.status == PipelineStatus.RUNNING,
            _no_reset_in_progress(),
        )
    )


def queue_owed_reset(connector_id: int) -> uuid.UUID | None:
    """Queue a reset of a connector that owes a snapshot and has none in progress.

    Such a connector's reset was cut short by a stop (and abandoned with its
    incarnation), or its sink was found damaged. The new reset's origin is
    ``redo``; its token and history are like any other reset's. Return its
    id, or None when there was nothing to queue.

    One transaction first locks the connector's row and then looks: a reset is
    claimed under the same lock (its lease), so two workers cannot both see
    "none in progress" and queue one each.
    """
    locked = db.session.execute(
        sa.update(Connector)
        .where(Connector.id == connector_id, Connector.sync_state == SyncState.RESETTING)
        .values(sync_state=Connector.sync_state)
        .execution_options(synchronize_session=False)
    )
    row = db.session.execute(_owed(connector_id)).one_or_none() if locked.rowcount == 1 else None
    if row is None:
        db.session.rollback()
        return None
    reason, pipeline_id, incarnation = row
    reset_id = uuid.uuid4()
    db.session.add(
        Reset(
            id=reset_id,
            pipeline_id=pipeline_id,
            connector_id=connector_id,
            incarnation=incarnation,
            queued_connector_id=connector_id,
            origin=ResetOrigin.REDO,
            error=f"Redoing the snapshot the sink owes: {reason}" if reason else None,
            token=reset_tokens().issue(pipeline_id, incarnation, reset_id),
        )
    )
    try:
        db.session.commit()
    except IntegrityError:
        # A reset of it was queued meanwhile (by a request).
        db.session.rollback()
        return None
    log.info("queued a redo of the reset of connector %s: %s", connector_id, reason)
    return reset_id


@functools.lru_cache(maxsize=8)
def _progress_statement(dialect: str, sampled: bool) -> sa.Update:
    """The fenced write of a replay's progress (``ResetExecutor._replayed``), built once.

    Per engine (built in that engine's session), with or without a new rate
    sample (``rate_at``, ``rate_records``).
    """
    columns = Reset.__table__.c
    values: dict[str, Any] = {"replayed_records": sa.bindparam("replayed", type_=sa.BigInteger)}
    if sampled:
        values["rate_at"] = sa.bindparam("sampled_at", type_=columns.rate_at.type)
        values["rate_records"] = sa.bindparam("sampled_records", type_=sa.BigInteger)
    return (
        sa.update(Reset.__table__)
        .where(
            columns.id == sa.bindparam("reset"),
            columns.status == ResetStatus.IN_PROGRESS,
            columns.epoch == sa.bindparam("held_epoch"),
        )
        .values(**values)
    )


class _Progress:
    """A reset's phases and its replay-rate sample, as the executor records them.

    ``phases``: each phase entered, with when it started and ended, in order
    (retries add theirs). The rate sample is where the replay stood about
    ``RATE_WINDOW_SECONDS`` ago; ``reset_status`` measures the rate from it to now.
    """

    def __init__(self, phases: list[dict[str, Any]] | None, requested_at: dt.datetime) -> None:
        self.phases = [dict(p) for p in phases or []]
        if not self.phases:
            self.phases.append(
                {
                    "name": ResetPhase.QUEUED,
                    "started_at": requested_at.isoformat(),
                    "ended_at": None,
                }
            )
        self.points: deque[tuple[dt.datetime, int]] = deque()
        self.sampled: dt.datetime | None = None

    def enter(self, name: str) -> list[dict[str, Any]]:
        """End the open phase and begin ``name`` (``done`` ends at once); return the phases."""
        now = utcnow().isoformat()
        if self.phases and self.phases[-1].get("ended_at") is None:
            self.phases[-1]["ended_at"] = now
        self.phases.append(
            {"name": name, "started_at": now, "ended_at": now if name == ResetPhase.DONE else None}
        )
        return [dict(p) for p in self.phases]

    def sample(self, replayed: int) -> dict[str, Any]:
        """The sample to write after a batch, if it moves: the newest point a window old."""
        now = utcnow()
        self.points.append((now, replayed))
        if self.sampled is None:
            self.sampled = now
            return {"rate_at": now, "rate_records": 0}
        chosen = None
        while self.points and (now - self.points[0][0]).total_seconds() >= RATE_WINDOW_SECONDS:
            chosen = self.points.popleft()
        if chosen is None or chosen[0] <= self.sampled:
            return {}
        self.sampled = chosen[0]
        return {"rate_at": chosen[0], "rate_records": chosen[1]}


class ResetExecutor:
    """Claims resets and carries them out."""

    def __init__(self, owner: str | None = None, lease_seconds: float | None = None) -> None:
        config = current_app.config
        self.owner = owner or new_owner_id()
        self.lease_seconds = float(lease_seconds or config["WORKER_LEASE_SECONDS"])
        self.max_attempts = int(config["RESET_MAX_ATTEMPTS"])
        self.retry_seconds = float(config["RESET_RETRY_SECONDS"])
        self.batch_size = int(config.get("REPLAY_BATCH_SIZE") or REPLAY_BATCH_SIZE)
        self.batch_bytes = int(config["DELIVERY_BATCH_BYTES"])

    # -- claiming -----------------------------------------------------------

    def claim(self) -> tuple[uuid.UUID, Lease] | None:
        """Take one due reset with its connector's lease, or return None.

        Connectors are found through the due index (:mod:`app.delivery.due`),
        tenants in turn. One that owes a snapshot with no reset gets a reset
        queued first (origin ``redo``); one with nothing to do is settled; one
        with changes to deliver is left for the delivery worker.
        """
        for connector_id in due.in_turn(CANDIDATES):
            claimed = self.claim_connector(connector_id)
            if claimed is not None:
                return claimed
        return None

    def claim_connector(
        self, connector_id: int, work: due.Work | None = None
    ) -> tuple[uuid.UUID, Lease] | None:
        """Claim the reset a connector has to run now, queueing a redo first if one is owed."""
        work = work or due.work_of(connector_id)
        if work is None or work.kind is due.Kind.HELD:
            return None
        if work.kind is due.Kind.NONE:
            due.settle(work)
            return None
        reset_id = work.reset_id
        if work.kind is due.Kind.REDO:
            reset_id = queue_owed_reset(connector_id)
        if reset_id is None:
            return None
        return self.claim_reset(reset_id, connector_id)

    def claim_reset(self, reset_id: uuid.UUID, connector_id: int) -> tuple[uuid.UUID, Lease] | None:
        """Take a reset with its connector's lease, if both are free; or return None.

        One transaction takes the lease (a new epoch), marks the connector as
        owing a snapshot, and stamps the reset with the epoch and an attempt.
        """
        # The connector's state before its first attempt: a cancel gives it back.
        db.session.execute(
            sa.update(Reset)
            .where(Reset.id == reset_id, Reset.prior_sync_state.is_(None))
            .values(
                prior_sync_state=sa.select(Connector.sync_state)
                .where(Connector.id == connector_id)
                .scalar_subquery()
            )
            .execution_options(synchronize_session=False)
        )
        lease = leases.take(
            connector_id,
            self.owner,
            self.lease_seconds,
            sync_state=SyncState.RESETTING,
            sync_reason=f"reset {reset_id} is under way",
            inflight_first_seq=None,
            inflight_last_seq=None,
        )
        if lease is None:
            db.session.rollback()
            return None
        result = db.session.execute(
            sa.update(Reset)
            .where(
                Reset.id == reset_id,
                Reset.connector_id == connector_id,
                Reset.status == ResetStatus.IN_PROGRESS,
                sa.or_(Reset.next_attempt_at.is_(None), Reset.next_attempt_at <= db_time()),
            )
            .values(
                lease_owner=self.owner,
                epoch=lease.epoch,
                attempts=Reset.attempts + 1,
                next_attempt_at=None,
                queued_connector_id=None,
                started_at=sa.func.coalesce(Reset.started_at, db_time()),
                # An attempt that ended mid-replay without a word (its executor died or
                # stalled) may have died switching its copy in: the sink may hold the
                # snapshot already, so this reset is no longer cancelled (see cancel_reset).
                prior_sync_state=sa.case(
                    (Reset.phase == ResetPhase.REPLAYING_SNAPSHOT, SyncState.RESETTING),
                    else_=Reset.prior_sync_state,
                ),
                phase=ResetPhase.RESETTING_SINK,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            db.session.commit()
            return reset_id, lease
        db.session.rollback()
        return None

    def _advance(self, reset_id: uuid.UUID, lease: Lease, connector: dict | None = None, **values):
        """Write progress under the fence: the reset and its connector must still be ours.

        ``connector`` holds values for the connector's row, written in the same
        transaction. The caller commits.
        """
        leases.renew(lease, **(connector or {}))
        result = db.session.execute(
            sa.update(Reset)
            .where(
                Reset.id == reset_id,
                Reset.status == ResetStatus.IN_PROGRESS,
                Reset.epoch == lease.epoch,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            db.session.rollback()
            raise LeaseLost(f"reset {reset_id}")

    def _replayed(
        self, reset_id: uuid.UUID, lease: Lease, records: int, size: int, replayed: int
    ) -> None:
        """:meth:`_advance` after a replayed batch, with statements built once; the caller commits.

        The connector's counters grow by the batch, the lease is renewed, and
        the reset records ``replayed`` (and a new rate sample when one is due).
        """
        counters = {
            "transmitted_records": records,
            "transmitted_bytes": size,
            "replayed_records": records,
        }
        leases.renew(lease, added=counters)
        sample = self._progress.sample(replayed)
        statement = _progress_statement(db.session.get_bind().dialect.name, bool(sample))
        params = {"reset": reset_id, "held_epoch": lease.epoch, "replayed": replayed}
        if sample:
            params.update(sampled_at=sample["rate_at"], sampled_records=sample["rate_records"])
        if db.session.execute(statement, params).rowcount != 1:
            db.session.rollback()
            raise LeaseLost(f"reset {reset_id}")

    # -- doing --------------------------------------------------------------

    def run_once(self) -> bool:
        """Claim and carry out one reset (a redo queued if owed); return whether there was one."""
        claimed = self.claim()
        if claimed is None:
            return False
        self.execute(*claimed)
        return True

    def run_pending(self, limit: int = 1000) -> int:
        """Carry out resets until none is left (or ``limit``); return how many."""
        done = 0
        while done < limit and self.run_once():
            done += 1
        return done

    def execute(self, reset_id: uuid.UUID, lease: Lease) -> None:
        """Carry out one attempt of a claimed reset, recording its outcome."""
        connector = db.session.get(Connector, lease.connector_id, populate_existing=True)
        target = sinks.target_of(connector)
        known = db.session.execute(
            sa.select(Reset.phases, Reset.requested_at).where(Reset.id == reset_id)
        ).one_or_none()
        db.session.rollback()
        self._progress = _Progress(*(known or (None, utcnow())))
        staging: StagingFile | TableReset | None = None
        try:
            with reader.open_snapshot(target.view_id) as snapshot:
                self._advance(
                    reset_id,
                    lease,
                    phase=ResetPhase.RESETTING_SINK,
                    phases=self._progress.enter(ResetPhase.RESETTING_SINK),
                )
                db.session.commit()
                staging = self._reset_sink(target, lease, snapshot.seq)
                self._advance(
                    reset_id,
                    lease,
                    # An http sink was told to reset: its position is the snapshot's now.
                    # A staged one keeps its position (and so its place in the log) until
                    # the switch: a cancel leaves it streaming on from there.
                    connector={"delivered_seq": snapshot.seq, "committed_length": 0}
                    if staging is None
                    else None,
                    phase=ResetPhase.REPLAYING_SNAPSHOT,
                    phases=self._progress.enter(ResetPhase.REPLAYING_SNAPSHOT),
                    snapshot_records=snapshot.records,
                    replayed_records=0,
                    **self._progress.sample(0),
                )
                db.session.commit()
                replayed = 0
                for batch in snapshot.batches(self.batch_size, self.batch_bytes):
                    size = self._replay(target, lease, staging, batch, replayed, snapshot.seq)
                    replayed += len(batch)
                    self._replayed(reset_id, lease, len(batch), size, replayed)
                    db.session.commit()
                self._complete(reset_id, lease, staging, snapshot.seq)
                staging = None
            # The connector jumped to the snapshot's position: the log behind may go.
            compaction.mark_due(target.view_id)
        except LeaseLost:
            db.session.rollback()
            log.info("reset %s is no longer ours (epoch %s); leaving it", reset_id, lease.epoch)
            self._let_go(lease, reset_id)
        except TransportError as exc:
            db.session.rollback()
            self._attempt_failed(reset_id, lease, error_text(exc), give_up=exc.poison)
        except Exception:
            db.session.rollback()
            log.exception("reset %s failed", reset_id)
            self._attempt_failed(
                reset_id, lease, f"Internal error; see the server log for reset {reset_id}"
            )
        finally:
            if staging is not None:
                staging.discard()

    def _reset_sink(
        self, target: sinks.SinkTarget, lease: Lease, seq: int
    ) -> StagingFile | TableReset | None:
        """Ask the sink to reset: a staging file or copy, or a reset message to an http sink."""
        if sinks.is_file(target):
            return get_transport("file").staging(target, lease.epoch)
        driver = get_transport(target.transport)
        if is_table_sink(driver):
            return driver.begin_reset(target, lease.epoch, keep_alive=leases.keep_alive(lease))
        driver.reset(
            target, epoch=lease.epoch, snapshot_seq=seq, keep_alive=leases.keep_alive(lease)
        )
        return None

    def _replay(
        self,
        target: sinks.SinkTarget,
        lease: Lease,
        staging: StagingFile | TableReset | None,
        batch: list[str],
        replayed: int,
        seq: int,
    ) -> int:
        """Send one snapshot batch (stored records' JSON texts, not decoded); return its bytes."""
        if isinstance(staging, StagingFile):
            return staging.append_records(batch)
        if staging is not None:
            return staging.append(batch)
        return get_transport(target.transport).send_changes(
            target,
            reader.insert_texts(batch),
            kind="snapshot",
            epoch=lease.epoch,
            first_seq=replayed + 1,
            last_seq=replayed + len(batch),
            snapshot_seq=seq,
            keep_alive=leases.keep_alive(lease),
        )

    def _complete(
        self,
        reset_id: uuid.UUID,
        lease: Lease,
        staging: StagingFile | TableReset | None,
        seq: int,
    ) -> None:
        """Put the connector back in sync at ``seq`` and give it back, in one fenced commit."""
        if isinstance(staging, StagingFile):
            staging.sync()
        connector: dict[str, Any] = {
            "sync_state": SyncState.IN_SYNC,
            "sync_reason": None,
            "delivered_seq": seq,
            "inflight_first_seq": None,
            "inflight_last_seq": None,
            "consecutive_failures": 0,
            "next_attempt_at": None,
            "resets_completed": Connector.resets_completed + 1,
            # The snapshot supersedes any skip a table sink had yet to record.
            "skipped_from": None,
            # Given back due now: changes pushed during the replay stream next.
            **leases.given_back(lease),
        }
        if isinstance(staging, StagingFile):
            connector["committed_length"] = staging.length

        def fence() -> None:
            self._advance(
                reset_id,
                lease,
                connector=connector,
                phase=ResetPhase.DONE,
                phases=self._progress.enter(ResetPhase.DONE),
                status=ResetStatus.COMPLETE,
                completed_at=db_time(),
                error=None,
                lease_owner=None,
            )
            events.reset_ended(reset_id, EventType.RESET_COMPLETED)

        if staging is not None and not isinstance(staging, StagingFile):
            # The sink commits while the update in fence() holds the connector's
            # row (until the commit below): only the lease holder switches in.
            version = staging.switch_in(seq, fence)
            if version is not None:
                db.session.execute(
                    sa.update(Connector)
                    .where(Connector.id == lease.connector_id)
                    .values(sink_version=version)
                    .execution_options(synchronize_session=False)
                )
            db.session.commit()
            return
        fence()
        if staging is not None:
            # The row is locked by the update above until the commit: the switch
            # happens only while this executor holds the lease.
            try:
                staging.switch_in()
            except TransportError:
                db.session.rollback()
                raise
        db.session.commit()

    def _let_go(self, lease: Lease, reset_id: uuid.UUID | None = None) -> None:
        """Give the connector's lease back if it is still ours (the reset went elsewhere).

        A reset that was cancelled gives the connector back as it was before
        the reset (its staging copy, never switched in, is dropped by the caller).
        """
        try:
            values: dict[str, Any] = {}
            if reset_id is not None:
                row = db.session.execute(
                    sa.select(Reset.status, Reset.prior_sync_state).where(Reset.id == reset_id)
                ).one_or_none()
                if row is not None and row.status == ResetStatus.CANCELLED:
                    values = state_given_back(row.prior_sync_state)
            leases.release(lease, **values)
        except Exception:  # the lease runs out by itself
            db.session.rollback()

    def _attempt_failed(
        self, reset_id: uuid.UUID, lease: Lease, message: str, give_up: bool = False
    ) -> None:
        """Retry a failed attempt with backoff, or, out of its budget, fail reset and connector.

        The budget: ``RESET_MAX_ATTEMPTS`` attempts *and* ``RESET_RETRY_SECONDS``
        since the reset started, so that a sink down for minutes (a database
        restarting, a disk remounted) is ridden out as streaming rides it out.
        A sink that refused a message (``give_up``) fails it at once.
        """
        message = message[:MAX_ERROR_LENGTH]
        row = db.session.execute(
            sa.select(Reset.attempts, Reset.started_at, db_time()).where(Reset.id == reset_id)
        ).one_or_none()
        db.session.rollback()
        if row is None:
            return self._let_go(lease)
        attempts, started_at, now = row
        elapsed = 0.0 if started_at is None else (now - started_at).total_seconds()
        final = give_up or (attempts >= self.max_attempts and elapsed >= self.retry_seconds)
        log.warning(
            "reset %s: attempt %d failed after %.0f s of a %.0f s budget%s: %s",
            reset_id,
            attempts,
            elapsed,
            self.retry_seconds,
            "; giving up" if final else "",
            message,
        )
        connector: dict[str, Any] = {
            "transport_errors": Connector.transport_errors + 1,
            "last_error": message,
            "last_error_at": db_time(),
        }
        values: dict[str, Any] = {"error": message, "lease_owner": None}
        values["phases"] = self._progress.enter(ResetPhase.QUEUED)
        if final:
            values["phases"][-1]["ended_at"] = values["phases"][-1]["started_at"]
            # Failed until someone resets it again (a request marks it then).
            connector.update(
                sync_state=SyncState.FAILED,
                sync_reason=message,
                resets_failed=Connector.resets_failed + 1,
            )
            connector.update(leases.given_back(lease, due=None))
            values.update(status=ResetStatus.FAILED, completed_at=db_time())
        else:
            retry = db_time(backoff_seconds(attempts))
            # The connector's stats show when the reset is tried again.
            connector.update(leases.given_back(lease, due=retry), next_attempt_at=retry)
            values.update(phase=ResetPhase.QUEUED, next_attempt_at=retry)
        try:
            self._advance(reset_id, lease, connector=connector, **values)
            if final:  # told in the same commit
                events.reset_ended(reset_id, EventType.RESET_FAILED)
                events.connector_changed(lease.connector_id, EventType.CONNECTOR_FAILED, message)
            db.session.commit()
        except LeaseLost:  # cancelled, or taken over: the connector is given back
            db.session.rollback()
            self._let_go(lease, reset_id)
