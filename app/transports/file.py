"""The ``file`` transport: a JSON-lines file under the sink directory."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flask import current_app

from app.errors import InvalidRequest
from app.transports.base import TransportError


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


class FileTransport:
    """Writes each change as one JSON line, in delivery order."""

    name = "file"

    def validate_config(self, config: dict[str, Any], *, tenant: str) -> dict[str, Any]:
        """Check that ``path`` names a file inside the tenant's sink directory."""
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
            is_dir = resolved.is_dir()
        except OSError as exc:  # e.g. a name longer than the file system allows
            raise InvalidRequest(
                "The sink path is not allowed",
                details={"transport.config.path": [f"The path cannot be used: {exc.strerror}"]},
            ) from None
        if is_dir:
            raise InvalidRequest(
                "The sink path names a folder",
                details={"transport.config.path": ["The path must name a file."]},
            )
        return {"path": path}

    def path_of(self, connector: Any) -> Path:
        """Return the resolved sink file of a connector."""
        try:
            return resolve_sink_path(connector.config["path"], connector.view.pipeline.tenant)
        except ValueError as exc:
            raise TransportError(f"Sink file '{connector.config['path']}': {exc}") from None

    def reset(self, connector: Any) -> None:
        """Replace the sink file atomically with an empty one."""
        target = self.path_of(connector)
        # Errors name the path as the connector was given it, not the server's layout.
        shown = connector.config["path"]
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TransportError(
                f"Cannot reset sink file '{shown}': cannot create its folder: {exc.strerror}"
            ) from None
        try:
            fd, tmp = tempfile.mkstemp(prefix=".reset-", dir=target.parent)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except OSError as exc:
            raise TransportError(f"Cannot reset sink file '{shown}': {exc.strerror}") from None

    def deliver(self, connector: Any, records: Sequence[dict[str, Any]], batch_id: str) -> None:
        """Append the records as JSON lines and flush them to disk."""
        target = self.path_of(connector)
        data = "".join(json.dumps(r, separators=(",", ":"), sort_keys=True) + "\n" for r in records)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "a", encoding="utf-8") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise TransportError(
                f"Cannot write sink file '{connector.config['path']}': {exc.strerror}"
            ) from None
