"""The delivery worker: streams each connector's view changes to its sink.

For one connector at a time a worker takes the connector's lease (with a new
fencing epoch, see :mod:`app.delivery.leases`), then repeatedly reads the next
batch of the view's change log after the connector's ``delivered_seq``, hands
it to the sink and records the new offset in a transaction that checks the
epoch first.

- **file**: the worker opens the sink file while it holds the lease, checks
  it: a file longer than its committed length is cut back to it (a batch
  written but never recorded), one shorter is a damaged sink (the connector
  goes out of sync and is re-snapshotted, never silently extended). Each batch
  is written at the committed offset, and ``committed + bytes written`` is
  recorded with the offset: exactly once.
- **postgres**, **delta** (table sinks, :mod:`app.transports.tables`): each
  batch is applied in one commit of the sink that also records the connector's
  position there; a batch the sink already holds is skipped. The worker reads
  that position when it claims the connector: ahead of its own offset (a
  batch committed in the sink but not recorded here), it catches up; behind
  it, the sink lost what it was given and a snapshot is owed. Exactly once.
- **http**: the batch's seq range is recorded as in flight before it is sent;
  until it is acknowledged, every retry, by this worker or the next, sends
  exactly that range again with the same ``batch_id``: at least once, and
  exactly once for a receiver that drops repeats (see the README).

Delivery runs only while the pipeline runs, the connector is in sync and no
reset of it is queued or under way (the reset replaces what would be sent).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import sqlalchemy as sa
from flask import current_app

from app.connectors.models import Connector, SyncState
from app.database import begin_alone, db_time
from app.delivery import due, leases, reader, sinks
from app.delivery.leases import Lease, LeaseLost
from app.extensions import db
from app.notifications import events
from app.notifications.models import EventType
from app.pipelines.models import Pipeline, PipelineStatus, View
from app.resets.models import Reset, ResetOrigin, ResetStatus
from app.transports import TransportError, get_transport
from app.transports.file import SinkFile, encode_texts
from app.transports.tables import SinkDiverged, SinkMoved, TableSink, is_table_sink
from app.view_data import compaction
from app.view_data.models import ViewLog

log = logging.getLogger(__name__)

# A claim delivers at most this many batches before giving the connector back.
MAX_BATCHES_PER_CLAIM = 50
MAX_ERROR_LENGTH = 1000
# Due connectors one claim looks at (tenants in turn) when called on its own.
CANDIDATES = 20


def error_text(exc: BaseException) -> str:
    """An error's text as stored and logged: control characters escaped, at most 1,000 characters.

    A sink's message can quote what was pushed (PostgreSQL's "invalid input
    syntax for type integer: ..."): a newline there would forge a log line.
    """
    text = str(exc)
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    return text[:MAX_ERROR_LENGTH]


def reset_pending(connector_id: sa.ColumnElement[int]) -> sa.Exists:
    """True while a reset of the connector, in its pipeline's live incarnation, is not over."""
    return (
        sa.exists()
        .where(
            Reset.connector_id == connector_id,
            Reset.status == ResetStatus.IN_PROGRESS,
            Reset.incarnation == Pipeline.incarnation,
        )
        .correlate(Pipeline, Connector)
    )


# Halvings of a batch after failures in a row: 2**20 is beyond any batch size.
MAX_SHRINK = 20


