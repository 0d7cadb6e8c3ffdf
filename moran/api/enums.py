"""Choice sets named in the schema (SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"] imports them by path)."""

from provisioning.models import OnboardingStatus, StepLog, StepStatus
from provisioning.steps import STEP_NAMES

ONBOARDING_STATUSES = OnboardingStatus.choices
STEP_STATUSES = StepStatus.choices
STEPS = list(STEP_NAMES)
LOG_LEVELS = StepLog.Level.choices
