"""Measuring helpers shared by the sections: timing in interleaved rounds, SQL counting."""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event

from app.extensions import db
from bench.service import Service


@dataclass
class Row:
    """One line of the results table."""

    section: str
    measure: str
    value: float | None
    unit: str
    note: str = ""


class PartialFailure(Exception):
    """Some measurements of a section failed: ``rows`` holds those that did not."""

    def __init__(self, message: str, rows: list[Row]) -> None:
        super().__init__(message)
        self.rows = rows


class Attempts:
    """Run a section's measurements one by one; one that fails leaves the others' rows.

    Each failure becomes a row saying so; :meth:`done` returns the rows, or
    raises :class:`PartialFailure` with them when any failed (a failed run).
    """

    def __init__(self, section: str) -> None:
        self.section = section
        self.rows: list[Row] = []
        self.failures: list[str] = []

    def run(self, label: str, measure: Callable[[], list[Row]]) -> None:
        """Add ``measure()``'s rows, or a row saying that ``label`` failed and why."""
        try:
            self.rows += measure()
        except PartialFailure as exc:
            self.rows += exc.rows
            self.failures.append(str(exc))
        except Exception as exc:  # one broken measurement must not hide the others
            note = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
            self.failures.append(f"{label} {note}")
            self.rows.append(Row(self.section, label, None, "", note))

    def done(self) -> list[Row]:
        """The rows; raise :class:`PartialFailure` carrying them if a measurement failed."""
        if self.failures:
            raise PartialFailure("; ".join(self.failures), self.rows)
        return self.rows


def seconds_per_call(call: Callable[[], Any], seconds: float) -> float:
    """Call ``call`` repeatedly for about ``seconds``; return the mean seconds per call."""
    count = 0
    started = time.perf_counter()
    while True:
        for _ in range(20):
            call()
        count += 20
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return elapsed / count


def compare(targets: dict[str, Callable[[], Any]], seconds: float, rounds: int) -> dict[str, float]:
    """Median seconds per call of each target, measured in interleaved rounds."""
    for call in targets.values():
        for _ in range(50):  # warm-up: first-request work, caches, connections
            call()
    samples: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, call in targets.items():
            samples[name].append(seconds_per_call(call, seconds / rounds))
    return {name: statistics.median(values) for name, values in samples.items()}


def paired_ratio(
    base: Callable[[], Any], other: Callable[[], Any], seconds: float, rounds: int
) -> tuple[float, float, float]:
    """Time two calls in alternating short rounds; return both medians and the median ratio.

    The ratio is ``other``'s time over ``base``'s, taken round by round (each
    pair measured back to back, in alternating order) and then the median: a
    busy moment of the machine hits both halves of a pair alike.
    """
    for call in (base, other):
        for _ in range(50):
            call()
    samples: tuple[list[float], list[float]] = ([], [])
    for index in range(rounds):
        pair = ((0, base), (1, other)) if index % 2 == 0 else ((1, other), (0, base))
        for slot, call in pair:
            samples[slot].append(seconds_per_call(call, seconds / rounds))
    ratios = [o / b for b, o in zip(*samples, strict=True)]
    return (
        statistics.median(samples[0]),
        statistics.median(samples[1]),
        statistics.median(ratios),
    )


def direct_statement_listeners() -> list[Callable[[str, Any], None]]:
    """The app's listeners of statements run straight on DB-API cursors (empty list if none).

    Such statements (``app.prepared``) bypass SQLAlchemy's engine events, so
    the count listens there as well.
    """
    try:
        prepared = importlib.import_module("app.prepared")
    except ImportError:
        return []
    return getattr(prepared, "statement_listeners", [])


def statements_per_request(
    service: Service, path: str, requests: int = 50
) -> tuple[float, list[str]]:
    """Count the SQL statements ``GET path`` runs; return the mean and one request's list."""
    with service.app.app_context():
        engine = db.engine
    seen: list[str] = []

    def record_direct(statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split()))

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        record_direct(statement)

    direct = direct_statement_listeners()
    event.listen(engine, "before_cursor_execute", record)
    direct.append(record_direct)
    try:
        service.call("GET", path, (200,))
        one = list(seen)
        seen.clear()
        for _ in range(requests):
            service.call("GET", path, (200,))
    finally:
        event.remove(engine, "before_cursor_execute", record)
        direct.remove(record_direct)
    return len(seen) / requests, one
