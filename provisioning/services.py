"""The operator-facing provisioning services, in one place for the API, the admin and the CLI.

A facade only: the run lifecycle lives in :mod:`provisioning.runs`, the read-only plan in :mod:`provisioning.plan`.
Code inside the provisioning app imports those modules directly.
"""

from provisioning.plan import plan_steps
from provisioning.runs import (
    onboarding_cancel,
    onboarding_continue,
    onboarding_create,
    onboarding_retry,
    onboarding_start,
)

__all__ = [
    "onboarding_cancel",
    "onboarding_continue",
    "onboarding_create",
    "onboarding_retry",
    "onboarding_start",
    "plan_steps",
]
