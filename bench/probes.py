"""Measurements over HTTP against a served instance, as a client sees them.

- :func:`push_latency`: one record pushed, until its line is in the file sink
  (inotify on the sink's folder, so the wait costs no CPU that the service
  could use; a tight poll where inotify is missing);
- :func:`reset_to_complete`: ``POST .../reset``, then ``reset_status`` every few
  milliseconds until it says complete;
- :func:`ingest`: pre-encoded ``POST .../changes`` bodies from one or several
  clients at once;
- :func:`wait_lines`: until a sink file holds a number of lines;
- :func:`scrape`: one ``GET /metrics``, its time and size.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests


def progress(message: str) -> None:
    """Say on stderr what the run is doing (its steps take minutes at full size)."""
    print(f"# {dt.datetime.now(dt.UTC):%H:%M:%S} {message}", file=sys.stderr, flush=True)


class Api:
    """A keep-alive session to one served instance, with one credential."""

    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.key = key
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"

    def call(
        self, method: str, path: str, expect: tuple[int, ...] = (200,), **kwargs: Any
    ) -> requests.Response:
        """Send a request; raise with the error body if the status is not expected."""
        response = self.session.request(method, self.base + path, timeout=120, **kwargs)
        if response.status_code not in expect:
            raise RuntimeError(
                f"{method} {path} answered {response.status_code}: {response.text[:500]}"
            )
        return response

    def push(self, pipeline: str, view: str, body: bytes) -> requests.Response:
        """Push one encoded body of changes to a view."""
        return self.call(
            "POST",
            f"/v0/pipelines/{pipeline}/views/{view}/changes",
            (200, 202),
            data=body,
            headers={"Content-Type": "application/json"},
        )

    def action(self, pipeline: str, action: str) -> None:
        """``POST /v0/pipelines/{p}/{action}`` (start, pause, resume, ...)."""
        self.call("POST", f"/v0/pipelines/{pipeline}/{action}", (200, 202))

    def request_reset(self, pipeline: str, view: str, connector: str) -> str:
        """Queue a reset of a connector; return its token."""
        response = self.call(
            "POST", f"/v0/pipelines/{pipeline}/views/{view}/connectors/{connector}/reset", (202,)
        )
        return response.json()["token"]

    def reset_status(self, pipeline: str, token: str) -> dict[str, Any]:
        """The reset_status body of a token."""
        response = self.call(
            "GET", f"/v0/pipelines/{pipeline}/reset_status", params={"token": token}
        )
        return response.json()


# -- waiting for a file sink without spending CPU --------------------------------------------

_IN_MODIFY, _IN_MOVED_TO, _IN_CREATE = 0x2, 0x80, 0x100


class SinkWatch:
    """Wait for changes to the files of a folder: inotify, or a 0.2 ms poll without it."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.fd = -1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            mask = _IN_MODIFY | _IN_MOVED_TO | _IN_CREATE
            if fd >= 0 and libc.inotify_add_watch(fd, bytes(folder), mask) >= 0:
                self.fd = fd
            elif fd >= 0:
                os.close(fd)
        except (AttributeError, OSError):
            self.fd = -1

    def wait(self, timeout: float) -> None:
        """Return when a file of the folder may have changed, or after ``timeout``."""
        if self.fd < 0:
            time.sleep(min(timeout, 0.0002))
            return
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if ready:
            try:
                while os.read(self.fd, 65536):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        """Stop watching."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def push_latency(
    api: Api, pipeline: str, view: str, sink: Path, watch: SinkWatch, record_id: int
) -> tuple[float, float]:
    """Push one record; return the seconds until its line is in ``sink``, and the POST's.

    The clock starts before the request is sent; the line is looked for in
    the bytes the sink gained (the file is only appended to between resets).
    """
    body = json.dumps([{"insert": {"id": record_id, "probe": True}}]).encode()
    needle = f'"id":{record_id},'.encode()
    start = _size(sink)
    watch.wait(0)  # forget older events
    started = time.perf_counter()
    api.push(pipeline, view, body)
    posted = time.perf_counter() - started
    deadline = started + 60
    while True:
        size = _size(sink)
        if size > start:
            with open(sink, "rb") as fh:
                fh.seek(start)
                if needle in fh.read(size - start):
                    return time.perf_counter() - started, posted
        if time.perf_counter() > deadline:
            raise RuntimeError(f"record {record_id} did not reach {sink} within 60 s")
        watch.wait(0.05)


def reset_to_complete(
    api: Api, pipeline: str, view: str, connector: str, poll: float = 0.005, timeout: float = 600
) -> tuple[float, dict[str, Any]]:
    """POST a reset, then poll reset_status every ``poll`` s; return the seconds and the body."""
    started = time.perf_counter()
    token = api.request_reset(pipeline, view, connector)
    while True:
        body = api.reset_status(pipeline, token)
        if body["status"] != "inprogress":
            return time.perf_counter() - started, body
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"the reset was not done within {timeout:.0f}s: {body}")
        time.sleep(poll)


def ingest(
    base: str, key: str, pipeline: str, view: str, bodies: list[bytes], clients: int
) -> float:
    """Push ``bodies`` from ``clients`` sessions at once (each its share, in order); seconds."""
    apis = [Api(base, key) for _ in range(clients)]
    for api in apis:  # connect before the clock starts
        api.call("GET", "/healthz")
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        start.wait()
        try:
            for body in bodies[index::clients]:
                apis[index].push(pipeline, view, body)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    return seconds


class LineCounter:
    """Counts the lines of a file that only grows, reading only what was added."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def count(self) -> int:
        """The lines now."""
        size = _size(self.path)
        if size > self.offset:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read(size - self.offset)
            self.offset += len(data)
            self.lines += data.count(b"\n")
        return self.lines


def wait_lines(path: Path, lines: int, timeout: float, poll: float = 0.005) -> float:
    """Wait until ``path`` holds ``lines`` lines; return the seconds it took."""
    counter = LineCounter(path)
    started = time.perf_counter()
    while counter.count() < lines:
        if time.perf_counter() - started > timeout:
            raise RuntimeError(
                f"{path} holds {counter.lines} lines after {timeout:.0f}s, not {lines}"
            )
        time.sleep(poll)
    return time.perf_counter() - started


def scrape(base: str, key: str) -> tuple[float, int]:
    """One ``GET /metrics`` with a credential, on a new connection; return seconds and bytes."""
    started = time.perf_counter()
    response = requests.get(
        base + "/metrics",
        headers={"Authorization": f"Bearer {key}", "Accept-Encoding": "identity"},
        timeout=300,
    )
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"GET /metrics answered {response.status_code}: {response.text[:300]}")
    return seconds, len(response.content)


def in_parallel(
    base: str, key: str, jobs: list[Callable[[Api], object]], clients: int = 4
) -> float:
    """Run ``jobs`` from ``clients`` sessions at once (each its share in order); return seconds."""
    apis = [Api(base, key) for _ in range(clients)]
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            for job in jobs[index::clients]:
                job(apis[index])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started
