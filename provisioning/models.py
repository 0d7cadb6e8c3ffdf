"""Onboarding state, runs and step logs; the sandbox engine's own tables.

The onboarding row is the single source of truth for where a tenant's provisioning stands. Its step states are
written by exactly one function, :func:`provisioning.state.step_state_write`; nothing else assigns to
``provisioning_steps``.
"""

import uuid

from django.db import models

from tenants.models import Tenant


class OnboardingStatus(models.TextChoices):
    PENDING = "PENDING", "Pending"
    IN_PROGRESS = "IN_PROGRESS", "In progress"
    COMPLETED = "COMPLETED", "Completed"
    PARTIAL = "PARTIAL", "Partial"
    FAILED = "FAILED", "Failed"
    CANCELLED = "CANCELLED", "Cancelled"


class StepStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    # Delivered, but no slot of its engine was free: it goes back to the queue without using an attempt.
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


class RunKind(models.TextChoices):
    START = "start"
    CONTINUE = "continue"
    RETRY = "retry"


class Onboarding(models.Model):
    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="onboarding")
    status = models.CharField(max_length=16, choices=OnboardingStatus.choices, default=OnboardingStatus.PENDING)
    current_step = models.CharField(max_length=64, null=True, blank=True)
    # The run in charge. Null when no run is active; a task whose run id differs does nothing (fencing).
    run_id = models.UUIDField(null=True, blank=True)
    provisioning_steps = models.JSONField(default=dict)
    steps_completed = models.PositiveSmallIntegerField(default=0)
    progress = models.PositiveSmallIntegerField(default=0)
    # Bumped by every write; lets readers and tests see that a write happened.
    version = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    #: written only by provisioning.state.onboarding_write, under the row lock.
    STATE_FIELDS = frozenset(
        {
            "status",
            "current_step",
            "run_id",
            "provisioning_steps",
            "steps_completed",
            "progress",
            "version",
            "started_at",
            "finished_at",
        }
    )

    class Meta:
        indexes = [models.Index(fields=["status"]), models.Index(fields=["-updated_at"])]

    def __str__(self):
        return f"onboarding of {self.tenant_id}"

    def save(self, *args, **kwargs):
        # A guard, not logic: an instance read earlier (a status view, an admin form, a shell) and saved later would
        # write back its stale copy of the step states over a worker's update -- the seeds' bug in another form.
        # Outside the one writer, state fields are never saved.
        if not self._state.adding and not getattr(self, "_saving_state", False):
            fields = kwargs.get("update_fields")
            if fields is None:
                fields = [f.name for f in self._meta.concrete_fields if not f.primary_key]
            fields = [f for f in fields if f not in self.STATE_FIELDS]
            if not fields:
                return
            kwargs["update_fields"] = fields
        super().save(*args, **kwargs)


class ProvisioningRun(models.Model):
    """One execution of the chain. Created, committed, then enqueued; ``enqueued_at`` stays null until the chain
    reached the broker, so a run lost between commit and enqueue can be found and sent again."""

    class Outcome(models.TextChoices):
        ACTIVE = "active"
        COMPLETED = "completed"
        STOPPED = "stopped"  # a required step failed
        CANCELLED = "cancelled"
        SUPERSEDED = "superseded"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    onboarding = models.ForeignKey(Onboarding, on_delete=models.CASCADE, related_name="runs")
    kind = models.CharField(max_length=16, choices=RunKind.choices)
    start_index = models.PositiveSmallIntegerField(default=0)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.ACTIVE)
    requested_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]


class StepLog(models.Model):
    class Level(models.TextChoices):
        INFO = "info"
        WARNING = "warning"
        ERROR = "error"

    onboarding = models.ForeignKey(Onboarding, on_delete=models.CASCADE, related_name="logs")
    run_id = models.UUIDField(null=True, blank=True)
    step = models.CharField(max_length=64, blank=True)
    attempt = models.PositiveSmallIntegerField(default=0)
    level = models.CharField(max_length=8, choices=Level.choices, default=Level.INFO)
    message = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["onboarding", "id"]), models.Index(fields=["onboarding", "step"])]


class SandboxDocument(models.Model):
    """A document of a sandbox engine's emulated ERPNext site. Kept in the project's database so that every worker
    process, on every machine, sees the same engine; the (site, doctype, name) key is the engine's primary key."""

    site = models.CharField(max_length=64)
    doctype = models.CharField(max_length=64)
    name = models.CharField(max_length=255)
    data = models.JSONField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["site", "doctype", "name"], name="sandbox_doc_key")]
        indexes = [models.Index(fields=["site", "doctype"])]


class SandboxFault(models.Model):
    """Fault injection for the sandbox engine, per tenant (demos and tests).

    ``permanent``: the step fails with a 417 ``remaining`` times. ``transient``: the engine answers 503 ``remaining``
    times. ``latency``: every sandbox call for the tenant takes ``latency_ms`` longer.
    """

    class Kind(models.TextChoices):
        PERMANENT = "permanent"
        TRANSIENT = "transient"
        LATENCY = "latency"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="sandbox_faults")
    step = models.CharField(max_length=64, blank=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    remaining = models.PositiveIntegerField(default=1)
    latency_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
