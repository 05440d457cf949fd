"""Pipeline work: lookups, definitions and the lifecycle.

Status changes are single conditional ``UPDATE`` statements, so that several
processes acting on one pipeline at once cannot both win a transition.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.orm import selectinload
from sqlalchemy.orm.attributes import set_committed_value

from app import quotas
from app.connectors.models import Connector, SyncState
from app.database import commit_unique, utcnow
from app.delivery import due
from app.errors import (
    DuplicateName,
    IllegalPipelineAction,
    InvalidRequest,
    PipelineNotStopped,
    UnknownPipelineName,
    UnknownView,
)
from app.extensions import db
from app.pipelines.models import Pipeline, PipelineStatus, View, is_valid_name
from app.resets.models import Reset, ResetStatus


def find_pipeline(tenant: str, name: str) -> Pipeline | None:
    """Return the tenant's pipeline of that name, or None.

    A string that is no valid name (from a URL: a NUL byte, 5,000 characters...)
    names no pipeline, and is never sent to the database, which may refuse it.
    """
    if not is_valid_name(name):
        return None
    return db.session.execute(
        sa.select(Pipeline).where(Pipeline.tenant == tenant, Pipeline.name == name)
    ).scalar_one_or_none()


def get_pipeline(tenant: str, name: str) -> Pipeline:
    """Return the tenant's pipeline of that name or raise ``UnknownPipelineName``."""
    pipeline = find_pipeline(tenant, name)
    if pipeline is None:
        raise UnknownPipelineName(name)
    return pipeline


def get_view(pipeline: Pipeline, view_name: str) -> View:
    """Return the pipeline's view of that name or raise ``UnknownView``."""
    for view in pipeline.views:
        if view.name == view_name:
            return view
    raise UnknownView(pipeline.name, view_name)


# Built once (every push runs it): building it cost about as much as running it.
_PIPELINE_VIEW = (
    sa.select(Pipeline, View)
    .outerjoin(View, sa.and_(View.pipeline_id == Pipeline.id, View.name == sa.bindparam("view")))
    .where(Pipeline.tenant == sa.bindparam("tenant"), Pipeline.name == sa.bindparam("pipeline"))
)


def get_pipeline_view(tenant: str, pipeline_name: str, view_name: str) -> View:
    """Return the view of the tenant's pipeline, read with its pipeline in one statement.

    Raises ``UnknownPipelineName`` or ``UnknownView`` as :func:`get_pipeline`
    and :func:`get_view` do. A push looks its view up this way: one round trip
    where the two lookups take two, and the pipeline's other views stay unread
    (``make bench``, section c, push -> line in the file sink).
    """
    if not is_valid_name(pipeline_name) or not is_valid_name(view_name):
        # Never sent to the database (see find_pipeline); the lookups say which is unknown.
        return get_view(get_pipeline(tenant, pipeline_name), view_name)
    row = db.session.execute(
        _PIPELINE_VIEW, {"tenant": tenant, "pipeline": pipeline_name, "view": view_name}
    ).one_or_none()
    if row is None:
        raise UnknownPipelineName(pipeline_name)
    pipeline, view = row
    if view is None:
        raise UnknownView(pipeline.name, view_name)
    # The view holds its pipeline (the session's identity map would let it go).
    set_committed_value(view, "pipeline", pipeline)
    return view


def list_pipelines(
    tenant: str, limit: int | None = None, after: str | None = None, status: str | None = None
) -> list[Pipeline]:
    """Return the tenant's pipelines by name: at most ``limit``, named after ``after``.

    ``status`` keeps only pipelines in that status. Pages are cut by name
    (keyset), so a page costs the same however far into the list it is.
    """
    query = sa.select(Pipeline).where(Pipeline.tenant == tenant)
    if after is not None:
        query = query.where(Pipeline.name > after)
    if status is not None:
        query = query.where(Pipeline.status == status)
    query = query.order_by(Pipeline.name).options(selectinload(Pipeline.views))
    if limit is not None:
        query = query.limit(limit)
    return list(db.session.execute(query).scalars())


def _check_unique(view_names: Iterable[str]) -> list[str]:
    names = list(view_names)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidRequest(
            "View names must be unique within a pipeline",
            details={"views": [f"Duplicate view name '{n}'" for n in duplicates]},
        )
    return names


