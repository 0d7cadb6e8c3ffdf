"""Read-only views of a tenant against its engine, on the steps' own ``look``: the plan (what a run would create or
change) and the drift check (what a provisioned tenant is missing, or has different). Nothing here writes: not the
engine, not the onboarding, not a log line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from provisioning.engines.errors import EngineError
from provisioning.models import Onboarding, StepStatus
from provisioning.plan import plan_steps
from provisioning.steps import Look, StepFailed
from tenants.models import Tenant

PRESENT, MISSING, DIFFERENT, SKIPPED, ERROR = "present", "missing", "different", "skipped", "error"


@dataclass
class StepReport:
    step: str
    state: str  # present | missing | different | skipped | error (verify); "plan" entries use the same
    found: dict = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def _report(step: str, outcome) -> StepReport:
    if isinstance(outcome, (StepFailed, EngineError)):
        kind = getattr(outcome, "type", None) or getattr(outcome, "exc_type", "")
        return StepReport(step, ERROR, lines=[f"{kind}: {outcome.message}"])
    look: Look = outcome
    lines = [f"{change.op} {change.doctype} '{change.name}' ({change.reason})" for change in look.changes]
    lines += [f"note: {note}" for note in look.notes]
    if look.notes or any(change.op == "create" for change in look.changes):
        state = MISSING
    elif look.changes:
        state = DIFFERENT
    else:
        state = PRESENT
    return StepReport(step, state, found=look.found, lines=lines)


def tenant_plan(*, tenant: Tenant) -> list[StepReport]:
    """Step by step, what a run would create or change (the finalize step only verifies)."""
    return [_report(step, outcome) for step, outcome in plan_steps(tenant=tenant)]


def tenant_verify(*, tenant: Tenant) -> list[StepReport]:
    """Step by step, whether what the tenant should have in the engine is there. An optional step that was skipped
    is not expected."""
    steps = Onboarding.objects.filter(tenant=tenant).values_list("provisioning_steps", flat=True).first() or {}
    reports = []
    for step, outcome in plan_steps(tenant=tenant):
        if (steps.get(step) or {}).get("status") == StepStatus.SKIPPED:
            reports.append(StepReport(step, SKIPPED, lines=["optional step skipped: not expected"]))
        else:
            reports.append(_report(step, outcome))
    return reports


def drifted(reports: list[StepReport]) -> bool:
    return any(r.state not in (PRESENT, SKIPPED) for r in reports)
