"""What table transports provide: sinks that commit a batch and its position together.

A *table sink* (the ``postgres`` and ``delta`` transports) is transactional:
each batch of changes is applied in one commit of the sink that also records,
in the sink itself, the connector's position (the last change-log seq it
holds). The delivery worker and the reset executor drive these pieces:

- **Streaming.** :meth:`TableSink.apply` applies the changes after seq
  ``first_seq - 1`` only if the position the sink recorded for the connector
  is exactly ``first_seq - 1``; it is one commit, so the changes and the new
  position land together or not at all. A batch the sink already holds
  (recorded position ``>= last_seq``: committed by a writer that crashed or
  stalled before the service recorded it) is skipped. The changes after a
  position are a fixed part of the view's change log, whoever sends them, so
  this check alone makes a batch land exactly once, even when a writer that
  stalled past its lease wakes up and sends it again.
- **Recovery.** :meth:`TableSink.position` reads the recorded position back:
  ahead of the service's offset, the service catches up to it (the batch
  landed, its record did not); behind it, the sink lost what it was given and
  a snapshot is owed.
- **Reset.** :meth:`TableSink.begin_reset` starts filling a staging copy with
  the snapshot, outside the table; :meth:`TableReset.switch_in` replaces the
  table's contents with it and records the snapshot's seq, in one commit, so
  readers see the old contents or the whole new snapshot, never part of it.
  Its ``fence`` callback runs just before that commit: it locks the
  connector's row in the service's database under the executor's epoch (or
  raises ``LeaseLost``) and keeps it locked until the service commits, so a
  stale executor can never switch its snapshot in.

Changes are given as stored: ``(seq, weight, record)`` rows of the change log
(``weight`` > 0 an insert, < 0 a delete, of one copy of ``record``, a
canonical JSON text of an object), snapshot records as canonical JSON texts
(a record of weight n comes n times).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from app.transports.base import KeepAlive, TransportError

# A change-log row as stored: (seq, weight, canonical JSON of the record).
LogRow = tuple[int, int, str]


@dataclass(frozen=True)
class Applied:
    """What one :meth:`TableSink.apply` did.

    ``size``: bytes of record text applied (0 when skipped); ``version``: the
    sink's commit id after it (a Delta table version, a PostgreSQL transaction
    id), or None when skipped; ``skipped``: the sink already held the batch.
    """

    size: int
    version: int | None
    skipped: bool = False


class SinkMoved(TransportError):
    """The sink's recorded position is neither the batch's start nor past its end.

    ``position`` is what the sink holds (None: no position recorded). The
    worker compares it with its own offset: ahead, it catches up; behind, the
    sink lost data and a snapshot is owed.
    """

    def __init__(self, message: str, position: int | None) -> None:
        super().__init__(message)
        self.position = position


class SinkDiverged(TransportError):
    """The sink no longer holds what was delivered to it (a delete found no row to remove).

    The worker takes it like a damaged file sink: the connector owes a snapshot.
    """


class TableReset(Protocol):
    """A reset under way: the snapshot goes into a staging copy, then is switched in."""

    def append(self, records: Sequence[str]) -> int:
        """Add snapshot records (canonical JSON texts) to the staging copy; return their bytes."""

    def switch_in(self, snapshot_seq: int, fence: Callable[[], None]) -> int | None:
        """Replace the table's contents with the staging copy and record ``snapshot_seq``.

        One commit of the sink. ``fence()`` is called just before it and may
        raise (``LeaseLost``): then nothing is committed. Returns the sink's
        commit id (a Delta version, a PostgreSQL transaction id) or None.
        """

    def discard(self) -> None:
        """Drop the staging copy if it was not switched in (never raises)."""


class TableSink(Protocol):
    """A transactional transport driver (see the module's text)."""

    name: str

    def validate_config(self, config: dict[str, Any], *, tenant: str) -> dict[str, Any]:
        """Return the normalised settings or raise ``InvalidRequest``."""

    def sink_key(self, config: dict[str, Any], tenant: str) -> str | None:
        """The table's identity: only one connector may write it."""

    def shown_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The settings as shown to callers."""

    def config_schema(self) -> dict[str, Any]:
        """The JSON schema (OpenAPI 3.0) of the settings, for the transport ``oneOf``."""

    def position(self, target: Any) -> int | None:
        """The position the sink recorded for this connector (``target.uid``), None if none."""

    def apply(self, target: Any, rows: Sequence[LogRow], *, epoch: int) -> Applied:
        """Apply log rows ``rows[0][0]``..``rows[-1][0]`` and record ``rows[-1][0]``, in one commit.

        Only when the recorded position is ``rows[0][0] - 1`` (none recorded
        counts as 0); skipped when it is ``>= rows[-1][0]``; otherwise raises
        :class:`SinkMoved`. Sink errors raise ``TransportError``.
        """

    def skip_to(self, target: Any, *, held: int, to_seq: int, epoch: int) -> Applied:
        """Move the recorded position from ``held`` to ``to_seq`` with no changes, in one commit.

        What ``POST .../start`` with ``skip`` asks of a table sink: the changes
        in between are never applied. Skipped when the position is already
        ``>= to_seq``; raises :class:`SinkMoved` when it is not ``held``.
        """

    def begin_reset(
        self, target: Any, epoch: int, keep_alive: KeepAlive | None = None
    ) -> TableReset:
        """Start a reset's staging copy (a stale one of a lower epoch is removed).

        ``keep_alive`` renews the executor's lease: the copy calls it during
        its long steps (rewriting the staged files at the switch), so that no
        other executor takes the reset over, and removes what it reads, meanwhile.
        """


def is_table_sink(driver: Any) -> bool:
    """Whether a transport driver is a table sink."""
    return hasattr(driver, "begin_reset") and hasattr(driver, "apply")
