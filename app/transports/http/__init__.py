"""The ``http`` transport: POSTs each message as JSON to a URL.

One message per POST, JSON in UTF-8 (``Content-Type: application/json``). Every
message names its connector twice: ``connector_id``, a UUID that is never
reused (not even by a connector deleted and re-created under the same name),
and ``connector``, its current name; plus the ``pipeline`` and ``view`` names
and the sender's fencing ``epoch``. Headers on every message: ``X-Message-Type``
(``reset``, ``snapshot`` or ``batch``), ``X-Connector-Id`` and ``X-Epoch``;
``X-Batch-Id`` on snapshot and batch messages.

* ``reset``: the connector's sink starts over from a snapshot of the view
  taken at change-log position ``snapshot_seq`` (S)::

    {"type": "reset", "connector_id": "9b1d...", "connector": "hook",
     "pipeline": "orders", "view": "totals", "epoch": 7, "snapshot_seq": 120}

* ``snapshot``: records ``first_seq``..``last_seq`` (1-based positions within
  the snapshot, all inserts) of the snapshot taken at S::

    {"type": "snapshot", ..., "epoch": 7, "snapshot_seq": 120, "first_seq": 1,
     "last_seq": 1000, "batch_id": "9b1d...:snapshot-7:1-1000",
     "records": [{"insert": {...}}, ...]}

* ``batch``: the view's changes at change-log positions ``first_seq``..``last_seq``::

    {"type": "batch", ..., "epoch": 7, "first_seq": 121, "last_seq": 180,
     "batch_id": "9b1d...:121-180", "records": [{"insert": {...}}, {"delete": {...}}]}

A message whose answer was lost is sent again with the same ``first_seq`` and
``last_seq``, also by a sender that took the connector over with a higher
epoch. A batch's ``batch_id`` depends on its range alone; a snapshot's also
names the epoch. Receivers deduplicate by the seqs below, not by ``batch_id``.

The receiver keeps, per ``connector_id``: ``epoch`` (the highest seen; none
before the first message), ``applied_seq`` and ``snapshot_applied`` (both 0
before the first message), and handles each message in this order:

1. ``epoch`` < the stored epoch: drop the message (answer 2xx); it comes from a
   sender that has lost the connector. Otherwise store the message's epoch.
2. ``reset``: drop everything held for this connector; ``applied_seq`` =
   ``snapshot_seq``; ``snapshot_applied`` = 0.
3. ``snapshot``: ``last_seq`` <= ``snapshot_applied`` is a repeat: drop it. Else
   apply its records (``first_seq`` == ``snapshot_applied`` + 1 is guaranteed)
   and set ``snapshot_applied`` = ``last_seq``.
4. ``batch``: ``last_seq`` <= ``applied_seq`` is a repeat: drop it. Else apply
   its records in order (``first_seq`` == ``applied_seq`` + 1 is guaranteed) and
   set ``applied_seq`` = ``last_seq``.

Applying ``{"insert": r}`` adds one copy of ``r``; ``{"delete": r}`` removes one.
A dropped message is answered 2xx like an applied one. A receiver that stores
what it applies and this state in one transaction of its own gets every change
exactly once; otherwise a crash between the two gives at-least-once.

A receiver that finds a batch's ``first_seq`` beyond ``applied_seq`` + 1 has
lost changes it acknowledged (restored from a backup, or started over empty).
It answers ``409`` with ``{"applied_seq": N}``, its own ``applied_seq``, and
applies nothing. The sender then takes the sink as out of sync, as it does a
damaged file sink: the connector reports it (``sync_state`` ``resetting``,
the reason in ``sync_reason``) and a snapshot is redone (``reset``, then the
snapshot, then batches from its position). A ``409`` naming an ``applied_seq``
that is not behind the batch, or answering any other message, is a refusal
like any other ``4xx``.

Any 2xx answer acknowledges a message. Connection errors, timeouts, 408, 429
and 5xx are retried up to ``max_retries`` times with exponential backoff and
jitter (``Retry-After`` is honoured up to the backoff cap). Any other answer
means the receiver refused the message itself: it is not retried and raises a
``TransportError`` with ``poison`` set, naming the status and the first 200
characters of the answer.

Every connection is checked against ``HTTP_SINK_ALLOWED_NETWORKS`` and
``HTTP_SINK_DENIED_NETWORKS`` when it connects (see :mod:`app.transports.destinations`);
a refused destination raises a ``TransportError`` with ``poison`` set ("destination
not allowed"). Everything that goes wrong before an HTTP status arrives reads
alike (``NO_ANSWER``), so that errors do not tell open ports from closed ones.

In an app, each wait of an attempt (to connect, for the answer, reading it) is
cut to a third of the worker's lease (``WORKER_LEASE_SECONDS``), and the sender
renews its lease (``keep_alive``) before every retry and at least that often
while it sleeps between attempts, so a sink that never answers costs one third
of the lease per attempt and cannot outlive the lease it is written under.

The driver is :mod:`app.transports.http.transport`; one POST and its answer
:mod:`app.transports.http.attempt`; the settings and the URL's shown forms
:mod:`app.transports.http.settings`.
"""

from app.transports.http.attempt import (
    NO_ANSWER,
    AttemptFailed,
    answer_snippet,
    applied_seq_of,
    attempt_cap,
    retry_after_seconds,
)
from app.transports.http.settings import (
    REDACTED,
    HttpSettings,
    check_destination,
    parse_settings,
    redact_url,
    safe_url,
)
from app.transports.http.transport import HttpTransport, backoff_delay

__all__ = [
    "NO_ANSWER",
    "REDACTED",
    "AttemptFailed",
    "HttpSettings",
    "HttpTransport",
    "answer_snippet",
    "applied_seq_of",
    "attempt_cap",
    "backoff_delay",
    "check_destination",
    "parse_settings",
    "redact_url",
    "retry_after_seconds",
    "safe_url",
]
