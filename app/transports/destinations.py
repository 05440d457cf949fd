"""Where an http sink may send: allowed and denied networks, checked when connecting.

A connector's URL is chosen by any caller with the ``write`` role, and the
server is the one that connects: without a check, it could be made to POST to
a cloud metadata service or to probe ports behind its firewall. The check runs
on the addresses a host name resolves to *at connect time*, inside the
connection itself, and the socket then connects to an address that passed it:
a name that resolves to an allowed address when the connector is created and
to a denied one later (DNS rebinding) is refused. TLS keeps the host name for
SNI and certificate checks, and the request keeps it in its ``Host`` header.

Rules (``HTTP_SINK_DENIED_NETWORKS`` and ``HTTP_SINK_ALLOWED_NETWORKS``, lists
of CIDRs, addresses and host names; ``*.example.com`` names the subdomains):

- a host name on the denied list, or any address it resolves to inside a
  denied network, is refused (denied wins);
- when the allowed list is not empty, the host name must be on it, or every
  address it resolves to must lie in an allowed network.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flask import current_app, has_app_context
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection

from app.config import DEFAULT_DENIED

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class DestinationNotAllowed(Exception):
    """The sink's host or an address it resolves to is not an allowed destination.

    Not an ``OSError``: urllib3 and requests let it through unwrapped and do not retry it.
    """


def _host(name: str) -> str:
    """A host name as the rules compare it: lower case, no brackets, no final dot."""
    return name.strip("[]").rstrip(".").lower()


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as the rules compare it: an IPv4-mapped IPv6 address is its IPv4 one."""
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class DestinationPolicy:
    """Parsed allowed and denied lists."""

    allowed_networks: tuple[IPNetwork, ...]
    allowed_names: tuple[str, ...]
    denied_networks: tuple[IPNetwork, ...]
    denied_names: tuple[str, ...]

    @classmethod
    def parse(cls, allowed: Iterable[str], denied: Iterable[str]) -> DestinationPolicy:
        """Build a policy from two lists of entries; raise ``ValueError`` on a bad one."""
        a_nets, a_names = _split(allowed)
        d_nets, d_names = _split(denied)
        return cls(a_nets, a_names, d_nets, d_names)

    def name_refused(self, host: str) -> bool:
        """Tell whether a host name is refused whatever it resolves to."""
        return _name_in(_host(host), self.denied_names)

    def allows(self, host: str, addresses: Iterable[str]) -> bool:
        """Tell whether ``host``, resolved to ``addresses``, may be connected to."""
        name = _host(host)
        parsed = [_address(a) for a in addresses]
        if not parsed or _name_in(name, self.denied_names):
            return False
        if any(a in net for a in parsed for net in self.denied_networks):
            return False
        if not (self.allowed_networks or self.allowed_names):
            return True
        if _name_in(name, self.allowed_names):
            return True
        return all(any(a in net for net in self.allowed_networks) for a in parsed)


def _split(entries: Iterable[str]) -> tuple[tuple[IPNetwork, ...], tuple[str, ...]]:
    """Sort entries into networks (CIDRs, addresses) and host names."""
    if isinstance(entries, str):
        entries = [e for e in entries.replace(",", " ").split()]
    networks: list[IPNetwork] = []
    names: list[str] = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise ValueError(f"not a network or host name: {entry!r}")
        entry = entry.strip()
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if "/" in entry or any(ch.isspace() for ch in entry):
                raise ValueError(f"not a network or host name: {entry!r}") from None
            names.append(_host(entry))
    return tuple(networks), tuple(names)


def _name_in(name: str, names: tuple[str, ...]) -> bool:
    """Whether ``name`` is one of ``names`` (``*.x`` matches the subdomains of ``x``)."""
    for entry in names:
        if entry.startswith("*."):
            if name.endswith(entry[1:]):
                return True
        elif name == entry:
            return True
    return False


@functools.lru_cache(maxsize=8)
def _cached_policy(allowed: tuple[str, ...], denied: tuple[str, ...]) -> DestinationPolicy:
    return DestinationPolicy.parse(allowed, denied)


def _entries(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.replace(",", " ").split())
    return tuple(value)


