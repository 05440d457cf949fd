"""What gunicorn runs beside its request workers: the delivery processes.

``gunicorn.conf.py`` names :class:`DeliveryApp` as a gunicorn *dirty app*:
gunicorn's dirty arbiter, a process of its own under the master, starts
``DELIVERY_PROCESSES`` processes that each load it, starts another when one
dies, and stops them with the server (SIGTERM, within the graceful timeout).
Each builds the Flask app and runs the worker's dispatcher (:mod:`app.worker`)
until gunicorn stops it. The request workers run none, so requests and
delivery never share a process or its GIL. Both kinds of process freeze what
they loaded out of the garbage collector's reach (:func:`freeze_loaded_objects`).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading

from gunicorn.dirty import DirtyApp

log = logging.getLogger(__name__)

# Seconds the dispatcher is given to finish its claims when the process stops.
STOP_SECONDS = 15.0


def freeze_loaded_objects() -> None:
    """Leave what the process has loaded (the app, its modules) out of every garbage collection.

    Called once a serving or delivery process has built its app. About 130,000
    objects live as long as the process; each full collection walked them all
    (tens of milliseconds, every few thousand requests, that a request then
    waited for). Objects made later are collected as before.
    """
    gc.collect()
    gc.freeze()


class DeliveryApp(DirtyApp):
    """A delivery process: the worker's dispatcher, in a thread, for the process's life."""

    def init(self) -> None:
        """Build the app and start the dispatcher (after the fork, in the delivery process)."""
        from app import create_app

        self.app = create_app()
        freeze_loaded_objects()
        self.stop = threading.Event()
        self.parent = os.getppid()
        self.thread = threading.Thread(target=self._run, name="pipeline-worker", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from app.worker import Dispatcher

        Dispatcher(self.app, self.stop, alive=self._parent_alive).run()
        if not self.stop.is_set():
            # The dispatcher stopped on its own (its parent died): end the process.
            os.kill(os.getpid(), signal.SIGTERM)

    def _parent_alive(self) -> bool:
        """Whether gunicorn's dirty arbiter still runs (an orphan stops delivering)."""
        return os.getppid() == self.parent

    def close(self) -> None:
        """Stop the dispatcher: each thread finishes its claim and gives its lease back."""
        from app.delivery import wake

        self.stop.set()
        wake.ring()
        self.thread.join(STOP_SECONDS)
        if self.thread.is_alive():
            log.warning("delivery still busy at exit; its leases will expire")
