"""The ``file`` transport: a JSON-lines file under the sink directory.

How a file sink stays exactly-once under faults (the delivery worker and the
reset executor drive these pieces; see ``app.delivery``):

- Streaming writes go through a :class:`SinkFile`, a descriptor opened while
  the writer holds the connector's lease, at the committed offset with
  ``pwrite`` (never a blind append). The bytes at an offset of one file are
  always the same lines, whoever writes them, so a writer that stalled past
  its lease and wakes up writes nothing new; and a file replaced meanwhile by
  a reset is not the one its descriptor points at.
- A reset fills a :class:`StagingFile` beside the sink and switches it in with
  one ``rename`` at the end: a reader sees the old contents or the whole new
  snapshot, never half of it, and a stale executor fills only its own file.
- Every file created or renamed is followed by an ``fsync`` of its folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flask import current_app

from app.errors import InvalidRequest
from app.transports.base import TransportError
from app.transports.file_spec import config_schema


def sink_dir(tenant: str) -> Path:
    """Return the folder that a tenant's file sinks must live in.

    Each tenant has its own folder under ``SINK_DIR``, so that no tenant can
    name, read or reset another tenant's sink files.
    """
    return Path(current_app.config["SINK_DIR"]).resolve() / tenant


def resolve_sink_path(path: str, tenant: str) -> Path:
    """Resolve a sink path; a relative one is taken from the tenant's sink directory.

    Raises ``ValueError`` when the path leaves that directory, through ``..``,
    an absolute path elsewhere, or a symbolic link.
    """
    if not path or "\x00" in path:
        raise ValueError("The path is empty or holds a NUL character")
    base = sink_dir(tenant)
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = base / candidate
    resolved = Path(os.path.realpath(candidate))
    if resolved == base or base not in resolved.parents:
        # The message reaches API callers: it names no server path.
        raise ValueError(
            "The path must name a file inside the tenant's sink directory "
            "(relative paths are taken from it)"
        )
    return resolved


def encode(records: Sequence[dict[str, Any]]) -> bytes:
    """Return the records as JSON lines, exactly as a file sink holds them."""
    return "".join(
        json.dumps(r, separators=(",", ":"), sort_keys=True) + "\n" for r in records
    ).encode("utf-8")


# What a file line escapes (ensure_ascii) that a stored record's text holds as is:
# everything above "~". Quotes, backslashes and control characters are escaped
# alike in both.
_NOT_ASCII = re.compile("[\x7f-\U0010ffff]")


def _escape(match: re.Match[str]) -> str:
    """``json.dumps``'s escape of one character: ``\\uXXXX``, or a surrogate pair."""
    code = ord(match.group())
    if code > 0xFFFF:
        code -= 0x10000
        return f"\\u{0xD800 | code >> 10:04x}\\u{0xDC00 | code & 0x3FF:04x}"
    return f"\\u{code:04x}"


def _as_lines(text: str) -> bytes:
    """Lines of spliced canonical texts as a file holds them: above ASCII escaped.

    Canonical texts (sorted keys, no spaces) are what :func:`encode` writes,
    but for the characters that ``json.dumps`` escapes (``ensure_ascii``) and
    a stored record holds as they are. Most texts have none: one scan says so.
    """
    if not text.isascii() or "\x7f" in text:
        text = _NOT_ASCII.sub(_escape, text)
    return text.encode("ascii")


def encode_texts(changes: Sequence[str]) -> bytes:
    """Return changes given as canonical JSON texts as the lines a file sink holds.

    ``changes`` are ``{"insert":record}``/``{"delete":record}`` texts spliced
    from stored records (``app.delivery.reader``). The result is byte for byte
    what :func:`encode` gives for the decoded changes, without decoding them
    (``make bench`` section b).
    """
    if not changes:
        return b""
    return _as_lines("\n".join(changes) + "\n")