def create_pipeline(
    tenant: str, name: str, description: str = "", views: Iterable[str] = ()
) -> Pipeline:
    """Create a stopped pipeline with the given output views."""
    names = _check_unique(views)
    quotas.check_pipelines(tenant)
    pipeline = Pipeline(tenant=tenant, name=name, description=description or "")
    pipeline.views = [View(name=v, position=i) for i, v in enumerate(names)]
    db.session.add(pipeline)
    commit_unique(
        DuplicateName(f"A pipeline named '{name}' already exists", details={"pipeline_name": name})
    )
    return pipeline


def require_stopped(pipeline: Pipeline, action: str) -> None:
    """Raise ``PipelineNotStopped`` unless the pipeline is stopped."""
    if pipeline.status != PipelineStatus.STOPPED:
        raise PipelineNotStopped(
            f"Pipeline '{pipeline.name}' must be stopped to {action}; it is {pipeline.status}",
            details={"pipeline_name": pipeline.name, "status": pipeline.status},
        )


def update_pipeline(
    pipeline: Pipeline, description: str | None = None, views: Iterable[str] | None = None
) -> Pipeline:
    """Change a pipeline's description and, while it is stopped, its views."""
    if description is not None:
        pipeline.description = description
    if views is not None:
        names = _check_unique(views)
        if names != pipeline.view_names:
            require_stopped(pipeline, "change its views")
            existing = {v.name: v for v in pipeline.views}
            kept = []
            for position, name in enumerate(names):
                view = existing.get(name) or View(name=name)
                view.position = position
                kept.append(view)
            pipeline.views = kept
    db.session.commit()
    return pipeline


def add_view(pipeline: Pipeline, name: str) -> View:
    """Add an output view to a stopped pipeline."""
    require_stopped(pipeline, "add a view")
    duplicate = DuplicateName(
        f"Pipeline '{pipeline.name}' already has a view '{name}'",
        details={"pipeline_name": pipeline.name, "view_name": name},
    )
    if name in pipeline.view_names:
        raise duplicate
    view = View(name=name, position=len(pipeline.views))
    pipeline.views.append(view)
    commit_unique(duplicate)
    return view


def remove_view(pipeline: Pipeline, name: str) -> None:
    """Remove an output view (and its connectors) from a stopped pipeline."""
    view = get_view(pipeline, name)
    require_stopped(pipeline, "remove a view")
    pipeline.views.remove(view)
    db.session.commit()


def delete_pipeline(pipeline: Pipeline) -> None:
    """Delete a stopped pipeline with everything it owns."""
    require_stopped(pipeline, "be deleted")
    db.session.delete(pipeline)
    db.session.commit()


def _transition(pipeline: Pipeline, action: str, allowed: dict[str, dict]) -> Pipeline:
    """Apply ``allowed[current status]`` as a conditional update, or refuse."""
    for _attempt in range(3):
        current = pipeline.status
        if current not in allowed:
            raise IllegalPipelineAction(
                f"Cannot {action} pipeline '{pipeline.name}' while it is {current}",
                details={"pipeline_name": pipeline.name, "status": current, "action": action},
            )
        values = allowed[current]
        if not values:  # Already where the action leads: nothing to do.
            return pipeline
        now = utcnow()
        result = db.session.execute(
            sa.update(Pipeline)
            .where(Pipeline.id == pipeline.id, Pipeline.status == current)
            .values(status_since=now, **values)
        )
        if result.rowcount == 1:
            ends_incarnation = values.get("status") == PipelineStatus.STOPPED or (
                "incarnation" in values
            )
            if current != PipelineStatus.STOPPED and ends_incarnation:
                _abandon_resets(pipeline, now)
            if values.get("status") == PipelineStatus.RUNNING:
                # Its connectors may have work again: changes, resets, snapshots owed.
                due.mark_pipeline(pipeline.id)
            db.session.commit()
            db.session.refresh(pipeline)
            return pipeline
        # Someone else changed the status meanwhile: look again.
        db.session.rollback()
        db.session.refresh(pipeline)
    raise IllegalPipelineAction(
        f"Pipeline '{pipeline.name}' is changing status; retry",
        details={"pipeline_name": pipeline.name, "action": action},
    )


