"""API key work: creating, listing and revoking keys, and checking a presented key.

A key is ``apikey:`` followed by 43 URL-safe characters (256 random bits).
Only its SHA-256 is stored: the key is high-entropy, so a slow password hash
would add latency on every request and no safety. Checking a key is one
lookup on the hash's unique index, and each serving process remembers a
checked key for ``API_KEY_CACHE_SECONDS`` (default 2) so that a busy caller
costs one lookup per process per period, not one per request. Revoking
deletes the row: the process that revokes forgets its keys at once, and every
other process stops accepting the key within ``API_KEY_CACHE_SECONDS`` (0
turns the cache off, and revocation is then seen by the very next request).
A key past its ``expires_at`` answers 401 too (checked on every request,
cached or not), and stays listed until it is revoked.

A credential never mints one that outranks or outlives it: the creator's role
bounds the new key's role, and the creator's expiry (a JWT's ``exp``, a key's
``expires_at``) bounds the new key's. Only the command line, run by an
operator on the server, creates keys without a creator.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import sqlalchemy as sa
from cachetools import TTLCache
from flask import current_app

from app.auth import Principal
from app.auth.models import ApiKey, Role
from app.database import commit_unique, is_transient_error, utcnow
from app.errors import DuplicateName, InsufficientPermissions, InvalidRequest, UnknownApiKey
from app.extensions import db
from app.pipelines.models import is_valid_name

KEY_PREFIX = "apikey:"
# 32 random bytes: 256 bits, 43 characters once URL-safe base64 encoded.
KEY_BYTES = 32
KEY_RE = re.compile(r"apikey:[A-Za-z0-9_-]{43}")
# Characters of the key kept in the clear for display: "apikey:" and 6 more.
DISPLAY_PREFIX_LENGTH = len(KEY_PREFIX) + 6
# last_used_at is written at most this often per key, to keep writes off the hot path.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


def generate_key() -> str:
    """Return a new random API key."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def hash_key(key: str) -> str:
    """Return the stored form of a key: its hex SHA-256."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def is_well_formed(key: str) -> bool:
    """Tell whether a string has the shape of a key this service issues."""
    return KEY_RE.fullmatch(key) is not None


def check_role(role: str) -> str:
    """Return the role if it is one of ``Role.ALL``, else raise ``InvalidRequest``."""
    if role not in Role.ALL:
        raise InvalidRequest(
            f"Unknown role '{role}'; use 'read', 'write' or 'admin'",
            details={"role": list(Role.ALL)},
        )
    return role


def _iso(value: dt.datetime) -> str:
    """A time as the API shows it."""
    return value.isoformat(timespec="seconds")


def bound_expiry(
    role: str, expires_at: dt.datetime | None, creator: Principal | None, now: dt.datetime
) -> dt.datetime | None:
    """Return the new key's expiry once checked against its creator; raise if it may not be.

    A key may not outrank its creator (403) nor outlive it (403); a key asked
    for without an expiry gets its creator's. An expiry must lie in the future (400).
    """
    if expires_at is not None and expires_at <= now:
        raise InvalidRequest(
            "expires_at must lie in the future", details={"expires_at": _iso(expires_at)}
        )
    if creator is None:
        return expires_at
    if not Role.allows(creator.role, role):
        raise InsufficientPermissions(
            f"These credentials have the '{creator.role}' role and cannot create a "
            f"'{role}' key: a key never outranks the credential that creates it",
            details={"role": creator.role, "requested_role": role},
        )
    limit = creator.expires_at
    if limit is None:
        return expires_at
    if expires_at is None:
        return limit
    if expires_at > limit:
        raise InsufficientPermissions(
            f"These credentials expire at {_iso(limit)} and cannot create a key that "
            "outlives them; ask for an earlier expires_at",
            details={"expires_at": _iso(expires_at), "credential_expires_at": _iso(limit)},
        )
    return expires_at


def create_key(
    tenant: str,
    name: str,
    role: str,
    expires_at: dt.datetime | None = None,
    creator: Principal | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; return it with its secret, which is never available again.

    ``creator`` is the credential asking (None: an operator on the command
    line); the new key neither outranks nor outlives it.
    """
    check_role(role)
    expires_at = bound_expiry(role, expires_at, creator, utcnow())
    secret = generate_key()
    api_key = ApiKey(
        tenant=tenant,
        name=name,
        role=role,
        key_hash=hash_key(secret),
        prefix=secret[:DISPLAY_PREFIX_LENGTH],
        expires_at=expires_at,
    )
    db.session.add(api_key)
    commit_unique(
        DuplicateName(
            f"An API key named '{name}' already exists; revoke it first or pick another name",
            details={"api_key_name": name},
        )
    )
    return api_key, secret


