"""Per-tenant quotas: how many pipelines, connectors and queued resets a tenant may have.

Each is a setting (``TENANT_MAX_PIPELINES``, ``TENANT_MAX_CONNECTORS``,
``TENANT_MAX_QUEUED_RESETS``; 0 or None lifts it), checked when one more would
be created, by a count on an index of the tenant's rows. Past it, the request
answers 409 ``QuotaExceeded`` naming the quota; a queued reset's answer also
says when to retry, as queued resets start and leave the queue. Requests
racing each other at the limit can each pass the count: a quota can be
overshot by the requests in flight at that moment, never more.

The fourth quota, the threads of a worker process one tenant's connectors may
hold at once (``TENANT_MAX_CONCURRENT_CLAIMS``), is the worker's (app.worker).
"""

from __future__ import annotations

import sqlalchemy as sa
from flask import current_app

from app.connectors.models import Connector
from app.errors import QuotaExceeded
from app.extensions import db
from app.pipelines.models import Pipeline
from app.resets.models import Reset

_WHAT = {
    "pipelines": ("TENANT_MAX_PIPELINES", "pipelines"),
    "connectors": ("TENANT_MAX_CONNECTORS", "connectors"),
    "queued_resets": ("TENANT_MAX_QUEUED_RESETS", "resets queued (not started yet)"),
}


def _check(quota: str, tenant: str, count: sa.Select, headers: dict | None = None) -> None:
    setting, noun = _WHAT[quota]
    limit = current_app.config.get(setting)
    if not limit:
        return
    held = db.session.execute(count).scalar_one()
    if held >= int(limit):
        raise QuotaExceeded(
            f"The tenant has {held} {noun}, its quota ({setting}); "
            "remove some, or ask an operator to raise it",
            details={"quota": quota, "limit": int(limit), "current": held},
            headers=headers,
        )


def check_pipelines(tenant: str) -> None:
    """Raise ``QuotaExceeded`` if the tenant may not create one more pipeline."""
    count = sa.select(sa.func.count()).select_from(Pipeline).where(Pipeline.tenant == tenant)
    _check("pipelines", tenant, count)


def check_connectors(tenant: str) -> None:
    """Raise ``QuotaExceeded`` if the tenant may not add one more connector."""
    count = sa.select(sa.func.count()).select_from(Connector).where(Connector.tenant == tenant)
    _check("connectors", tenant, count)


def check_queued_resets(tenant: str) -> None:
    """Raise ``QuotaExceeded`` if the tenant may not queue one more reset."""
    count = (
        sa.select(sa.func.count())
        .select_from(Reset)
        .join(Connector, Connector.id == Reset.queued_connector_id)
        .where(Reset.queued_connector_id.is_not(None), Connector.tenant == tenant)
    )
    retry = {"Retry-After": str(current_app.config["RETRY_AFTER_SECONDS"])}
    _check("queued_resets", tenant, count, retry)
