"""The delivery worker: streams each connector's view changes to its sink.

For one connector at a time a worker takes the connector's lease (a
conditional ``UPDATE``), cuts a file sink back to its committed length, then
repeatedly reads the next batch of the view's change log after the
connector's ``delivered_seq``, hands it to the transport and records the new
offset (and the file's new length) in one conditional ``UPDATE`` that checks
the lease is still held. A worker killed between writing a batch and
recording it leaves the offset where it was: the next worker cuts the file
back and writes the batch again (file: exactly-once), or sends it again with
the same batch id (http: at-least-once).

Delivery runs only while the pipeline runs, and never while a reset of the
connector is queued or under way (the reset replaces what would be sent).
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import sqlalchemy as sa
from flask import current_app

from app.connectors.models import Connector
from app.database import utcnow
from app.delivery import leases, sinks
from app.delivery.leases import LeaseLost
from app.extensions import db
from app.pipelines.models import Pipeline, PipelineStatus, View
from app.resets.models import Reset, ResetStatus
from app.transports import TransportError, get_transport
from app.view_data import store
from app.view_data.models import ViewLog

log = logging.getLogger(__name__)

# A claim delivers at most this many batches before giving the connector back.
MAX_BATCHES_PER_CLAIM = 50
MAX_ERROR_LENGTH = 1000


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


def batch_id(connector_id: int, first_seq: int, last_seq: int) -> str:
    """The id of a batch: the same batch always gets the same id, so receivers drop repeats."""
    return f"{connector_id}-{first_seq}-{last_seq}"


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
        self.lease = dt.timedelta(seconds=lease_seconds or config["WORKER_LEASE_SECONDS"])
        self.batch_size = int(batch_size or config["DELIVERY_BATCH_SIZE"])
        self.max_batches = max_batches
        self.retry_base = float(config["DELIVERY_RETRY_BASE_SECONDS"])
        self.retry_max = float(config["DELIVERY_RETRY_MAX_SECONDS"])

    # -- claiming -----------------------------------------------------------

    def _claimable(self, now: dt.datetime) -> sa.Select:
        """Connectors of running pipelines with undelivered changes that nobody holds."""
        return (
            sa.select(Connector.id)
            .join(View, View.id == Connector.view_id)
            .join(Pipeline, Pipeline.id == View.pipeline_id)
            .join(ViewLog, ViewLog.view_id == Connector.view_id)
            .where(
                Pipeline.status == PipelineStatus.RUNNING,
                ViewLog.last_seq > Connector.delivered_seq,
                leases.lease_is_free(self.owner, now),
                sa.or_(Connector.next_attempt_at.is_(None), Connector.next_attempt_at <= now),
                ~reset_pending(Connector.id),
            )
            # Served longest ago first (a released lease keeps its release time).
            .order_by(Connector.lease_expires_at.nulls_first(), Connector.id)
            .limit(10)
        )

    def claim(self) -> Connector | None:
        """Take the lease of one connector that has changes to deliver, or return None."""
        candidates = db.session.execute(self._claimable(utcnow())).scalars().all()
        db.session.rollback()
        for connector_id in candidates:
            if leases.take(connector_id, self.owner, self.lease):
                db.session.commit()
                return db.session.get(Connector, connector_id, populate_existing=True)
            db.session.rollback()
        return None

    def _may_go_on(self, connector_id: int) -> bool:
        """Whether the connector's pipeline still runs and no reset waits for it."""
        row = db.session.execute(
            sa.select(Pipeline.status, reset_pending(Connector.id))
            .select_from(Connector)
            .join(View, View.id == Connector.view_id)
            .join(Pipeline, Pipeline.id == View.pipeline_id)
            .where(Connector.id == connector_id)
        ).one_or_none()
        db.session.rollback()
        return row is not None and row[0] == PipelineStatus.RUNNING and not row[1]

    # -- delivering ---------------------------------------------------------

    def run_once(self) -> bool:
        """Claim one connector and deliver what it can; return whether there was one."""
        connector = self.claim()
        if connector is None:
            return False
        connector_id = connector.id
        try:
            self.deliver(connector)
        except LeaseLost:
            log.info("connector %s is no longer ours; leaving it", connector_id)
        except Exception:
            db.session.rollback()
            try:
                leases.release(connector_id, self.owner)
            except Exception:  # the database itself may be what failed; the lease expires
                db.session.rollback()
            raise
        return True

    def run_pending(self, limit: int = 10_000) -> int:
        """Deliver until no connector has anything to deliver (or ``limit`` claims)."""
        claims = 0
        while claims < limit and self.run_once():
            claims += 1
        return claims

    def deliver(self, connector: Connector) -> None:
        """Deliver a claimed connector's next batches, then give the connector back."""
        target = sinks.target_of(connector)
        driver = get_transport(target.transport)
        offset = connector.delivered_seq
        committed = connector.committed_length
        failures = connector.consecutive_failures
        db.session.rollback()
        try:
            length = sinks.cut_back(target, committed)
        except TransportError as exc:
            self._failed(target.id, failures, exc)
            return
        if length != committed:
            leases.update_held(target.id, self.owner, self.lease, committed_length=length)
            db.session.commit()
            committed = length

        deadline = time.monotonic() + self.lease.total_seconds() / 3
        for _batch in range(self.max_batches):
            if not self._may_go_on(target.id):
                break
            rows = store.read_changes(target.view_id, offset, self.batch_size)
            db.session.rollback()
            if not rows:
                break
            records = [store.as_change(weight, text) for _seq, weight, text in rows]
            first, last = rows[0][0], rows[-1][0]
            try:
                sent = driver.deliver(target, records, batch_id(target.id, first, last))
                length = sinks.file_length(target)
            except TransportError as exc:
                self._failed(target.id, failures, exc)
                return
            size = sinks.sent_size(target, sent, records, length - committed)
            self._delivered(target.id, offset, last, length, len(records), size)
            offset, failures, committed = last, 0, length
            if time.monotonic() > deadline:
                break
        leases.release(target.id, self.owner)

    def _delivered(
        self,
        connector_id: int,
        offset: int,
        last: int,
        length: int,
        count: int,
        size: int,
    ) -> None:
        """Record a delivered batch, if the lease and the offset are still ours."""
        result = db.session.execute(
            sa.update(Connector)
            .where(
                Connector.id == connector_id,
                Connector.lease_owner == self.owner,
                Connector.delivered_seq == offset,
            )
            .values(
                delivered_seq=last,
                committed_length=length,
                transmitted_records=Connector.transmitted_records + count,
                transmitted_bytes=Connector.transmitted_bytes + size,
                consecutive_failures=0,
                next_attempt_at=None,
                lease_expires_at=utcnow() + self.lease,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            db.session.rollback()
            raise LeaseLost(f"connector {connector_id}")
        db.session.commit()

    def backoff(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row."""
        return min(self.retry_max, self.retry_base * 2 ** max(0, failures - 1))

    def _failed(self, connector_id: int, failures: int, exc: TransportError) -> None:
        """Count a failed delivery, schedule the retry and give the connector back."""
        now = utcnow()
        failures += 1
        message = str(exc)[:MAX_ERROR_LENGTH]
        log.warning(
            "delivery of connector %s failed (%d in a row): %s", connector_id, failures, message
        )
        leases.release(
            connector_id,
            self.owner,
            transport_errors=Connector.transport_errors + 1,
            last_error=message,
            last_error_at=now,
            consecutive_failures=failures,
            next_attempt_at=now + dt.timedelta(seconds=self.backoff(failures)),
        )