def list_keys(tenant: str, limit: int | None = None, after: str | None = None) -> list[ApiKey]:
    """Return the tenant's keys by name: at most ``limit``, those named after ``after``."""
    query = sa.select(ApiKey).where(ApiKey.tenant == tenant)
    if after is not None:
        query = query.where(ApiKey.name > after)
    return list(db.session.execute(query.order_by(ApiKey.name).limit(limit)).scalars())


def get_key(tenant: str, name: str) -> ApiKey:
    """Return the tenant's key of that name or raise ``UnknownApiKey``."""
    if not is_valid_name(name):  # names no key, and is never sent to the database
        raise UnknownApiKey(name)
    api_key = db.session.execute(
        sa.select(ApiKey).where(ApiKey.tenant == tenant, ApiKey.name == name)
    ).scalar_one_or_none()
    if api_key is None:
        raise UnknownApiKey(name)
    return api_key


def revoke_key(tenant: str, name: str) -> None:
    """Delete the tenant's key of that name.

    This process stops accepting it at once; other processes within
    ``API_KEY_CACHE_SECONDS`` (see :class:`KeyCache`).
    """
    if not is_valid_name(name):  # names no key, and is never sent to the database
        raise UnknownApiKey(name)
    result = db.session.execute(
        sa.delete(ApiKey).where(ApiKey.tenant == tenant, ApiKey.name == name)
    )
    db.session.commit()
    key_cache().clear()
    if result.rowcount != 1:
        raise UnknownApiKey(name)


class KeyExpired(Exception):
    """The key exists but its ``expires_at`` has passed."""

    def __init__(self, expires_at: dt.datetime) -> None:
        super().__init__(f"expired at {_iso(expires_at)}")
        self.expires_at = expires_at


class KeyRow(NamedTuple):
    """What a key check needs of its row."""

    id: int
    tenant: str
    name: str
    role: str
    last_used_at: dt.datetime | None
    expires_at: dt.datetime | None


