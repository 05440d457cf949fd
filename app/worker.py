"""The worker: runs resets, delivery, notifications and compaction outside the request path.

A process runs one :class:`Dispatcher`. Its poller thread finds due
connectors through the due index (:mod:`app.delivery.due`), taking tenants in
turn, takes each one's lease and hands it to one of ``DELIVERY_CONCURRENCY``
threads, which delivers its changes or runs its reset and gives the lease
back. A sink that hangs holds up its own thread; the others go on. When a
notification is due (:mod:`app.notifications.delivery`), one thread at a time
sends what is due, tenants in turn. Between
looks the poller sleeps until there can be work: rung in process, told by the
database across processes (:mod:`app.delivery.wake`), woken when timed work
(a retry, a lease running out) comes due, and at the latest every
``WORKER_POLL_INTERVAL`` seconds, a safety net. An idle service costs about
nothing, whatever its number of connectors (``make bench-scale``).

Which process does which connector is decided by leases in the database
(:mod:`app.delivery.leases`), so any number of dispatchers can run at once, in
any number of processes on any number of hosts. Where one runs:

- ``gunicorn wsgi:app`` (``make serve``): in delivery processes of their own,
  beside the request workers, started, watched and stopped by gunicorn
  (``gunicorn.conf.py``, :mod:`app.serving`);
- ``pipeline-manager worker``: in the foreground;
- ``pipeline-manager run`` (``make run``), or any other server: in a background thread of
  the serving process (``BACKGROUND_WORKER``), started with the first request.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app

from app.database import (
    db_time,
    insert_ignoring_duplicates,
    is_transient_error,
    schema_problem,
    work_listener,
)
from app.delivery import due, wake
from app.delivery.leases import Lease
from app.delivery.models import WorkerProcess
from app.extensions import db

log = logging.getLogger(__name__)

# Connectors of one tenant the poller looks at per turn, and how many it looks
# at in one round before it checks its doorbell again.
CANDIDATES_PER_TENANT = 16
MAX_LOOKS_PER_ROUND = 256
# Notification deliveries one pass sends at most (a pass starts none after the
# attempt timeout, NOTIFICATION_TIMEOUT_SECONDS, so slow receivers hold a thread
# for two timeouts at most); what is left is due at once for the next pass.
NOTIFICATIONS_PER_PASS = 100
# A worker process whose heartbeat is older than this many leases is gone: its row goes.
STALE_LEASES = 10

_started_in_pid: int | None = None
# When this process's poller last came round (time.monotonic()); see heartbeat_age.
_heartbeat: float | None = None
_start_lock = threading.Lock()
# This process's background worker: its thread and the event that stops it.
_background: tuple[threading.Thread, threading.Event] | None = None


def run_once(executor: object | None = None, delivery: object | None = None) -> bool:
    """Do one unit of work of every kind, resets first; return whether any was found.

    For tests and tools that drive the worker step by step, in the calling thread.
    """
    from app.delivery.worker import DeliveryWorker
    from app.resets.executor import ResetExecutor

    executor = executor or ResetExecutor()
    delivery = delivery or DeliveryWorker(owner=executor.owner)  # type: ignore[attr-defined]
    busy = executor.run_once()  # type: ignore[attr-defined]
    return delivery.run_once() or busy  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Job:
    """A piece of work handed to a thread: a claimed connector, or a compaction or notify pass."""

    kind: str  # "deliver", "reset", "compact" or "notify"
    tenant: str = ""
    lease: Lease | None = None
    reset_id: uuid.UUID | None = None


class Slot:
    """One delivery thread: its own lease owner id, and an inbox of one job at a time."""

    def __init__(self, number: int) -> None:
        from app.resets.executor import new_owner_id

        self.number = number
        self.owner = new_owner_id()
        self.inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.delivery: Any = None
        self.executor: Any = None


class Dispatcher:
    """One poller that finds and claims due work, and the threads that do it."""

    def __init__(
        self,
        app: Flask,
        stop: threading.Event,
        threads: int | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        from app.delivery.worker import DeliveryWorker
        from app.resets.executor import ResetExecutor, new_owner_id

        config = app.config
        self.app = app
        self.stop = stop
        # Checked every round: False ends the dispatcher (its process was orphaned).
        self.alive = alive or (lambda: True)
        count = max(1, int(threads or config["DELIVERY_CONCURRENCY"]))
        self.safety_net = max(0.01, float(config["WORKER_POLL_INTERVAL"]))
        self.wake_check = float(config["WORKER_WAKE_CHECK_SECONDS"])
        self.lease_seconds = float(config["WORKER_LEASE_SECONDS"])
        self.heartbeat_every = min(5.0, self.lease_seconds / 3)
        cap = config.get("TENANT_MAX_CONCURRENT_CLAIMS")
        self.tenant_cap = max(1, int(cap) if cap else count - 1)
        self.compaction_every = float(config["COMPACTION_INTERVAL_SECONDS"])
        self.identity = new_owner_id()
        self.doorbell = wake.install()
        self.slots = [Slot(n) for n in range(count)]
        with app.app_context():
            for slot in self.slots:
                slot.executor = ResetExecutor(owner=slot.owner)
                slot.delivery = DeliveryWorker(owner=slot.owner)
        self._lock = threading.Lock()
        self._free = list(self.slots)
        self._busy: Counter[str] = Counter()
        self._compacting = False
        self._notifying = False
        # The last look for due notifications (time.monotonic()), and when the earliest
        # pending one is due, as that look saw it (None: none was).
        self._notifications_looked = -math.inf
        self._notification_due: float | None = None
        self.notification_look_every = float(config["NOTIFICATION_LOOK_SECONDS"])
        self._last_compaction = 0.0
        self._last_beat = 0.0
        self._last_tenant: str | None = None
        self._failures = 0

    # -- the poller ---------------------------------------------------------------------------

    def run(self) -> None:
        """Poll and hand out work until ``stop`` is set, then stop the threads."""
        global _heartbeat
        for slot in self.slots:
            slot.thread = threading.Thread(
                target=self._serve, args=(slot,), name=f"pipeline-worker-{slot.number}", daemon=True
            )
            slot.thread.start()
        log.info("worker %s started with %d threads", self.identity, len(self.slots))
        listener = None
        told = False
        try:
            while not self.stop.is_set():
                if not self.alive():
                    log.warning("worker %s: its parent process is gone; stopping", self.identity)
                    break
                _heartbeat = time.monotonic()
                wait = self.safety_net
                with self.app.app_context():
                    try:
                        problem = schema_problem()
                        if problem is not None:
                            # Said once, not every poll: the fix is the operator's.
                            if not told:
                                log.warning("worker waiting: %s", problem)
                            told = True
                        else:
                            if listener is None:
                                listener = work_listener(db.engine, self.wake_check)
                            self._beat()
                            self.doorbell.drain()
                            wait = self.poll()
                    except Exception as exc:
                        db.session.rollback()
                        wait = self._failed(exc)
                    else:
                        self._recovered()
                    finally:
                        db.session.remove()
                if wait > 0 and not self.stop.is_set():
                    # Awake at least once a heartbeat; a stop rings the doorbell.
                    timeout = min(wait, self.heartbeat_every)
                    if listener is None:
                        self.stop.wait(timeout)
                    else:
                        listener.wait(timeout, self.doorbell.fileno())
        finally:
            self._shut_down(listener)

    def _shut_down(self, listener: Any) -> None:
        for slot in self.slots:
            slot.inbox.put(None)
        for slot in self.slots:
            if slot.thread is not None:
                # Each finishes the claim it is on, which gives its lease back.
                slot.thread.join(timeout=self.lease_seconds)
        if listener is not None:
            listener.close()
        with self.app.app_context():
            try:
                db.session.execute(
                    sa.delete(WorkerProcess).where(WorkerProcess.id == self.identity)
                )
                db.session.commit()
            except Exception:  # the database may be what stopped us; the row goes stale
                db.session.rollback()
            finally:
                db.session.remove()
        log.info("worker %s stopped", self.identity)

    def _failed(self, exc: Exception) -> float:
        """Note a failed round: one log line when the trouble starts, then back off.

        While the database is down every round fails the same way: a line (and a
        traceback for what is not the database's trouble) per change of state,
        not per round, and rounds spaced out up to the safety net's interval.
        """
        self._failures += 1
        if self._failures == 1:
            if is_transient_error(exc):
                log.warning(
                    "worker %s: database unavailable (%s); backing off",
                    self.identity,
                    type(exc).__name__,
                )
            else:
                log.exception("worker %s: poll failed; retrying", self.identity)
        return min(self.safety_net, 0.1 * 2 ** min(self._failures, 10))

    def _recovered(self) -> None:
        """Say once that rounds succeed again."""
        if self._failures:
            log.info(
                "worker %s: working again after %d failed rounds", self.identity, self._failures
            )
        self._failures = 0

    def poll(self) -> float:
        """One round: hand due connectors to free threads; return the seconds to wait.

        Tenants with due connectors are taken in turn, starting after the one
        served last, one claim each per pass; a tenant already holding
        ``TENANT_MAX_CONCURRENT_CLAIMS`` of this process's threads waits for
        one of them. Returns 0 when there may be more to hand out at once.
        """
        wait = min(self.safety_net, self._compaction(), self._notifications())
        if not self._has_free():
            return wait  # a thread that comes free rings the doorbell
        tenants = due.due_tenants()
        later = [t.next_due - t.now for t in tenants if not t.ready]
        if later:
            wait = min(wait, max(0.0, min(later).total_seconds()) + 0.001)
        skewed = {t.tenant for t in tenants if t.skewed}
        names = sorted(t.tenant for t in tenants if t.ready)
        if not names:
            return wait
        if self._last_tenant is not None:
            cut = next((i for i, name in enumerate(names) if name > self._last_tenant), 0)
            names = names[cut:] + names[:cut]
        looked = 0
        done_with: set[str] = set()
        moved = False
        capped = {name for name in names if self._busy[name] >= self.tenant_cap}
        while self._has_free() and looked < MAX_LOOKS_PER_ROUND:
            progress = False
            for tenant in names:
                if tenant in done_with or not self._has_free():
                    continue
                if self._busy[tenant] >= self.tenant_cap:
                    continue
                ids = due.candidates(tenant, CANDIDATES_PER_TENANT, tenant in skewed)
                works = due.works_of(ids, self.lease_seconds)
                looked += len(ids)
                # Those with nothing to do leave the index, all in one transaction.
                idle = [w for w in works if w.kind is due.Kind.NONE]
                due.settle_all(idle)
                # A tenant's share of the free threads this pass: one each when several
                # tenants wait, more when fewer do (and never past its cap).
                share = max(1, self._free_count() // max(1, len(set(names) - done_with)))
                handed = 0
                for work in works:
                    if work.kind in (due.Kind.NONE, due.Kind.HELD):
                        continue
                    if handed >= share or self._busy[tenant] >= self.tenant_cap:
                        break
                    if self._claim(work) == "handed":
                        self._last_tenant = tenant
                        handed += 1
                if handed or idle:
                    progress = True
                else:
                    done_with.add(tenant)  # nothing it has can be taken now
            if not progress:
                break
            moved = True
        # Again at once only if some tenant may have more to take now; otherwise a
        # thread coming free, a new event or the timer rings the doorbell.
        more = set(names) - done_with - capped
        return 0.0 if moved and more and self._has_free() else wait

    def _claim(self, work: due.Work) -> str:
        """Claim a connector that has work for a free thread: "handed" or "skipped"."""
        connector_id = work.connector_id
        slot = self._take_slot()
        if slot is None:
            return "skipped"
        job: Job | None = None
        if work.kind is due.Kind.DELIVER:
            lease = slot.delivery.claim_connector(connector_id, work)
            if lease is not None:
                job = Job("deliver", work.tenant, lease)
        else:
            claimed = slot.executor.claim_connector(connector_id, work)
            if claimed is not None:
                job = Job("reset", work.tenant, claimed[1], claimed[0])
        if job is None:
            self._give_back(slot, None)
            return "skipped"
        with self._lock:
            self._busy[job.tenant] += 1
        slot.inbox.put(job)
        return "handed"

    def _compaction(self) -> float:
        """Hand a compaction pass to a free thread if a view is due; return seconds to the next."""
        if self.compaction_every <= 0 or self._compacting:
            return self.safety_net
        since = time.monotonic() - self._last_compaction
        if since < self.compaction_every:
            return self.compaction_every - since
        from app.view_data import compaction

        next_due = compaction.next_due()
        if next_due is None:
            # Looked once per interval, not at every round (a mark wakes a round later).
            self._last_compaction = time.monotonic()
            return self.safety_net
        slot = self._take_slot()
        if slot is None:
            return self.safety_net
        self._compacting = True
        self._last_compaction = time.monotonic()
        slot.inbox.put(Job("compact"))
        return self.compaction_every

    def _notifications(self) -> float:
        """Hand a notification pass to a free thread if a delivery is due; return seconds to one.

        One pass at a time in this process (its end rings the doorbell); the
        passes of other processes take other deliveries, each claimed in the
        database (:mod:`app.notifications.delivery`). The look is one indexed
        read, made at most every ``NOTIFICATION_LOOK_SECONDS`` (and when what
        the last look saw comes due): a round woken by a push does not pay for
        it, and an event emitted meanwhile (which wakes the poller) is looked
        for that much later at most. An idle poller looks once a safety-net round.
        """
        if self._notifying:
            return self.safety_net
        now = time.monotonic()
        due = self._notification_due
        next_look = self._notifications_looked + self.notification_look_every
        if now < next_look and (due is None or now < due):
            return min(next_look, math.inf if due is None else due) - now
        from app.notifications import delivery as notifications

        due_in = notifications.due_in()
        self._notifications_looked = now
        self._notification_due = None if due_in is None else now + max(0.0, due_in)
        if due_in is None:
            return self.safety_net  # an emit wakes the poller
        if due_in > 0:
            return due_in + 0.001
        slot = self._take_slot()
        if slot is None:
            return self.safety_net  # a thread coming free rings the doorbell
        self._notifying = True
        slot.inbox.put(Job("notify"))
        return self.safety_net

    # -- the threads --------------------------------------------------------------------------

    def _has_free(self) -> bool:
        with self._lock:
            return bool(self._free)

    def _free_count(self) -> int:
        with self._lock:
            return len(self._free)

    def _take_slot(self) -> Slot | None:
        with self._lock:
            return self._free.pop() if self._free else None

    def _give_back(self, slot: Slot, job: Job | None) -> None:
        with self._lock:
            self._free.append(slot)
            if job is not None and job.kind == "compact":
                self._compacting = False
            elif job is not None and job.kind == "notify":
                self._notifying = False
                self._notifications_looked = -math.inf  # more may be due: look at once
            elif job is not None:
                self._busy[job.tenant] -= 1
        self.doorbell.ring()

    def _serve(self, slot: Slot) -> None:
        """A delivery thread: do each job handed to it until told to stop."""
        while True:
            job = slot.inbox.get()
            if job is None:
                return
            with self.app.app_context():
                try:
                    self._do(slot, job)
                except Exception:
                    log.exception("worker %s: %s job failed", slot.owner, job.kind)
                    db.session.rollback()
                finally:
                    db.session.remove()
            self._give_back(slot, job)

    @staticmethod
    def _do(slot: Slot, job: Job) -> None:
        if job.kind == "deliver":
            assert job.lease is not None
            slot.delivery.work(job.lease)
        elif job.kind == "reset":
            assert job.lease is not None and job.reset_id is not None
            slot.executor.execute(job.reset_id, job.lease)
        elif job.kind == "notify":
            from app.notifications import delivery as notifications

            budget = float(current_app.config["NOTIFICATION_TIMEOUT_SECONDS"])
            notifications.deliver_due(NOTIFICATIONS_PER_PASS, budget)
        else:
            from app.view_data import compaction

            removed = compaction.compact()
            if removed:
                log.info("compacted %d change-log rows", removed)

    # -- the heartbeat ------------------------------------------------------------------------

    def _beat(self) -> None:
        """Write this process's heartbeat (database clock) every few seconds; prune dead ones.

        Written by the poller, never by a delivery thread, so a sink that
        hangs every thread cannot make the worker look dead.
        """
        now = time.monotonic()
        if now - self._last_beat < self.heartbeat_every:
            return
        self._last_beat = now
        db.session.execute(
            insert_ignoring_duplicates(
                WorkerProcess.__table__,
                {
                    "id": self.identity,
                    "host": socket.gethostname()[:255],
                    "pid": os.getpid(),
                    "started_at": db_time(),
                    "heartbeat_at": db_time(),
                },
                ["id"],
            )
        )
        db.session.execute(
            sa.update(WorkerProcess)
            .where(WorkerProcess.id == self.identity)
            .values(heartbeat_at=db_time())
        )
        db.session.execute(
            sa.delete(WorkerProcess).where(
                WorkerProcess.heartbeat_at < db_time(-STALE_LEASES * self.lease_seconds)
            )
        )
        db.session.commit()


def run_loop(app: Flask, stop: threading.Event) -> None:
    """Run a dispatcher in this thread until ``stop`` is set (``pipeline-manager worker``)."""
    Dispatcher(app, stop).run()


def background_expected(app: Flask) -> bool:
    """Whether this serving process is meant to run the worker itself."""
    return bool(app.config.get("BACKGROUND_WORKER")) and not app.testing


def readiness(app: Flask) -> tuple[str, str | None]:
    """The worker's part of ``/readyz``: its state, and what is wrong (None: nothing).

    A poller comes round at least once a second; a whole lease without it
    means the worker is stuck or gone. Written by the poller, not by the
    delivery threads, so sinks that hang every thread do not make it stale.
    """
    lease = float(app.config["WORKER_LEASE_SECONDS"])
    if background_expected(app):
        age = heartbeat_age()
        starting = "This process's background worker has not started yet"
        stale = "This process's background worker last came round {:.0f} s ago"
    elif int(app.config.get("DELIVERY_PROCESSES") or 0) > 0:
        age = freshest_heartbeat_age()
        starting = "No worker process has started yet"
        stale = "No worker process has written its heartbeat for {:.0f} s"
    else:
        return "off", None
    if age is None:
        return "starting", starting
    if age > lease:
        return "stale", stale.format(age)
    return "ok", None


def heartbeat_age() -> float | None:
    """Seconds since this process's poller last came round (None: it never did)."""
    return None if _heartbeat is None else time.monotonic() - _heartbeat


def freshest_heartbeat_age() -> float | None:
    """Seconds since any worker process last wrote its heartbeat (None: none ever did)."""
    row = db.session.execute(sa.select(sa.func.max(WorkerProcess.heartbeat_at), db_time())).one()
    db.session.rollback()
    latest, now = row
    return None if latest is None else max(0.0, (now - latest).total_seconds())


def start_background(app: Flask) -> threading.Thread | None:
    """Start this process's background worker once (per process, so after a fork too)."""
    global _started_in_pid, _background
    if not background_expected(app):
        return None
    with _start_lock:
        if _started_in_pid == os.getpid():
            return None
        _started_in_pid = os.getpid()
    stop = threading.Event()
    thread = threading.Thread(
        target=run_loop, args=(app, stop), name="pipeline-worker", daemon=True
    )
    _background = (thread, stop)
    thread.start()
    return thread


def stop_background(timeout: float = 0.0) -> bool:
    """Ask this process's background worker to stop; wait up to ``timeout`` s; return if it did.

    Its threads finish the claim they are on and give their leases back. Safe
    in a signal handler with 0.
    """
    if _background is None or _started_in_pid != os.getpid():
        return True
    thread, stop = _background
    stop.set()
    wake.ring()
    if timeout > 0:
        thread.join(timeout)
    return not thread.is_alive()


def _start_on_first_request() -> None:
    if _started_in_pid != os.getpid():
        start_background(current_app._get_current_object())


def init_app(app: Flask) -> None:
    """Start the background worker with the first request a process serves.

    Without a background worker the hook is not registered at all, so requests
    pay nothing for it.
    """
    if app.config.get("BACKGROUND_WORKER") and not app.testing:
        app.before_request(_start_on_first_request)