def _abandon_resets(pipeline: Pipeline, now: object) -> None:
    """End the incarnation's unfinished resets.

    A connector whose reset had begun still owes its snapshot (its sink may be
    partial): it stays ``resetting``, and the worker redoes the reset after the
    next start. Its reason says so. The pipeline's connectors are locked in id
    order first, as every write of several connectors' rows takes them
    (:func:`app.delivery.due.lock_in_id_order`).
    """
    pipeline_views = sa.select(View.id).where(View.pipeline_id == pipeline.id).scalar_subquery()
    due.lock_in_id_order(lambda table: table.c.view_id.in_(pipeline_views))
    begun = (
        sa.select(Reset.connector_id)
        .where(
            Reset.pipeline_id == pipeline.id,
            Reset.status == ResetStatus.IN_PROGRESS,
            Reset.started_at.is_not(None),
        )
        .scalar_subquery()
    )
    db.session.execute(
        sa.update(Connector)
        .where(Connector.id.in_(begun), Connector.sync_state == SyncState.RESETTING)
        .values(
            sync_reason="The pipeline was stopped before the reset completed; "
            "it is redone after the next start"
        )
        .execution_options(synchronize_session=False)
    )
    # Each connector counts the resets abandoned here (what /metrics sums).
    unfinished = (
        sa.select(sa.func.count(Reset.id))
        .where(
            Reset.connector_id == Connector.id,
            Reset.pipeline_id == pipeline.id,
            Reset.status == ResetStatus.IN_PROGRESS,
        )
        .scalar_subquery()
    )
    db.session.execute(
        sa.update(Connector)
        .where(Connector.view_id.in_(pipeline_views))
        .values(resets_abandoned=Connector.resets_abandoned + unfinished)
        .execution_options(synchronize_session=False)
    )
    db.session.execute(
        sa.update(Reset)
        .where(
            Reset.pipeline_id == pipeline.id,
            Reset.status == ResetStatus.IN_PROGRESS,
        )
        .values(
            status=ResetStatus.ABANDONED,
            completed_at=now,
            queued_connector_id=None,
            lease_owner=None,
            error="The pipeline was stopped before the reset completed",
        )
    )


RUNNING = {"status": PipelineStatus.RUNNING}
STOPPED = {"status": PipelineStatus.STOPPED}
PAUSED = {"status": PipelineStatus.PAUSED}


def start(pipeline: Pipeline) -> Pipeline:
    """Start a stopped pipeline (a new incarnation) or resume a paused one."""
    return _transition(
        pipeline,
        "start",
        {
            PipelineStatus.STOPPED: {**RUNNING, "incarnation": Pipeline.incarnation + 1},
            PipelineStatus.PAUSED: RUNNING,
            PipelineStatus.RUNNING: {},
        },
    )


def stop(pipeline: Pipeline) -> Pipeline:
    """Stop a pipeline, ending its incarnation."""
    return _transition(
        pipeline,
        "stop",
        {
            PipelineStatus.RUNNING: STOPPED,
            PipelineStatus.PAUSED: STOPPED,
            PipelineStatus.STOPPED: {},
        },
    )


def pause(pipeline: Pipeline) -> Pipeline:
    """Pause a running pipeline; its incarnation goes on."""
    return _transition(
        pipeline, "pause", {PipelineStatus.RUNNING: PAUSED, PipelineStatus.PAUSED: {}}
    )


def resume(pipeline: Pipeline) -> Pipeline:
    """Resume a paused pipeline."""
    return _transition(
        pipeline, "resume", {PipelineStatus.PAUSED: RUNNING, PipelineStatus.RUNNING: {}}
    )


def restart(pipeline: Pipeline) -> Pipeline:
    """Stop a pipeline (if live) and start it again: one new incarnation, in one step.

    One conditional update, so no one sees the pipeline stopped in between and
    two concurrent restarts make two incarnations, never a lost one.
    """
    new_incarnation = {**RUNNING, "incarnation": Pipeline.incarnation + 1}
    return _transition(
        pipeline,
        "restart",
        {
            PipelineStatus.RUNNING: new_incarnation,
            PipelineStatus.PAUSED: new_incarnation,
            PipelineStatus.STOPPED: new_incarnation,
        },
    )
