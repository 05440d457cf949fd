"""The service as users run it: the real gunicorn with the project's ``gunicorn.conf.py``.

:class:`Server` starts ``gunicorn -c gunicorn.conf.py wsgi:app`` in the project
folder, what ``make serve`` runs: the master, its request workers and, as
gunicorn dirty workers under a dirty arbiter, ``DELIVERY_PROCESSES`` delivery
processes running the worker. Settings are the defaults: only what a
deployment must name is set, as ``PIPELINE_MANAGER_*`` variables (the bind
address, the database URL, the secret key and the sink folder), plus, where a
measurement is about one, that setting (``DELIVERY_PROCESSES``,
``METRICS_OPERATOR_TENANT``). Every other ``PIPELINE_MANAGER_*`` variable of
the bench's own environment is left out, so a developer's settings cannot leak
in. The bare Flask app (:mod:`bench.plain_app`) runs under
``bench/gunicorn_conf.py``: the project's server settings without its hooks and
delivery processes.

CPU is read from ``/proc`` (utime + stime of every process of a tree, in clock
ticks): :func:`process_tree`, :func:`measure_cpu`, and :class:`PostgresServer`
for the PostgreSQL server's processes when it runs on this host.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from bench.service import Service
from bench.wrk import free_port

ROOT = Path(__file__).resolve().parent.parent
PROJECT_CONF = ROOT / "gunicorn.conf.py"
PLAIN_CONF = Path(__file__).resolve().parent / "gunicorn_conf.py"
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def service_env(service: Service, **settings: Any) -> dict[str, str]:
    """The environment of a server of ``service``'s database: defaults, plus ``settings``.

    ``settings`` (e.g. ``DELIVERY_PROCESSES=2``) become ``PIPELINE_MANAGER_*``
    variables, JSON-encoded unless they are strings, as the app decodes them.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("PIPELINE_MANAGER_") and name != "PROMETHEUS_MULTIPROC_DIR"
    }
    named = {
        name: service.config[name] for name in ("SQLALCHEMY_DATABASE_URI", "SECRET_KEY", "SINK_DIR")
    }
    url = sa.make_url(named["SQLALCHEMY_DATABASE_URI"])
    if url.get_backend_name() == "postgresql":
        # The server's connections, told apart from the bench's own in pg_stat_activity.
        url = url.update_query_dict({"application_name": application_name(service)})
        named["SQLALCHEMY_DATABASE_URI"] = url.render_as_string(hide_password=False)
    for name, value in {**named, **settings}.items():
        env[f"PIPELINE_MANAGER_{name}"] = value if isinstance(value, str) else json.dumps(value)
    return env


class Server:
    """One gunicorn master on a free loopback port, and the processes under it."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        env: dict[str, str],
        target: str = "wsgi:app",
        conf: Path = PROJECT_CONF,
        ready_path: str = "/readyz",
    ) -> None:
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "PIPELINE_MANAGER_BIND": f"127.0.0.1:{self.port}"}
        # gunicorn.conf.py names each server after its address (proc_name), which
        # keeps the delivery processes of servers side by side apart.
        self.argv = [GUNICORN, "-c", str(conf), target]
        self.ready_path = ready_path
        # gunicorn's error log, where the app logs too: a file, never an unread pipe.
        self.log_path = workdir / f"gunicorn-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> None:
        """Start gunicorn; return once ``ready_path`` answers 200 (``/readyz``: workers up)."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 (fixed argv, no shell)
                self.argv, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=log
            )
        deadline = time.monotonic() + timeout
        answer = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn ({self.name}) exited: {self.log_tail()}")
            try:
                response = requests.get(self.base + self.ready_path, timeout=30)
                if response.status_code == 200:
                    return
                answer = f"{response.status_code} {response.text[:300]}"
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gunicorn ({self.name}) not ready in {timeout:.0f}s: {answer}")

    def stop(self) -> None:
        """Stop gunicorn as an operator would (SIGTERM; SIGKILL after 40 s)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self, size: int = 3000) -> str:
        """The end of gunicorn's error log."""
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        """The master's process id."""
        assert self.process is not None, "not started"
        return self.process.pid

    def pids(self) -> list[int]:
        """The master and every process under it."""
        return process_tree(self.pid)

    def roles(self) -> dict[int, str]:
        """Each process of the tree by role: master, request worker, dirty arbiter, delivery.

        The dirty arbiter is the master's child that has children of its own
        (the delivery processes); the master's other children serve requests.
        """
        children = children_of()
        roles = {self.pid: "master"}
        for child in children.get(self.pid, []):
            if children.get(child):
                roles[child] = "dirty arbiter"
                for grandchild in process_tree(child)[1:]:
                    roles[grandchild] = "delivery process"
            else:
                roles[child] = "request worker"
        return roles


