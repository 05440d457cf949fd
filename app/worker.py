"""The worker: runs resets and delivery outside the request path.

``flask worker`` runs it in the foreground. A serving process also runs it in
the background (``BACKGROUND_WORKER``, on by default), started by gunicorn's
``post_worker_init`` hook or by the first request. Either way it works with
``DELIVERY_CONCURRENCY`` threads. Which thread does which reset or connector is
decided by leases in the database (:mod:`app.delivery.leases`), so any number
of them can run at once, in any number of processes and hosts.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from flask import Flask, current_app

from app.database import schema_problem
from app.extensions import db

log = logging.getLogger(__name__)

_started_in_pid: int | None = None
# When this process's worker loop last came round (time.monotonic()); see heartbeat_age.
_heartbeat: float | None = None
_start_lock = threading.Lock()
# This process's background worker: its loop thread and the event that stops it.
_background: tuple[threading.Thread, threading.Event] | None = None


def run_once(executor: object | None = None, delivery: object | None = None) -> bool:
    """Do one unit of work of every kind, resets first; return whether any was found."""
    from app.delivery.worker import DeliveryWorker
    from app.resets.executor import ResetExecutor

    executor = executor or ResetExecutor()
    delivery = delivery or DeliveryWorker(owner=executor.owner)
    busy = executor.run_once()
    return delivery.run_once() or busy


def _work(app: Flask, stop: threading.Event) -> None:
    """One worker thread: resets, delivery and change-log compaction, until ``stop`` is set."""
    from app.delivery.worker import DeliveryWorker
    from app.resets.executor import ResetExecutor
    from app.view_data import compaction

    interval = float(app.config["WORKER_POLL_INTERVAL"])
    with app.app_context():
        executor = ResetExecutor()
        delivery = DeliveryWorker(owner=executor.owner)
    log.info("worker %s started", executor.owner)
    global _heartbeat
    told = False
    while not stop.is_set():
        _heartbeat = time.monotonic()
        busy = False
        with app.app_context():
            try:
                problem = schema_problem()
                if problem is not None:
                    # Said once, not every poll: the fix is the operator's.
                    if not told:
                        log.warning("worker waiting: %s", problem)
                    told = True
                    stop.wait(interval)
                    continue
                busy = run_once(executor, delivery)
                # Drops change-log rows every connector has delivered (one
                # thread per process, every COMPACTION_INTERVAL_SECONDS).
                compaction.run_due()
            except Exception:
                log.exception("worker iteration failed; retrying")
                db.session.rollback()
            finally:
                db.session.remove()
        if not busy:
            stop.wait(interval)


def run_loop(app: Flask, stop: threading.Event) -> None:
    """Work with ``DELIVERY_CONCURRENCY`` threads until ``stop`` is set.

    Each thread claims connectors and resets on its own (leases decide), so a
    sink that hangs holds up one thread, and the others serve every other
    connector meanwhile.
    """
    count = max(1, int(app.config["DELIVERY_CONCURRENCY"]))
    threads = [
        threading.Thread(target=_work, args=(app, stop), name=f"pipeline-worker-{n}", daemon=True)
        for n in range(count)
    ]
    for thread in threads:
        thread.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=float(app.config["WORKER_LEASE_SECONDS"]))


def background_expected(app: Flask) -> bool:
    """Whether this serving process is meant to run the worker loop."""
    return bool(app.config.get("BACKGROUND_WORKER")) and not app.testing


def heartbeat_age() -> float | None:
    """Seconds since this process's worker loop last came round (None: never)."""
    return None if _heartbeat is None else time.monotonic() - _heartbeat


def start_background(app: Flask) -> threading.Thread | None:
    """Start this process's background worker thread once (per process, so after a fork too)."""
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

    Its threads finish the claim they are on and give their leases back (see
    :func:`run_loop`). gunicorn's hooks call it on SIGTERM, then as the worker
    process exits (``gunicorn.conf.py``). Safe in a signal handler with 0.
    """
    if _background is None or _started_in_pid != os.getpid():
        return True
    thread, stop = _background
    stop.set()
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