class KeyCache:
    """Keys this process checked lately, by hash, for ``ttl`` seconds (monotonic clock).

    Only keys found are remembered (an unknown key is looked up every time),
    at most ``maxsize`` of them. ``ttl`` 0 turns the cache off. The cache only
    bounds how soon a revocation made elsewhere is seen; expiry is checked
    against the row on every request.
    """

    def __init__(
        self, ttl: float, maxsize: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._rows: TTLCache[str, KeyRow] | None = (
            TTLCache(maxsize, ttl, timer=clock) if ttl > 0 else None
        )

    def get(self, key_hash: str) -> KeyRow | None:
        """Return the remembered row of a hash, or None."""
        if self._rows is None:
            return None
        with self._lock:
            return self._rows.get(key_hash)

    def put(self, key_hash: str, row: KeyRow) -> None:
        """Remember a row found in the database."""
        if self._rows is not None:
            with self._lock:
                self._rows[key_hash] = row

    def clear(self) -> None:
        """Forget every key (after a revocation in this process)."""
        if self._rows is not None:
            with self._lock:
                self._rows.clear()


_KEY_LOOKUP = sa.select(
    ApiKey.id,
    ApiKey.tenant,
    ApiKey.name,
    ApiKey.role,
    ApiKey.last_used_at,
    ApiKey.expires_at,
).where(ApiKey.key_hash == sa.bindparam("key_hash"))


def key_cache() -> KeyCache:
    """Return the current app's key cache."""
    return current_app.extensions["api_key_cache"]


def principal_of_key(key: str, now: dt.datetime | None = None) -> Principal | None:
    """Return the principal of a well-formed key, or None if no key matches.

    Raises ``KeyExpired`` for a key past its expiry. A key checked within
    ``API_KEY_CACHE_SECONDS`` is taken from this process's :class:`KeyCache`;
    otherwise one lookup on the unique index of the hash (columns only, so
    nothing lingers in the request's session).
    """
    key_hash = hash_key(key)
    cache = key_cache()
    row = cache.get(key_hash)
    looked_up = row is None
    if looked_up:
        found = db.session.execute(_KEY_LOOKUP, {"key_hash": key_hash}).one_or_none()
        if found is None:
            return None
        row = KeyRow(*found)
    now = now or utcnow()
    _check_expiry(row, now)
    if looked_up:
        cache.put(key_hash, row)
        touch(row.id, row.last_used_at, now)
    return _principal(row)


def _check_expiry(row: KeyRow, now: dt.datetime) -> None:
    if row.expires_at is not None and row.expires_at <= now:
        raise KeyExpired(row.expires_at)


def _principal(row: KeyRow) -> Principal:
    return Principal(
        name=f"apikey:{row.name}", tenant=row.tenant, role=row.role, expires_at=row.expires_at
    )


class KeyHandle(NamedTuple):
    """What a browser session keeps of a key instead of the key: its row id and display prefix.

    The prefix (``apikey:`` and 6 characters, shown in key listings anyway) tells
    a key apart from a later one that a database reusing row ids gave the same id.
    """

    id: int
    prefix: str
    # The key's console generation at sign-in: a sign-out moves the key's on.
    generation: int = 0


_HANDLE_LOOKUP = sa.select(ApiKey.id, ApiKey.prefix, ApiKey.console_generation).where(
    ApiKey.key_hash == sa.bindparam("key_hash")
)
_KEY_BY_ID = sa.select(
    *_KEY_LOOKUP.selected_columns, ApiKey.prefix, ApiKey.console_generation
).where(ApiKey.id == sa.bindparam("key_id"))


def handle_of_key(key: str) -> tuple[KeyHandle, Principal] | None:
    """Check a well-formed key as :func:`principal_of_key` does; also return its handle.

    None if no key matches; raises ``KeyExpired`` for an expired one.
    """
    principal = principal_of_key(key)
    if principal is None:
        return None
    found = db.session.execute(_HANDLE_LOOKUP, {"key_hash": hash_key(key)}).one_or_none()
    if found is None:  # revoked in between
        return None
    return KeyHandle(*found), principal


def principal_of_handle(handle: KeyHandle, now: dt.datetime | None = None) -> Principal | None:
    """Return the principal of the key a handle names, or None if it was revoked.

    One lookup by primary key, on every call (no cache: a revocation is seen
    at once). None too when the key's console sessions were ended after the
    handle was made (:func:`end_console_sessions`). Raises ``KeyExpired`` for
    a key past its expiry.
    """
    found = db.session.execute(_KEY_BY_ID, {"key_id": handle.id}).one_or_none()
    if (
        found is None
        or found.prefix != handle.prefix
        or found.console_generation != handle.generation
    ):
        return None
    row = KeyRow(*found[: len(KeyRow._fields)])
    now = now or utcnow()
    _check_expiry(row, now)
    touch(row.id, row.last_used_at, now)
    return _principal(row)


def end_console_sessions(handle: KeyHandle) -> None:
    """End every console session made from the handle's key (all browsers, all copies).

    One conditional UPDATE, in the database every process reads: a session
    holds the generation it signed in under, and no longer matches.
    """
    db.session.execute(
        sa.update(ApiKey)
        .where(ApiKey.id == handle.id, ApiKey.prefix == handle.prefix)
        .values(console_generation=ApiKey.console_generation + 1)
    )
    db.session.commit()


def touch(key_id: int, last_used_at: dt.datetime | None, now: dt.datetime | None = None) -> None:
    """Record that a key was used, at most once per ``LAST_USED_RESOLUTION``.

    Most requests write nothing. When the stored time is stale, a conditional
    UPDATE lets one of several concurrent requests (in any process) record
    it. The time is bookkeeping: a busy database must not fail the request.
    """
    now = now or utcnow()
    cutoff = now - LAST_USED_RESOLUTION
    if last_used_at is not None and last_used_at > cutoff:
        return
    try:
        db.session.execute(
            sa.update(ApiKey)
            .where(
                ApiKey.id == key_id,
                sa.or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= cutoff),
            )
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
    except Exception as exc:
        db.session.rollback()
        if not is_transient_error(exc):
            raise
