"""The stored contents of views, as the reset executor and the delivery worker read them.

No view changes are taken in yet, so every view is empty and every snapshot
has no records.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def snapshot_count(view_id: int) -> int:
    """Return how many records a snapshot of the view holds now."""
    return 0


def snapshot_batches(view_id: int, batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """Yield the view's current contents as ``{"insert": record}`` batches."""
    yield from ()


def drop_buffered(connector: Any) -> None:
    """Forget the connector's undelivered changes (the reset replays a snapshot instead)."""