# -- CPU from /proc -----------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (None: the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name sits in parentheses and may hold spaces: split after its end.
    return text[text.rindex(")") + 2 :].split()


def children_of() -> dict[int, list[int]]:
    """Every process's children, from ``/proc``."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                children[int(fields[1])].append(int(entry))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and every process under it (``root`` first)."""
    children = children_of()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """CPU seconds (user + system, every thread) each live process has used so far."""
    used = {}
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            used[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return used


@dataclass
class CpuUse:
    """The CPU a group of processes used over one window."""

    seconds: float
    by_pid: dict[int, float] = field(default_factory=dict)
    # Processes that ended within the window: what they used in it is not counted.
    gone: int = 0

    @property
    def cores(self) -> float:
        """CPU seconds per second of the window."""
        return sum(self.by_pid.values()) / self.seconds

    def by_role(self, roles: dict[int, str]) -> dict[str, float]:
        """Cores per role (processes not in ``roles`` count as "other")."""
        out: dict[str, float] = collections.defaultdict(float)
        for pid, used in self.by_pid.items():
            out[roles.get(pid, "other")] += used / self.seconds
        return dict(out)


class CpuMeter:
    """The CPU each group of processes uses between :meth:`start` and :meth:`stop`.

    Each group's processes are listed at both ends; one born in between
    counts from zero, one that ended in between is counted as gone.
    """

    def __init__(self, groups: dict[str, Callable[[], Iterable[int]]]) -> None:
        self.groups = groups
        self.lists: dict[str, list[int]] = {}
        self.before: dict[str, dict[int, float]] = {}
        self.started = 0.0

    def start(self) -> None:
        """Take the first reading."""
        self.lists = {name: list(pids()) for name, pids in self.groups.items()}
        self.before = {name: cpu_seconds(pids) for name, pids in self.lists.items()}
        self.started = time.monotonic()

    def stop(self) -> dict[str, CpuUse]:
        """Take the second reading; return each group's use in between."""
        lists = {
            name: sorted(set(self.lists[name]) | set(pids())) for name, pids in self.groups.items()
        }
        after = {name: cpu_seconds(pids) for name, pids in lists.items()}
        wall = time.monotonic() - self.started
        return {
            name: CpuUse(
                wall,
                {pid: used - self.before[name].get(pid, 0.0) for pid, used in after[name].items()},
                len(set(self.before[name]) - set(after[name])),
            )
            for name in self.groups
        }


def measure_cpu(
    groups: dict[str, Callable[[], Iterable[int]]], seconds: float
) -> dict[str, CpuUse]:
    """The CPU each group of processes uses over one window of ``seconds``."""
    meter = CpuMeter(groups)
    meter.start()
    time.sleep(seconds)
    return meter.stop()


def role_note(use: CpuUse, roles: dict[int, str]) -> str:
    """Say the cores of each role, and how many processes each has."""
    counts = collections.Counter(roles.values())
    shares = use.by_role(roles)
    order = ("master", "request worker", "dirty arbiter", "delivery process", "other")
    parts = [
        f"{role} x{counts[role]} {shares.get(role, 0.0):.4f}"
        for role in order
        if role in shares or counts[role]
    ]
    gone = f"; {use.gone} processes ended in the window" if use.gone else ""
    return "cores by role: " + ", ".join(parts) + gone


class PostgresServer:
    """The PostgreSQL server's processes, when it runs on this host (``/proc`` shows them)."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, poolclass=NullPool)
        with self.engine.connect() as conn:
            backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            fields = _stat(backend)
        # The postmaster is every backend's parent; None when the server is elsewhere.
        self.postmaster = int(fields[1]) if fields is not None else None

    @property
    def local(self) -> bool:
        """Whether the server's processes can be seen here."""
        return self.postmaster is not None

    def tree(self) -> list[int]:
        """The postmaster and every server process (its background workers, all backends)."""
        return process_tree(self.postmaster) if self.postmaster is not None else []

    def backends(self, application_name: str) -> list[int]:
        """The server processes of the connections made under ``application_name``."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
                {"name": application_name},
            )
            return [pid for (pid,) in rows]

    def close(self) -> None:
        """Release the engine."""
        self.engine.dispose()


def application_name(service: Service) -> str:
    """The ``application_name`` of the served processes' connections to ``service``'s database."""
    return f"pm-served-{service.name}"


def wait_settled(service: Service, timeout: float = 600.0) -> float:
    """Wait until no connector is due and no reset is in progress; return the seconds taken."""
    started = time.monotonic()
    while True:
        due = service.scalar("SELECT count(*) FROM connectors WHERE due_at IS NOT NULL")
        running = service.scalar("SELECT count(*) FROM resets WHERE status = 'inprogress'")
        if not due and not running:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(
                f"{service.name}: still {due} connectors due, {running} resets in progress "
                f"after {timeout:.0f}s"
            )
        time.sleep(0.2)