def backoff_seconds(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (doubling, capped)."""
    config = current_app.config
    base = float(config["DELIVERY_RETRY_BASE_SECONDS"])
    return min(float(config["DELIVERY_RETRY_MAX_SECONDS"]), base * 2 ** max(0, failures - 1))


@dataclass
class Position:
    """Where a claimed connector stands: what the sink has, and what is in flight."""

    delivered_seq: int
    committed_length: int
    failures: int
    inflight: tuple[int, int] | None
    skipped_from: int | None = None
    # Where the view's change log starts (compacted_seq): the changes up to it are gone.
    log_start: int = 0
    # Where it ended once the lease was taken (last_seq): what this claim delivers.
    log_end: int = 0
    # The lease was given back with the batch that reached ``log_end``.
    released: bool = False
    # New batches are cut to 1/2**shrink of the batch size (see DeliveryWorker._limits).
    shrink: int = 0


# What a claim reads of its connector, built once: the sink, the position, the log's bounds.
_CLAIMED = (
    sa.select(
        Connector.id,
        Connector.uid,
        Connector.name,
        Connector.transport,
        Connector.config,
        Connector.view_id,
        Connector.lease_epoch,
        Connector.delivered_seq,
        Connector.committed_length,
        Connector.consecutive_failures,
        Connector.inflight_first_seq,
        Connector.inflight_last_seq,
        Connector.skipped_from,
        View.name.label("view_name"),
        Pipeline.name.label("pipeline_name"),
        Pipeline.tenant,
        ViewLog.compacted_seq,
        ViewLog.last_seq,
    )
    .select_from(Connector)
    .join(View, View.id == Connector.view_id)
    .join(Pipeline, Pipeline.id == View.pipeline_id)
    .outerjoin(ViewLog, ViewLog.view_id == Connector.view_id)
    .where(Connector.id == sa.bindparam("cid"))
)


class SinkFault(Exception):
    """The connector cannot go on from where its sink stands: a full snapshot is owed.

    The sink no longer holds what it was given, or the change log no longer
    holds the changes that follow it (compacted away).
    """


class DeliveryWorker:
    """Claims connectors that have changes to deliver, and delivers them."""

    def __init__(
        self,
        owner: str,
        lease_seconds: float | None = None,
        batch_size: int | None = None,
        max_batches: int = MAX_BATCHES_PER_CLAIM,
    ) -> None:
        config = current_app.config
        self.owner = owner
        self.lease_seconds = float(lease_seconds or config["WORKER_LEASE_SECONDS"])
        self.batch_size = int(batch_size or config["DELIVERY_BATCH_SIZE"])
        self.batch_bytes = int(config["DELIVERY_BATCH_BYTES"])
        self.max_batches = max_batches

    # -- claiming -----------------------------------------------------------

    def claim(self) -> Lease | None:
        """Take the lease of one connector that has changes to deliver, or return None.

        Connectors are found through the due index (:mod:`app.delivery.due`),
        tenants in turn; one found with nothing to deliver is settled (taken
        out of the index until an event marks it again), one with other work
        (a reset) is left for the reset executor.
        """
        for connector_id in due.in_turn(CANDIDATES):
            lease = self.claim_connector(connector_id)
            if lease is not None:
                return lease
        return None

    def claim_connector(self, connector_id: int, work: due.Work | None = None) -> Lease | None:
        """Take a connector's lease if it has changes to deliver now; settle it if it has none."""
        work = work or due.work_of(connector_id)
        if work is None or work.kind is due.Kind.HELD:
            return None
        if work.kind is due.Kind.NONE:
            due.settle(work)
            return None
        if work.kind is not due.Kind.DELIVER:
            return None
        begin_alone()  # the take is the claim's one statement
        lease = leases.take(connector_id, self.owner, self.lease_seconds)
        if lease is None:
            db.session.rollback()
            return None
        db.session.commit()
        return lease

    def _may_go_on(self, connector_id: int) -> bool:
        """Whether the connector's pipeline still runs, it is in sync, unpaused, no reset waits."""
        begin_alone()
        row = db.session.execute(
            sa.select(
                Pipeline.status, Connector.sync_state, reset_pending(Connector.id), Connector.paused
            )
            .select_from(Connector)
            .join(View, View.id == Connector.view_id)
            .join(Pipeline, Pipeline.id == View.pipeline_id)
            .where(Connector.id == connector_id)
        ).one_or_none()
        db.session.rollback()
        return (
            row is not None
            and row[0] == PipelineStatus.RUNNING
            and row[1] == SyncState.IN_SYNC
            and not row[2]
            and not row[3]
        )

    # -- delivering ---------------------------------------------------------

    def run_once(self) -> bool:
        """Claim one connector and deliver what it can; return whether there was one."""
        lease = self.claim()
        if lease is None:
            return False
        self.work(lease)
        return True

    def work(self, lease: Lease) -> None:
        """Deliver a claimed connector, giving its lease back whatever happens."""
        try:
            self.deliver(lease)
        except LeaseLost:
            db.session.rollback()
            log.info("connector %s is no longer ours (epoch %s)", lease.connector_id, lease.epoch)
        except Exception:
            db.session.rollback()
            try:
                # Not at once: an error that is not the sink's would come back each claim.
                leases.release(lease, due=db_time(backoff_seconds(1)))
            except Exception:  # the database itself may be what failed; the lease expires
                db.session.rollback()
            raise

    def run_pending(self, limit: int = 10_000) -> int:
        """Deliver until no connector has anything to deliver (or ``limit`` claims)."""
        claims = 0
        while claims < limit and self.run_once():
            claims += 1
        return claims

    def _load(self, lease: Lease) -> tuple[sinks.SinkTarget, Position]:
        """Read the claimed connector's sink and position, and its view's log bounds.

        One statement, read after the lease was taken (so ``log_end`` holds
        every push the lease's ``wakes`` counted), outside a transaction.
        """
        begin_alone()
        row = db.session.execute(_CLAIMED, {"cid": lease.connector_id}).one_or_none()
        db.session.rollback()
        if row is None or row.lease_epoch != lease.epoch:
            raise LeaseLost(f"connector {lease.connector_id}")
        target = sinks.SinkTarget(
            id=row.id,
            uid=str(row.uid),
            name=row.name,
            transport=row.transport,
            config=dict(row.config),
            view_id=row.view_id,
            view=sinks.ViewRef(row.view_name, sinks.PipelineRef(row.pipeline_name, row.tenant)),
        )
        inflight = None
        if row.inflight_first_seq is not None and row.inflight_last_seq is not None:
            inflight = (row.inflight_first_seq, row.inflight_last_seq)
        position = Position(
            row.delivered_seq,
            row.committed_length,
            row.consecutive_failures,
            inflight,
            row.skipped_from,
            row.compacted_seq or 0,
            row.last_seq or 0,
            shrink=min(row.consecutive_failures, MAX_SHRINK),
        )
        return target, position

    def deliver(self, lease: Lease) -> None:
        """Deliver a claimed connector's next batches, then give the connector back."""
        target, position = self._load(lease)
        driver = get_transport(target.transport)
        try:
            if sinks.is_file(target):
                with get_transport("file").open(target) as sink:
                    self._recover_file(lease, sink, position)
                    drained = self._stream(lease, target, position, sink)
            elif is_table_sink(driver):
                held = driver.position(target)
                if position.skipped_from is not None:
                    held = self._record_skip(lease, target, driver, position, held)
                self._catch_up(lease, position, held)
                drained = self._stream(lease, target, position, None, driver)
            else:
                drained = self._stream(lease, target, position, None)
        except (SinkFault, SinkDiverged) as fault:
            self._out_of_sync(lease, error_text(fault))
            return
        except TransportError as exc:
            self._failed(lease, position.failures, exc)
            return
        if not position.released:
            # Drained: nothing more until the next push marks it (app.delivery.due).
            leases.release(lease, due=None if drained else leases.NOW)
        if position.delivered_seq - position.log_start >= compaction.batch_size():
            # The view's log may have a batch to drop now that this connector moved on.
            compaction.mark_due(target.view_id)

    def _record_skip(
        self,
        lease: Lease,
        target: sinks.SinkTarget,
        driver: TableSink,
        position: Position,
        held: int | None,
    ) -> int | None:
        """Have a table sink record a skip the API made; return the sink's position after it.

        The sink's position is between where the skip started and where it
        went (ahead of the start if a batch landed unrecorded before it): it
        is moved, with no changes, to ``delivered_seq``. A position outside
        that range is left for :meth:`_catch_up` to judge.
        """
        start = position.skipped_from
        assert start is not None
        current = held or 0
        if start <= current < position.delivered_seq:
            applied = driver.skip_to(
                target, held=current, to_seq=position.delivered_seq, epoch=lease.epoch
            )
            extra = {} if applied.version is None else {"sink_version": applied.version}
            leases.commit(lease, skipped_from=None, **extra)
            log.info(
                "connector %s: its sink skipped from %d to %d",
                lease.connector_id,
                current,
                position.delivered_seq,
            )
            position.skipped_from = None
            return position.delivered_seq
        if current >= position.delivered_seq:
            leases.commit(lease, skipped_from=None)
            position.skipped_from = None
        return held

    def _catch_up(self, lease: Lease, position: Position, sink_position: int | None) -> None:
        """Line the connector's offset up with the position a table sink recorded.

        Ahead: the sink committed a batch whose record here was lost (a crash
        or a stall between the two commits); the offset moves to it, so the
        batch is not applied twice. Behind: the sink lost what it was given.
        """
        held = sink_position or 0
        if held == position.delivered_seq:
            return
        if held < position.delivered_seq:
            raise SinkFault(
                f"The sink holds position {held}, behind the {position.delivered_seq} "
                "delivered to it: it was changed or restored outside the service"
            )
        leases.commit(lease, delivered_seq=held, inflight_first_seq=None, inflight_last_seq=None)
        log.info(
            "connector %s caught up with its sink: position %d -> %d",
            lease.connector_id,
            position.delivered_seq,
            held,
        )
        position.delivered_seq, position.inflight = held, None

    def _recover_file(self, lease: Lease, sink: SinkFile, position: Position) -> None:
        """Bring a file sink back to its committed length, or report it damaged.

        The descriptor was opened while the lease was held (the check below
        proves it), so it is the sink file, not one a reset replaced since.
        """
        leases.check(lease)
        size = sink.size()
        committed = position.committed_length
        if size < committed:
            raise SinkFault(
                f"The sink file is shorter ({size} bytes) than what was delivered to it "
                f"({committed} bytes): it was truncated or replaced outside the service"
            )
        if size > committed:
            # A batch written but never recorded: cut it off under the fence, so a
            # stale holder can never cut what a newer one has committed.
            leases.renew(lease)
            sink.truncate(committed)
            db.session.commit()
            log.info(
                "cut sink file of connector %s back from %d to %d bytes",
                lease.connector_id,
                size,
                committed,
            )

    def _stream(
        self,
        lease: Lease,
        target: sinks.SinkTarget,
        position: Position,
        sink: SinkFile | None,
        table: TableSink | None = None,
    ) -> bool:
        """Send batches until caught up, out of time, or told to stop; return whether caught up.

        Stored records are passed on as their canonical JSON, never decoded,
        one write (or POST) per batch: ``make bench`` section b measures this.
        The claim has just checked that the connector may stream, so the first
        batch goes without asking again; once it reaches the log end read after
        the lease was taken (``Position.log_end``), it is caught up without
        another read of the log: a push since then marked the connector, which
        the release sees (``wakes``), so it is due again at once.
        """
        if position.inflight is None and position.delivered_seq < position.log_start:
            # Added after the changes it starts from were compacted away.
            raise SinkFault(
                f"The change log no longer holds the changes after position "
                f"{position.delivered_seq} that the sink lacks (it starts after "
                f"{position.log_start})"
            )
        deadline = time.monotonic() + lease.seconds / 3
        driver = get_transport(target.transport)
        for batch in range(self.max_batches):
            if position.inflight is None and position.delivered_seq >= position.log_end:
                return True
            if batch and not self._may_go_on(lease.connector_id):
                return False
            # Pages of the log, each its own snapshot, as in a READ COMMITTED transaction.
            begin_alone()
            if position.inflight is not None:
                first, last = position.inflight
                rows = reader.read_log(target.view_id, first - 1, last - first + 1)
            else:
                rows = reader.read_log(
                    target.view_id, position.delivered_seq, *self._limits(position)
                )
            db.session.rollback()
            if not rows:
                return True
            expected = position.delivered_seq + 1 if position.inflight is None else first
            if rows[0][0] != expected:
                # Seqs are consecutive: a gap means the log lost what the sink lacks.
                raise SinkFault(
                    f"The change log no longer holds the changes after position "
                    f"{expected - 1} that the sink lacks (it starts at {rows[0][0]})"
                )
            if table is not None:
                try:
                    applied = table.apply(target, rows, epoch=lease.epoch)
                except SinkMoved as moved:
                    self._catch_up(lease, position, moved.position)
                    continue
                count = 0 if applied.skipped else len(rows)
                self._delivered(
                    lease, position, rows[-1][0], count, applied.size, False, applied.version
                )
                if time.monotonic() > deadline:
                    return False
                continue
            changes = reader.change_texts(rows)
            first, last = rows[0][0], rows[-1][0]
            del rows
            if sink is not None:
                size = sink.write_at(position.committed_length, encode_texts(changes))
            else:
                if position.inflight is None:
                    # Recorded before sending: any retry sends exactly this range.
                    leases.commit(lease, inflight_first_seq=first, inflight_last_seq=last)
                    position.inflight = (first, last)
                size = driver.send_changes(
                    target,
                    changes,
                    kind="batch",
                    epoch=lease.epoch,
                    first_seq=first,
                    last_seq=last,
                    keep_alive=leases.keep_alive(lease),
                )
            self._delivered(lease, position, last, len(changes), size, sink is not None)
            if time.monotonic() > deadline:
                return False
        return False

    def _delivered(
        self,
        lease: Lease,
        position: Position,
        last: int,
        count: int,
        size: int,
        is_file: bool,
        sink_version: int | None = None,
    ) -> None:
        """Record a delivered batch, if the lease (and so the offset) is still ours.

        The batch that reaches the log's end as read after the lease was taken
        (``Position.log_end``) is the claim's last: it is recorded and the lease
        given back in one statement (the release's ``wakes`` test still sees a
        push made meanwhile, which keeps the connector due).
        """
        committed = position.committed_length + (size if is_file else 0)
        extra = {} if sink_version is None else {"sink_version": sink_version}
        values = dict(
            extra,
            delivered_seq=last,
            committed_length=committed,
            inflight_first_seq=None,
            inflight_last_seq=None,
            transmitted_records=Connector.transmitted_records + count,
            transmitted_bytes=Connector.transmitted_bytes + size,
            consecutive_failures=0,
            next_attempt_at=None,
            last_delivered_at=db_time(),
        )
        if last >= position.log_end:
            leases.commit_and_release(lease, due=None, **values)
            position.released = True
        else:
            leases.commit(lease, **values)
        position.delivered_seq, position.committed_length = last, committed
        position.inflight, position.failures = None, 0
        position.shrink = max(0, position.shrink - 1)

    def _limits(self, position: Position) -> tuple[int, int]:
        """The records and bytes of the next new batch.

        After failures in a row, a new batch is halved per failure, then doubled
        back per delivered batch: a batch that takes longer than an attempt may
        (a sink slowed by load, a trigger run per row) is given up and tried
        again smaller, so the connector moves on, a record at a time at worst,
        instead of failing the same batch for ever. A batch in flight is sent
        again as it was.
        """
        return (
            max(1, self.batch_size >> position.shrink),
            max(1, self.batch_bytes >> position.shrink),
        )

    def _out_of_sync(self, lease: Lease, reason: str) -> None:
        """Mark the connector out of sync (a snapshot is owed) and give it back.

        The redo of its snapshot is queued at once the first time; when the sink
        diverges again and again (a receiver that claims to have lost everything
        at every batch), each redo waits longer (the delivery backoff), and after
        ``REDO_MAX_IN_WINDOW`` redos within ``REDO_WINDOW_SECONDS`` the
        connector is ``failed``, with the reason, until a reset.
        """
        db.session.rollback()
        config = current_app.config
        window = float(config["REDO_WINDOW_SECONDS"])
        begin_alone()
        redone = db.session.execute(
            sa.select(sa.func.count(Reset.id)).where(
                Reset.connector_id == lease.connector_id,
                Reset.origin == ResetOrigin.REDO,
                Reset.requested_at > db_time(-window),
            )
        ).scalar_one()
        db.session.rollback()
        values: dict = {
            "last_error": reason[:MAX_ERROR_LENGTH],
            "last_error_at": db_time(),
            "inflight_first_seq": None,
            "inflight_last_seq": None,
        }
        if redone >= int(config["REDO_MAX_IN_WINDOW"]):
            reason = (
                f"{reason}; its snapshot was redone {redone} times in the last {window:.0f} s, "
                "so it is given up on until a reset (check the sink)"
            )
            log.warning("connector %s failed: %s", lease.connector_id, reason)
            leases.release(
                lease,
                due=None,
                then=events.later(lease.connector_id, EventType.CONNECTOR_FAILED, reason),
                sync_state=SyncState.FAILED,
                sync_reason=reason[:MAX_ERROR_LENGTH],
                **{**values, "last_error": reason[:MAX_ERROR_LENGTH]},
            )
            return
        log.warning("connector %s is out of sync: %s", lease.connector_id, reason)
        # The first redo at once, the next ones further apart (the delivery backoff).
        redo_at = db_time(backoff_seconds(redone)) if redone else leases.NOW
        leases.release(
            lease,
            due=redo_at,
            then=events.later(lease.connector_id, EventType.CONNECTOR_OUT_OF_SYNC, reason),
            sync_state=SyncState.RESETTING,
            sync_reason=reason[:MAX_ERROR_LENGTH],
            next_attempt_at=None if redone == 0 else redo_at,
            **values,
        )

    def _failed(self, lease: Lease, failures: int, exc: TransportError) -> None:
        """Count a failed delivery; back off, or give up on a batch the sink refused."""
        db.session.rollback()
        failures += 1
        message = error_text(exc)
        log.warning(
            "delivery of connector %s failed (%d in a row): %s",
            lease.connector_id,
            failures,
            message,
        )
        values: dict = {
            "transport_errors": Connector.transport_errors + 1,
            "last_error": message,
            "last_error_at": db_time(),
            "consecutive_failures": failures,
            "next_attempt_at": db_time(backoff_seconds(failures)),
        }
        retry: leases.Due = values["next_attempt_at"]
        if exc.poison:
            # Sending it again cannot succeed: stop here, visibly, until a reset.
            values.update(sync_state=SyncState.FAILED, sync_reason=message, next_attempt_at=None)
            retry = None
        leases.release(
            lease,
            due=retry,
            then=events.later(lease.connector_id, EventType.CONNECTOR_FAILED, message)
            if exc.poison
            else None,
            **values,
        )
