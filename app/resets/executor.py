"""The reset executor: moves resets through their phases.

queued -> resetting_sink -> replaying_snapshot -> done

A worker claims a reset with a lease (a conditional ``UPDATE`` in the
database), renews it as it goes and gives up as soon as an update shows it
lost it (the pipeline stopped, or its lease ran out and another worker took
over). A reset whose worker died is taken over once the lease expires and
done again from the start: resetting a sink and replaying a snapshot can be
repeated without changing the outcome.

The reset also holds its connector's lease (taken in the same transaction as
the reset's), so no delivery touches the sink meanwhile. The work:

1. open a snapshot of the view: its log position ``S`` and its Z-set at ``S``,
   read in one read transaction that stays open during the replay, so changes
   pushed meanwhile are not in it (they follow ``S`` in the log);
2. reset the sink, and drop what was buffered: the connector's
   ``delivered_seq`` becomes ``S`` (everything up to it is in the snapshot)
   and a file sink's committed length 0;
3. replay the snapshot in batches (keyset pages; bounded memory), recording
   the file's committed length and ``replayed_records`` after each;
4. complete and give the connector back: delivery streams on from ``S``.
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

from app.connectors.models import Connector
from app.database import utcnow
from app.delivery import leases, sinks
from app.delivery.leases import LeaseLost
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


__all__ = ["REPLAY_BATCH_SIZE", "LeaseLost", "ResetExecutor", "new_owner_id"]


def _released() -> dict[str, Any]:
    """Connector values that give its lease back (the expiry keeps the release time)."""
    return {"lease_owner": None, "lease_expires_at": utcnow()}


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
            sa.select(Reset.id, Reset.connector_id)
            .join(Pipeline, Pipeline.id == Reset.pipeline_id)
            .join(Connector, Connector.id == Reset.connector_id)
            .where(
                Reset.status == ResetStatus.IN_PROGRESS,
                Pipeline.status == PipelineStatus.RUNNING,
                Pipeline.incarnation == Reset.incarnation,
                sa.or_(Reset.lease_owner.is_(None), Reset.lease_expires_at < now),
                leases.lease_is_free(self.owner, now),
            )
            .order_by(Reset.requested_at)
            .limit(10)
        )

    def claim(self) -> Reset | None:
        """Take one reset that nobody holds, with its connector's lease, or return None."""
        now = utcnow()
        candidates = db.session.execute(self._claimable(now)).all()
        db.session.rollback()
        for reset_id, connector_id in candidates:
            # Both leases in one transaction: the reset is ours only with its connector.
            if not leases.take(connector_id, self.owner, self.lease):
                db.session.rollback()
                continue
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
            if result.rowcount == 1:
                db.session.commit()
                return db.session.get(Reset, reset_id, populate_existing=True)
            db.session.rollback()
        return None

    def _advance(
        self, reset: Reset, connector: dict[str, Any] | None = None, **values: Any
    ) -> None:
        """Write progress if the reset and its connector are still ours, renewing both leases.

        ``connector`` holds values for the connector's row, written in the same
        transaction.
        """
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
        if result.rowcount != 1:
            db.session.rollback()
            raise LeaseLost(str(reset.id))
        leases.update_held(reset.connector_id, self.owner, self.lease, **(connector or {}))
        db.session.commit()

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
        target = sinks.target_of(reset.connector)
        # From here on the reset is only written with conditional UPDATEs; detached,
        # its id needs no reload after each commit (nor a row that may be gone).
        db.session.expunge(reset)
        batch_size = int(current_app.config.get("REPLAY_BATCH_SIZE") or REPLAY_BATCH_SIZE)
        try:
            with store.open_snapshot(target.view_id) as snapshot:
                self._advance(reset, phase=ResetPhase.RESETTING_SINK)
                driver = get_transport(target.transport)
                driver.reset(target)
                # Drop what was buffered: the changes up to the snapshot are in it.
                self._advance(
                    reset,
                    connector={
                        "delivered_seq": snapshot.seq,
                        "committed_length": 0,
                        "consecutive_failures": 0,
                        "next_attempt_at": None,
                    },
                    phase=ResetPhase.REPLAYING_SNAPSHOT,
                    snapshot_records=snapshot.records,
                    replayed_records=0,
                )
                replayed = length = 0
                for number, batch in enumerate(snapshot.batches(batch_size)):
                    sent = driver.deliver(target, batch, f"reset-{reset.id.hex}-{number}")
                    replayed += len(batch)
                    before, length = length, sinks.file_length(target)
                    size = sinks.sent_size(target, sent, batch, length - before)
                    self._advance(
                        reset,
                        connector={
                            "committed_length": length,
                            "transmitted_records": Connector.transmitted_records + len(batch),
                            "transmitted_bytes": Connector.transmitted_bytes + size,
                        },
                        replayed_records=replayed,
                    )

            self._advance(
                reset,
                connector={
                    "resets_completed": Connector.resets_completed + 1,
                    **_released(),
                },
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
        """Record a failed reset and give its connector back (delivery goes on)."""
        try:
            self._advance(
                reset,
                connector=_released(),
                status=ResetStatus.FAILED,
                error=message,
                completed_at=utcnow(),
                lease_owner=None,
                lease_expires_at=None,
            )
        except LeaseLost:
            db.session.rollback()
