"""Waking the worker as soon as there is work, rather than letting it poll.

- **In the process that made the work**, a doorbell: a pipe the worker's
  poller waits on (:class:`Doorbell`), rung once the transaction that marked a
  connector due has committed (:func:`ring_after_commit`), and by the worker's
  own threads when one comes free.
- **Across processes**, through the database's engine (``app.database``):
  ``LISTEN``/``NOTIFY`` on PostgreSQL; on SQLite, a datagram to each worker's
  socket once the commit is made, and ``PRAGMA data_version`` (it moves when
  another connection commits, one cheap read) for commits that announce none.

The poller also looks on its own every ``WORKER_POLL_INTERVAL`` seconds, as a
safety net, and when timed work (a retry, a lease running out) comes due.
"""

from __future__ import annotations

import contextlib
import os
import threading

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

_WAKE = "pipeline_manager.wake"


class Doorbell:
    """A pipe that wakes a thread waiting in ``select`` on it, from any thread."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def fileno(self) -> int:
        """The end to wait on."""
        return self._read

    def ring(self) -> None:
        """Wake the waiter (a full pipe is rung already)."""
        with contextlib.suppress(OSError):  # BlockingIOError: rung already
            os.write(self._write, b"!")

    def drain(self) -> None:
        """Forget the rings so far (call before looking for work)."""
        try:
            while os.read(self._read, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        """Close both ends."""
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


_doorbell: tuple[int, Doorbell] | None = None
_lock = threading.Lock()


def install() -> Doorbell:
    """This process's doorbell (made once per process: a fork gets its own)."""
    global _doorbell
    with _lock:
        if _doorbell is None or _doorbell[0] != os.getpid():
            _doorbell = (os.getpid(), Doorbell())
        return _doorbell[1]


def ring() -> None:
    """Ring this process's doorbell, if its worker runs here."""
    bell = _doorbell
    if bell is not None and bell[0] == os.getpid():
        bell[1].ring()


def ring_after_commit() -> None:
    """Ring the doorbell once the current transaction commits (not if it rolls back)."""
    from app.extensions import db

    db.session.info[_WAKE] = True


@event.listens_for(Session, "after_commit")
def _rang(session: Session) -> None:
    if session.info.pop(_WAKE, False):
        ring()
        from app.database import announce_work

        bind = session.get_bind()
        announce_work(bind if isinstance(bind, Engine) else bind.engine)


@event.listens_for(Session, "after_rollback")
def _dropped(session: Session) -> None:
    session.info.pop(_WAKE, None)
