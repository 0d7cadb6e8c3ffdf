"""The read-only plan: what each step would find in the engine, without changing anything anywhere."""

from __future__ import annotations

from provisioning.engines import engine_for
from provisioning.engines.errors import EngineError
from provisioning.steps import STEPS, StepContext, StepFailed, TenantSpec
from tenants.models import Tenant


def plan_steps(*, tenant: Tenant) -> list[tuple[str, object]]:
    """The read-only plan: each step's look, or the error that stops it. Writes nothing anywhere."""
    ctx = StepContext(engine=engine_for(tenant.engine), spec=TenantSpec.from_tenant(tenant))
    out = []
    for step in STEPS[:-1]:
        try:
            out.append((step.name, step.look(ctx)))
        except (StepFailed, EngineError) as exc:
            out.append((step.name, exc))
    return out