def current_policy() -> DestinationPolicy:
    """The app's policy (``HTTP_SINK_*_NETWORKS``); the defaults outside an app."""
    if not has_app_context():
        return _cached_policy((), DEFAULT_DENIED)
    config = current_app.config
    return _cached_policy(
        _entries(config.get("HTTP_SINK_ALLOWED_NETWORKS")),
        _entries(config.get("HTTP_SINK_DENIED_NETWORKS", DEFAULT_DENIED)),
    )


def literal_addresses(host: str) -> list[str] | None:
    """The address a numeric host names (``2130706433``, ``0``, ``[::1]``...), no DNS; else None.

    The C library's parser decides, as it will when connecting, so every
    spelling of an address that it accepts is recognised.
    """
    try:
        infos = socket.getaddrinfo(
            _host(host), None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
        )
    except (socket.gaierror, UnicodeError):
        return None
    return [str(info[4][0]) for info in infos]


# The attempt running in this thread (see attempt_deadline): its socket and whether it was cut.
_attempt = threading.local()


@contextmanager
def attempt_deadline(seconds: float | None) -> Iterator[dict[str, Any]]:
    """Cut this thread's http connection once ``seconds`` have passed, whatever it is doing.

    Socket timeouts bound each wait for bytes, not an attempt: a receiver that
    sends its status line and then one header byte every second is never
    timed out. Within the block, a timer shuts the attempt's socket down at
    the deadline (connecting, TLS, sending, the status line, headers, body):
    the request fails at once as a connection broken off, and the state says
    ``cut``. ``None``: no deadline.
    """
    state: dict[str, Any] = {"sock": None, "cut": False}
    if seconds is None:
        yield state
        return
    _attempt.state = state
    timer = threading.Timer(max(0.0, seconds), _cut, (state,))
    timer.daemon = True
    timer.start()
    try:
        yield state
    finally:
        timer.cancel()
        _attempt.state = None


def _cut(state: dict[str, Any]) -> None:
    state["cut"] = True
    _shut(state["sock"])


def _shut(sock: Any) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _watch(sock: Any) -> None:
    """Put the socket under this thread's attempt deadline (cut at once if it passed)."""
    state = getattr(_attempt, "state", None)
    if state is not None and sock is not None:
        state["sock"] = sock
        if state["cut"]:
            _shut(sock)


class _GuardedConnection:
    """Resolves the host, checks every address, then connects to a checked one.

    A pooled connection was checked when it was made: the policy is read from the
    app's settings, fixed for a process. Its socket is under the thread's attempt
    deadline (:func:`attempt_deadline`), a new one from its creation, a reused
    one from its request.
    """

    def request(self: Any, *args: Any, **kwargs: Any) -> Any:
        """Send a request on this connection, its socket watched by the attempt deadline."""
        _watch(self.sock)
        return super().request(*args, **kwargs)  # type: ignore[misc]

    def _new_conn(self: Any) -> socket.socket:
        try:
            infos = socket.getaddrinfo(
                self._dns_host, self.port, connection.allowed_gai_family(), socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not current_policy().allows(self._dns_host, addresses):
            raise DestinationNotAllowed(self.host)
        error: OSError | None = None
        for address in addresses:
            try:
                # A numeric address: create_connection resolves nothing more.
                sock = connection.create_connection(
                    (address, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except OSError as exc:
                error = exc
            else:
                _watch(sock)  # TLS and the request on it count against the deadline
                return sock
        if isinstance(error, TimeoutError):
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out.") from error
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}")


class GuardedHTTPConnection(_GuardedConnection, HTTPConnection):
    """An http connection that only reaches allowed destinations."""


class GuardedHTTPSConnection(_GuardedConnection, HTTPSConnection):
    """An https connection that only reaches allowed destinations (SNI and certificate
    checks still use the URL's host name)."""


class GuardedHTTPConnectionPool(HTTPConnectionPool):
    """A pool of guarded http connections."""

    ConnectionCls = GuardedHTTPConnection


class GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    """A pool of guarded https connections."""

    ConnectionCls = GuardedHTTPSConnection


GUARDED_POOLS = {"http": GuardedHTTPConnectionPool, "https": GuardedHTTPSConnectionPool}
