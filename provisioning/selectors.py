"""Reads: the status of the brief, and log lines. Nothing here writes."""

from __future__ import annotations

import re

from django.db.models import QuerySet

from accounts.selectors import user_label
from moran.errors import NotFound
from provisioning.models import Onboarding, StepLog
from provisioning.recovery import SWEEPER
from provisioning.state import normalised
from provisioning.steps import STEP_BY_NAME, TOTAL_STEPS


def onboarding_get(*, tenant_id: str, visible_to=None) -> Onboarding:
    """The onboarding of a tenant by its id (UUID) or slug. ``visible_to``: a user who may only see their own tenants
    (a staff user sees all); a tenant the user may not see is "not found", like one that does not exist."""
    qs = Onboarding.objects.select_related("tenant", "tenant__engine")
    if visible_to is not None and not visible_to.is_staff:
        qs = qs.filter(tenant__owner=visible_to)
    lookup = {"tenant__slug": tenant_id}
    try:
        import uuid

        lookup = {"tenant__id": uuid.UUID(str(tenant_id))}
    except ValueError:
        pass
    try:
        return qs.get(**lookup)
    except Onboarding.DoesNotExist:
        raise NotFound(f"Unknown tenant '{tenant_id}'") from None


def onboarding_status(*, onboarding: Onboarding) -> dict:
    """The status body of the brief (the API, ``provisioning_status --json`` and the scripts share it)."""
    steps = normalised(onboarding.provisioning_steps)
    errors = [
        {
            "step": name,
            "type": entry["error"].get("type"),
            "message": entry["error"].get("message"),
            "engine_status": entry["error"].get("engine_status"),
            "at": entry["finished_at"] or entry["started_at"],
        }
        for name, entry in steps.items()
        if entry.get("error")
    ]
    return {
        "tenant_id": str(onboarding.tenant.id),
        "tenant": onboarding.tenant.slug,
        "status": onboarding.status,
        "steps_completed": onboarding.steps_completed,
        "total_steps": TOTAL_STEPS,
        "progress": onboarding.progress,
        "current_step": onboarding.current_step,
        "run_id": str(onboarding.run_id) if onboarding.run_id else None,
        "started_at": _iso(onboarding.started_at),
        "finished_at": _iso(onboarding.finished_at),
        "errors": errors,
        "steps": [
            {
                "name": name,
                "optional": STEP_BY_NAME[name].optional,
                "status": entry["status"],
                "attempts": entry["attempts"],
                "started_at": entry["started_at"],
                "finished_at": entry["finished_at"],
                "error": entry["error"],
                "result": entry["result"],
            }
            for name, entry in steps.items()
        ],
    }


def _iso(value):
    return value.isoformat().replace("+00:00", "Z") if value else None


def onboarding_logs(*, onboarding: Onboarding, step: str | None = None, run_id: str | None = None) -> QuerySet:
    """Log lines, oldest first (newest last)."""
    qs = StepLog.objects.filter(onboarding=onboarding).order_by("id")
    if step:
        qs = qs.filter(step=step)
    if run_id:
        qs = qs.filter(run_id=run_id)
    return qs


# "<kind> requested by <who>: a new run starts", "run cancelled by <who>" (provisioning.services).
_REQUESTER = re.compile(r"\b(?P<verb>requested|cancelled) by (?P<who>.+?)(?=: a new run starts$|$)")


def log_message_for(*, message: str, viewer) -> str:
    """A log line as ``viewer`` may read it. Staff read who asked for each run; a tenant's owner reads the role
    ("an operator") instead of a colleague's email or user name, except their own and the sweeper's."""
    if viewer.is_staff:
        return message

    def role(match: re.Match) -> str:
        who = match["who"]
        shown = who if who in (SWEEPER, user_label(user=viewer)) else "an operator"
        return f"{match['verb']} by {shown}"

    return _REQUESTER.sub(role, message)
