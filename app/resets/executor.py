"""The reset executor: moves resets through their phases.

queued -> resetting_sink -> replaying_snapshot -> done

A worker claims a reset with a lease (a conditional ``UPDATE`` in the
database), renews it as it goes and gives up as soon as an update shows it
lost it (the pipeline stopped, or its lease ran out and another worker took
over). A reset whose worker died is taken over once the lease expires and
done again from the start: resetting a sink and replaying a snapshot can be
repeated without changing the outcome.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import uuid
from typing import Any

import sqlalchemy as sa
from flask import current_app

from app.database import utcnow
from app.extensions import db
from app.pipelines.models import Pipeline, PipelineStatus
from app.resets.models import Reset, ResetPhase, ResetStatus
from app.transports import TransportError, get_transport
from app.view_data import store

log = logging.getLogger(__name__)

REPLAY_BATCH_SIZE = 1000


def new_owner_id() -> str:
    """Return a worker id unique across hosts, processes and threads."""
    return f"{socket.gethostname()[:24]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class LeaseLost(Exception):
    """The reset is no longer this worker's to do."""


class ResetExecutor:
    """Claims resets and carries them out."""

    def __init__(self, owner: str | None = None, lease_seconds: float | None = None) -> None:
        self.owner = owner or new_owner_id()
        self.lease = dt.timedelta(
            seconds=lease_seconds or current_app.config["WORKER_LEASE_SECONDS"]
        )

    # -- claiming -----------------------------------------------------------

    def _claimable(self, now: dt.datetime) -> sa.Select:
        return (
            sa.select(Reset.id)
            .join(Pipeline, Pipeline.id == Reset.pipeline_id)
            .where(
                Reset.status == ResetStatus.IN_PROGRESS,
                Pipeline.status == PipelineStatus.RUNNING,
                Pipeline.incarnation == Reset.incarnation,
                sa.or_(Reset.lease_owner.is_(None), Reset.lease_expires_at < now),
            )
            .order_by(Reset.requested_at)
            .limit(10)
        )

    def claim(self) -> Reset | None:
        """Take one reset that nobody holds, or return None."""
        now = utcnow()
        for reset_id in db.session.execute(self._claimable(now)).scalars().all():
            result = db.session.execute(
                sa.update(Reset)
                .where(
                    Reset.id == reset_id,
                    Reset.status == ResetStatus.IN_PROGRESS,
                    sa.or_(Reset.lease_owner.is_(None), Reset.lease_expires_at < now),
                )
                .values(
                    lease_owner=self.owner,
                    lease_expires_at=now + self.lease,
                    queued_connector_id=None,
                    started_at=sa.func.coalesce(Reset.started_at, now),
                    phase=ResetPhase.RESETTING_SINK,
                )
            )
            db.session.commit()
            if result.rowcount == 1:
                return db.session.get(Reset, reset_id, populate_existing=True)
        db.session.rollback()
        return None

    def _advance(self, reset: Reset, **values: Any) -> None:
        """Write progress if the reset is still ours, renewing the lease."""
        now = utcnow()
        result = db.session.execute(
            sa.update(Reset)
            .where(
                Reset.id == reset.id,
                Reset.status == ResetStatus.IN_PROGRESS,
                Reset.lease_owner == self.owner,
            )
            .values(**{"lease_expires_at": now + self.lease, **values})
        )
        db.session.commit()
        if result.rowcount != 1:
            raise LeaseLost(str(reset.id))

    # -- doing --------------------------------------------------------------

    def run_once(self) -> bool:
        """Claim and carry out one reset; return whether there was one."""
        reset = self.claim()
        if reset is None:
            return False
        self.execute(reset)
        return True

    def run_pending(self, limit: int = 1000) -> int:
        """Carry out resets until none is left (or ``limit``); return how many."""
        done = 0
        while done < limit and self.run_once():
            done += 1
        return done

    def execute(self, reset: Reset) -> None:
        """Carry out a claimed reset, recording success or failure."""
        connector = reset.connector
        try:
            self._advance(reset, phase=ResetPhase.RESETTING_SINK)
            store.drop_buffered(connector)
            get_transport(connector.transport).reset(connector)

            total = store.snapshot_count(connector.view_id)
            self._advance(
                reset,
                phase=ResetPhase.REPLAYING_SNAPSHOT,
                snapshot_records=total,
                replayed_records=0,
            )
            replayed = 0
            driver = get_transport(connector.transport)
            for number, batch in enumerate(
                store.snapshot_batches(connector.view_id, REPLAY_BATCH_SIZE)
            ):
                driver.deliver(connector, batch, f"reset-{reset.id.hex}-{number}")
                replayed += len(batch)
                self._advance(reset, replayed_records=replayed)

            self._advance(
                reset,
                phase=ResetPhase.DONE,
                status=ResetStatus.COMPLETE,
                completed_at=utcnow(),
                lease_owner=None,
                lease_expires_at=None,
            )
        except LeaseLost:
            db.session.rollback()
            log.info("reset %s is no longer ours; leaving it", reset.id)
        except TransportError as exc:
            db.session.rollback()
            self._fail(reset, str(exc))
        except Exception:
            db.session.rollback()
            log.exception("reset %s failed", reset.id)
            self._fail(reset, f"Internal error; see the server log for reset {reset.id}")

    def _fail(self, reset: Reset, message: str) -> None:
        try:
            self._advance(
                reset,
                status=ResetStatus.FAILED,
                error=message,
                completed_at=utcnow(),
                lease_owner=None,
                lease_expires_at=None,
            )
        except LeaseLost:
            db.session.rollback()