def encode_inserts(records: Sequence[str]) -> bytes:
    """Return stored records' canonical texts as the lines of their inserts.

    Byte for byte ``encode_texts(insert_texts(records))``, built by one join
    of the whole batch rather than a string per record: a reset's replay
    writes every record of the view this way (``make bench`` section c, a
    reset to complete).
    """
    if not records:
        return b""
    return _as_lines('{"insert":' + '}\n{"insert":'.join(records) + "}\n")


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries to disk (a new or renamed file survives a crash)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# O_NONBLOCK: opening a FIFO or a device must not wait for a peer (a FIFO without a
# reader would hold the worker forever); the descriptor is checked before any write.
# O_NOFOLLOW: a symbolic link put in place after the path was checked is not followed.
OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW


class NotARegularFile(OSError):
    """The sink path names something other than a regular file (a FIFO, a device...)."""

    def __init__(self) -> None:
        super().__init__(0, "not a regular file")


def open_regular(path: Path) -> int:
    """Open (or create, mode 0644) a regular file for writing; refuse anything else.

    Raises ``NotARegularFile`` for a FIFO, socket or device, and ``OSError``
    (``ELOOP``) for a symbolic link. The descriptor is blocking again on return.
    """
    fd = os.open(path, OPEN_FLAGS, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotARegularFile()
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_fully(fd: int, data: bytes, offset: int) -> None:
    """``pwrite`` all of ``data`` at ``offset`` (a large write may be split)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class SinkFile:
    """A sink file opened for streaming: positional writes on one descriptor."""

    def __init__(self, path: Path, shown: str) -> None:
        self.path = path
        self.shown = shown
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            created = not path.exists()
            self.fd = open_regular(path)
            if created:
                fsync_dir(path.parent)
        except OSError as exc:
            raise TransportError(f"Cannot open sink file '{shown}': {exc.strerror}") from None

    def size(self) -> int:
        """The file's length now."""
        return os.fstat(self.fd).st_size

    def truncate(self, length: int) -> None:
        """Cut the file back to ``length`` bytes, durably."""
        try:
            os.ftruncate(self.fd, length)
            os.fsync(self.fd)
        except OSError as exc:
            raise TransportError(
                f"Cannot truncate sink file '{self.shown}': {exc.strerror}"
            ) from None

    def write_at(self, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset`` and flush it to disk; return its length."""
        try:
            _write_fully(self.fd, data, offset)
            os.fsync(self.fd)
        except OSError as exc:
            raise TransportError(f"Cannot write sink file '{self.shown}': {exc.strerror}") from None
        return len(data)

    def close(self) -> None:
        """Close the descriptor."""
        os.close(self.fd)

    def __enter__(self) -> SinkFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StagingFile:
    """A reset's new sink file, filled beside the sink and switched in at the end.

    Named ``.<sink name>.reset-<epoch>``: the executor's fencing epoch, so a
    stale executor's leftover is told apart and removed by the next one.
    """

    def __init__(self, target: Path, shown: str, epoch: int) -> None:
        self.target = target
        self.shown = shown
        self.path = target.with_name(f"{self.prefix(target)}{epoch}")
        self.length = 0
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self.remove_leftovers(target, epoch)
            # Truncated only once known to be a regular file.
            self.fd = open_regular(self.path)
            os.ftruncate(self.fd, 0)
        except OSError as exc:
            raise TransportError(
                f"Cannot reset sink file '{shown}': cannot create its new file: {exc.strerror}"
            ) from None

    @staticmethod
    def prefix(target: Path) -> str:
        """The name that every staging file of ``target`` starts with."""
        return f".{target.name}.reset-"

    @classmethod
    def remove_leftovers(cls, target: Path, epoch: int) -> None:
        """Delete staging files of earlier epochs (their writers lost their leases).

        Only lower epochs: a stale executor that wakes up here must not delete
        the staging file of the executor that holds the lease now.
        """
        prefix = cls.prefix(target)
        for entry in os.scandir(target.parent):
            suffix = entry.name[len(prefix) :]
            if entry.name.startswith(prefix) and suffix.isdigit() and int(suffix) < epoch:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def append(self, data: bytes) -> int:
        """Write ``data`` at the end of the staging file; return its length."""
        try:
            _write_fully(self.fd, data, self.length)
        except OSError as exc:
            raise TransportError(
                f"Cannot write the new sink file of '{self.shown}': {exc.strerror}"
            ) from None
        self.length += len(data)
        return len(data)

    def append_records(self, records: Sequence[str]) -> int:
        """Append snapshot records (stored canonical texts) as insert lines; return their length."""
        return self.append(encode_inserts(records))

    def sync(self) -> None:
        """Flush the staging file to disk (before it is switched in)."""
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise TransportError(
                f"Cannot write the new sink file of '{self.shown}': {exc.strerror}"
            ) from None

    def switch_in(self) -> None:
        """Replace the sink with the staging file in one ``rename``, durably.

        The caller holds the connector's fence (a locked row) around this call.
        """
        try:
            os.replace(self.path, self.target)
            fsync_dir(self.target.parent)
        except OSError as exc:
            raise TransportError(f"Cannot reset sink file '{self.shown}': {exc.strerror}") from None

    def discard(self) -> None:
        """Close the staging file and delete it (if it was not switched in)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class FileTransport:
    """Writes each change as one JSON line, in delivery order."""

    name = "file"

    def validate_config(self, config: dict[str, Any], *, tenant: str) -> dict[str, Any]:
        """Check that ``path`` names a file inside the tenant's sink directory."""
        return {"path": self.resolve(config, tenant)[0]}

    def shown_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """A path holds no secret: the settings are shown as they are."""
        return dict(config)

    def config_schema(self) -> dict[str, Any]:
        """The settings' JSON schema (:mod:`app.transports.file_spec`)."""
        return config_schema()

    def sink_key(self, config: dict[str, Any], tenant: str) -> str:
        """The sink file's identity: its resolved path, relative to ``SINK_DIR``.

        Two connectors whose paths resolve to one file (``a.jsonl`` and
        ``./a.jsonl``, or through a symbolic link) have the same key.
        """
        resolved = self.resolve(config, tenant)[1]
        return str(resolved.relative_to(Path(current_app.config["SINK_DIR"]).resolve()))

    def resolve(self, config: dict[str, Any], tenant: str) -> tuple[str, Path]:
        """Validate the settings; return the path as given and as resolved."""
        unknown = sorted(set(config) - {"path"})
        if unknown:
            raise InvalidRequest(
                "Unknown settings of the file transport",
                details={"transport.config": [f"Unknown setting '{k}'" for k in unknown]},
            )
        path = config.get("path")
        if not isinstance(path, str):
            raise InvalidRequest(
                "The file transport needs a 'path'",
                details={"transport.config.path": ["A string is required."]},
            )
        try:
            resolved = resolve_sink_path(path, tenant)
        except ValueError as exc:
            raise InvalidRequest(
                "The sink path is not allowed", details={"transport.config.path": [str(exc)]}
            ) from None
        try:
            mode = os.stat(resolved).st_mode
        except (FileNotFoundError, NotADirectoryError):
            mode = None  # created on first delivery (or refused then)
        except OSError as exc:  # e.g. a name longer than the file system allows
            raise InvalidRequest(
                "The sink path is not allowed",
                details={"transport.config.path": [f"The path cannot be used: {exc.strerror}"]},
            ) from None
        if mode is not None and stat.S_ISDIR(mode):
            raise InvalidRequest(
                "The sink path names a folder",
                details={"transport.config.path": ["The path must name a file."]},
            )
        if mode is not None and not stat.S_ISREG(mode):
            raise InvalidRequest(
                "The sink path is not a regular file",
                details={"transport.config.path": ["The path must name a regular file."]},
            )
        if resolved.name.startswith(".") and ".reset-" in resolved.name:
            raise InvalidRequest(
                "The sink path is not allowed",
                details={"transport.config.path": ["Names like '.x.reset-N' are reserved."]},
            )
        return path, resolved

    def path_of(self, connector: Any) -> Path:
        """Return the resolved sink file of a connector."""
        try:
            return resolve_sink_path(connector.config["path"], connector.view.pipeline.tenant)
        except ValueError as exc:
            raise TransportError(f"Sink file '{connector.config['path']}': {exc}") from None

    def open(self, connector: Any) -> SinkFile:
        """Open a connector's sink file for streaming (created empty if missing)."""
        return SinkFile(self.path_of(connector), connector.config["path"])

    def staging(self, connector: Any, epoch: int) -> StagingFile:
        """Start a reset's new sink file (errors name the path as the connector gave it)."""
        return StagingFile(self.path_of(connector), connector.config["path"], epoch)
