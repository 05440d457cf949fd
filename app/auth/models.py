"""API keys: a name, a tenant, a role, an optional expiry and the hash of a secret shown once."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.database import UTCDateTime, utcnow
from app.extensions import db
from app.pipelines.models import NAME_MAX


class Role:
    """The roles a caller can hold, weakest first: each implies the ones before it.

    ``read`` reads, ``write`` also changes pipelines, ``admin`` also manages
    API keys.
    """

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"
    ALL = (READ, WRITE, ADMIN)

    @classmethod
    def allows(cls, role: str, needed: str) -> bool:
        """Tell whether ``role`` grants what ``needed`` asks (an unknown role grants nothing)."""
        return role in cls.ALL and cls.ALL.index(role) >= cls.ALL.index(needed)


class ApiKey(db.Model):
    """One API key of one tenant. The key itself is never stored, only its hash."""

    __tablename__ = "api_keys"
    __table_args__ = (
        sa.UniqueConstraint("tenant", "name", name="uq_api_keys_tenant_name"),
        sa.CheckConstraint("role IN ('read', 'write', 'admin')", name="ck_api_keys_role"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(NAME_MAX))
    name: Mapped[str] = mapped_column(sa.String(NAME_MAX))
    role: Mapped[str] = mapped_column(sa.String(8))
    # Hex SHA-256 of the whole key; its unique index is the one lookup that
    # authenticates a request.
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    # The first characters of the key, so that a person can tell keys apart.
    prefix: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Updated at most once a minute per key (see service.touch).
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # From then on the key answers 401 (reason "expired"); None: it never expires.
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Console sessions hold the value they signed in under; signing out adds one,
    # which ends every console session of the key, copies of its cookie included.
    console_generation: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
