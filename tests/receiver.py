"""A reference receiver of the http transport, for tests: a real HTTP server on 127.0.0.1.

It implements the receiver's contract of :mod:`app.transports.http` exactly
(fencing epochs, ``applied_seq``, ``snapshot_applied``), holding each
connector's contents as a multiset of canonical records, and notes every
breach of the sender's side of the contract in :attr:`Receiver.violations`.
A correct sender, whatever faults it meets, leaves that list empty and the
contents equal to the view.

    with Receiver() as receiver:
        ...  # a connector with {"url": receiver.url}
        assert receiver.violations == []
        assert receiver.contents() == view_multiset(view_id)

Faults on demand: :meth:`~Receiver.fail_next`, :meth:`~Receiver.refuse`,
:meth:`~Receiver.hang`, :meth:`~Receiver.lose_answers` and
:meth:`~Receiver.forget` (the receiver loses what it held, as if restored
from an empty backup).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.faults import canonical

OK = b'{"ok":true}'


@dataclass
class ConnectorState:
    """What the receiver holds of one connector_id."""

    epoch: int | None = None
    applied_seq: int = 0
    snapshot_applied: int = 0
    contents: Counter = field(default_factory=Counter)
    # Whether this reset generation has applied a batch yet (no snapshot may follow one).
    streamed: bool = False
    # Whether a reset was seen (a snapshot without one is a breach).
    was_reset: bool = False
    # Whether this receiver lost what it held (:meth:`Receiver.forget`): a gap is then
    # its own doing, answered 409 with its applied_seq, until the next reset.
    lost: bool = False


class Receiver:
    """A threaded HTTP/1.1 server (keep-alive) on 127.0.0.1 that applies what it is sent.

    ``messages``, ``headers``, ``raw``, ``outcomes`` and ``client_ports`` are
    parallel lists, one entry per request in arrival order. An outcome is one of
    ``applied``, ``repeat``, ``stale`` (an older epoch), ``failed``
    (:meth:`fail_next`), ``refused``, ``hung``, ``lost`` (applied, answer
    dropped: :meth:`lose_answers`), ``behind`` (a gap after :meth:`forget`,
    answered 409 with ``applied_seq``) and ``invalid`` (not a message).
    """

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.raw: list[bytes] = []
        self.outcomes: list[str] = []
        self.client_ports: list[int] = []
        self.violations: list[str] = []
        self.states: dict[str, ConnectorState] = {}
        self._cond = threading.Condition()
        self._fail: list[tuple[int, dict[str, str]]] = []
        self._refusal: tuple[int, bytes] | None = None
        self._hanging = False
        self._lose = 0
        self._behind_always = False
        self._closed = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/in"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    # -- lifecycle ----------------------------------------------------------

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving; requests left hanging end without an answer."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()

    # -- faults -------------------------------------------------------------

    def fail_next(
        self, count: int, status: int = 503, headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next ``count`` messages with ``status`` (and headers), applying none."""
        with self._cond:
            self._fail.extend([(status, dict(headers or {}))] * count)

    def refuse(self, status: int | None = 400, body: str = '{"error": "bad record"}') -> None:
        """Answer every message with ``status`` and ``body`` until ``refuse(None)``."""
        with self._cond:
            self._refusal = None if status is None else (status, body.encode("utf-8"))

    def hang(self, on: bool = True) -> None:
        """While on, take each request in and never answer it (until off, or the server closes)."""
        with self._cond:
            self._hanging = on
            self._cond.notify_all()

    def behind_at_every_batch(self, on: bool = True) -> None:
        """While on, answer every batch 409 ``{"applied_seq": 0}`` (resets and snapshots are
        applied): a receiver that claims to lose what it holds, batch after batch."""
        with self._cond:
            self._behind_always = on

    def lose_answers(self, count: int = 1) -> None:
        """Apply the next ``count`` messages, then drop the connection instead of answering."""
        with self._cond:
            self._lose += count

    def forget(self, connector_id: str | None = None) -> None:
        """Lose everything held for a connector (the only one, by default): contents,
        epoch and seqs, as a receiver restored from an empty backup would."""
        with self._cond:
            if connector_id is None:
                (connector_id,) = self.states
            self.states[connector_id] = ConnectorState(lost=True)

    # -- what it holds ------------------------------------------------------

    def contents(self, connector_id: str | None = None) -> Counter:
        """The multiset of canonical records held for a connector (the only one, by default)."""
        with self._cond:
            if connector_id is None:
                if not self.states:
                    return Counter()
                if len(self.states) > 1:
                    raise AssertionError(f"several connectors were seen: {sorted(self.states)}")
                (state,) = self.states.values()
            else:
                state = self.states.get(connector_id, ConnectorState())
            return +state.contents

    def state(self, connector_id: str | None = None) -> ConnectorState:
        """The state held for a connector (the only one, by default)."""
        with self._cond:
            if connector_id is None:
                (connector_id,) = self.states
            return self.states[connector_id]

    @property
    def count(self) -> int:
        """How many requests arrived."""
        return len(self.messages)

    # -- the contract -------------------------------------------------------

    def _handle(self, message: dict[str, Any], headers: dict[str, str]) -> str:
        """Apply one message per the contract (under the lock); return its outcome."""
        self._check_headers(message, headers)
        kind = message["type"]
        state = self.states.setdefault(message["connector_id"], ConnectorState())
        if state.epoch is not None and message["epoch"] < state.epoch:
            return "stale"
        state.epoch = message["epoch"]
        if kind == "reset":
            state.contents.clear()
            state.applied_seq = message["snapshot_seq"]
            state.snapshot_applied = 0
            state.streamed = False
            state.was_reset = True
            state.lost = False
            return "applied"
        first, last, records = message["first_seq"], message["last_seq"], message["records"]
        if first > last:
            self._violation(message, "first_seq > last_seq")
        if kind == "snapshot":
            if last <= state.snapshot_applied:
                return "repeat"
            if not state.was_reset:
                self._violation(message, "a snapshot without a reset")
            if state.streamed:
                self._violation(message, "a snapshot after batches of the same reset")
            if first != state.snapshot_applied + 1:
                self._violation(message, f"a gap: snapshot_applied is {state.snapshot_applied}")
            if len(records) != last - first + 1:
                self._violation(message, f"{len(records)} records for positions {first}-{last}")
            if any("insert" not in r for r in records):
                self._violation(message, "a snapshot holds a delete")
            self._apply(state, message)
            state.snapshot_applied = last
            return "applied"
        if kind != "batch":
            self._violation(message, "an unknown message type")
            return "invalid"
        if last <= state.applied_seq:
            return "repeat"
        if first > state.applied_seq + 1 and state.lost:
            return "behind"
        if first != state.applied_seq + 1:
            self._violation(message, f"a gap: applied_seq is {state.applied_seq}")
        self._apply(state, message)
        state.applied_seq = last
        state.streamed = True
        return "applied"

    def _apply(self, state: ConnectorState, message: dict[str, Any]) -> None:
        for change in message["records"]:
            ((op, record),) = change.items()
            key = canonical(record)
            if op == "insert":
                state.contents[key] += 1
            elif state.contents[key] > 0:
                state.contents[key] -= 1
            else:
                self._violation(message, f"a delete of a record not held: {key}")

    def _check_headers(self, message: dict[str, Any], headers: dict[str, str]) -> None:
        """The headers must repeat the message's type, connector id, epoch and batch id."""
        uid, epoch, kind = message["connector_id"], message["epoch"], message["type"]
        expected = {
            "X-Message-Type": kind,
            "X-Connector-Id": uid,
            "X-Epoch": str(epoch),
            "Content-Type": "application/json",
        }
        if kind == "batch":
            expected["X-Batch-Id"] = f"{uid}:{message['first_seq']}-{message['last_seq']}"
        elif kind == "snapshot":
            range_ = f"{message['first_seq']}-{message['last_seq']}"
            expected["X-Batch-Id"] = f"{uid}:snapshot-{epoch}:{range_}"
        if "X-Batch-Id" in expected and message.get("batch_id") != expected["X-Batch-Id"]:
            self._violation(message, f"batch_id {message.get('batch_id')!r} is not the range's")
        for name, value in expected.items():
            if headers.get(name) != value:
                self._violation(message, f"header {name}: {headers.get(name)!r}, not {value!r}")

    def _violation(self, message: dict[str, Any], what: str) -> None:
        summary = {k: v for k, v in message.items() if k != "records"}
        self.violations.append(f"{what} (message {json.dumps(summary, sort_keys=True)})")

    # -- HTTP ---------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # The answer's head and body go out in two writes: without this, Nagle's
            # algorithm and the sender's delayed ACK cost 40 ms a message.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = dict(self.headers)
                try:
                    message = json.loads(body)
                except ValueError:
                    message = {}
                with receiver._cond:
                    receiver.messages.append(message)
                    receiver.headers.append(headers)
                    receiver.raw.append(body)
                    receiver.client_ports.append(self.client_address[1])
                    index = len(receiver.outcomes)
                    receiver.outcomes.append("")
                    status, extra, text, outcome = receiver._decide(message, headers)
                    receiver.outcomes[index] = outcome
                    if outcome == "hung":
                        while receiver._hanging and not receiver._closed:
                            receiver._cond.wait()
                if outcome in ("hung", "lost"):
                    self.close_connection = True
                    return
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def _decide(
        self, message: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes, str]:
        """The answer to a request and its outcome (under the lock)."""
        if self._hanging:
            return 0, {}, b"", "hung"
        if self._refusal is not None:
            status, text = self._refusal
            return status, {}, text, "refused"
        if self._fail:
            status, extra = self._fail.pop(0)
            return status, extra, b'{"error":"failing on purpose"}', "failed"
        if self._behind_always and message.get("type") == "batch":
            return 409, {}, b'{"applied_seq": 0}', "behind"
        try:
            outcome = self._handle(message, headers)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self.violations.append(f"not a message ({type(exc).__name__}: {exc})")
            return 400, {}, b'{"error":"not a message"}', "invalid"
        if outcome == "applied" and self._lose > 0:
            self._lose -= 1
            return 0, {}, b"", "lost"
        if outcome == "behind":
            applied = self.states[message["connector_id"]].applied_seq
            return 409, {}, json.dumps({"applied_seq": applied}).encode(), outcome
        return 200, {}, OK, outcome
