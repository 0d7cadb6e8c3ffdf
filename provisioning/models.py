"""Onboarding state, runs and step logs; the sandbox engine's own tables.

The onboarding row is the single source of truth for where a tenant's provisioning stands. Its step states are
written by exactly one function, :func:`provisioning.state.onboarding_write`; nothing else assigns to
``provisioning_steps``.
"""

import uuid

from django.conf import settings
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
        indexes = [
            models.Index(fields=["status"]),
            # The admin list's order (newest activity first), with the id as its tie-breaker, read off the index.
            models.Index(fields=["-updated_at", "-id"], name="onb_updated_id"),
            # The sweeper reads the onboardings with a run in charge every few seconds: a partial index holds only
            # those (a thousand in flight among ten thousand tenants costs a thousand rows, not ten thousand).
            models.Index(fields=["run_id"], condition=models.Q(run_id__isnull=False), name="onboarding_active_run"),
        ]

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
        indexes = [models.Index(fields=["created_at", "id"], name="run_created_id")]


class StepLog(models.Model):
    class Level(models.TextChoices):
        INFO = "info"
        WARNING = "warning"
        ERROR = "error"

    # No index of its own: (onboarding, id) below serves every lookup by onboarding, and each index costs every insert.
    onboarding = models.ForeignKey(Onboarding, on_delete=models.CASCADE, related_name="logs", db_index=False)
    run_id = models.UUIDField(null=True, blank=True)
    step = models.CharField(max_length=64, blank=True)
    attempt = models.PositiveSmallIntegerField(default=0)
    level = models.CharField(max_length=8, choices=Level.choices, default=Level.INFO)
    message = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["onboarding", "id"]),
            models.Index(fields=["onboarding", "step"]),
            # The admin's filters, newest first, without reading the whole table.
            models.Index(fields=["level", "id"], name="steplog_level_id"),
            models.Index(fields=["step", "id"], name="steplog_step_id"),
        ]


class StepAttempt(models.Model):
    """One attempt of one step: a row per attempt, begun and closed in the same transaction as the step state it
    goes with, so that attempts and step states always add up. Programs read these (the sweeper's poison-step count,
    durations, the admin's timeline); ``StepLog`` keeps the lines for people."""

    class Outcome(models.TextChoices):
        RUNNING = "running"
        COMPLETED = "completed"
        RETRYING = "retrying"  # a transient error; the step is tried again
        FAILED = "failed"
        SKIPPED = "skipped"  # an optional step that failed
        INTERRUPTED = "interrupted"  # its worker was lost before it ended
        CANCELLED = "cancelled"  # an operator stopped the run while it ran

    class EndedBy(models.TextChoices):
        WORKER = "worker"  # the attempt's own worker recorded its end
        REDELIVERY = "redelivery"  # the step's message came back and found the attempt unfinished
        SWEEPER = "sweeper"
        OPERATOR = "operator"

    # No index of its own: the unique (onboarding, step, number) serves every lookup by onboarding.
    onboarding = models.ForeignKey(Onboarding, on_delete=models.CASCADE, related_name="attempts", db_index=False)
    run_id = models.UUIDField()
    step = models.CharField(max_length=64)
    # Counts across runs, like the step state's ``attempts``: (onboarding, step, number) names one attempt.
    number = models.PositiveSmallIntegerField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.RUNNING)
    ended_by = models.CharField(max_length=16, choices=EndedBy.choices, blank=True)
    error = models.JSONField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    # hostname:pid of the process that ran it.
    worker = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["onboarding", "step", "number"], name="step_attempt_key"),
        ]
        indexes = [
            # Durations and outcomes over a recent window (metrics), without scanning every attempt ever made.
            models.Index(fields=["finished_at", "step"]),
        ]


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


class ProvisioningBatch(models.Model):
    """Tenants provisioned together, at most ``concurrency`` at once (the engine's own cap applies on top). Counts
    and progress are derived from the tenants' onboardings when read, never stored: they cannot drift from them.

    ``finished_at`` is set once every tenant was started (or left alone) and none is still in progress; the periodic
    ``provisioning.batch_advance`` looks at unfinished batches only."""

    class Source(models.TextChoices):
        CLI = "cli"
        API = "api"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="provisioning_batches"
    )
    requested_by = models.CharField(max_length=150, blank=True, help_text="who asked, as the runs record it")
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.CLI)
    filename = models.CharField(max_length=255, blank=True)
    engine = models.ForeignKey("tenants.EngineConnection", on_delete=models.PROTECT, related_name="batches")
    concurrency = models.PositiveSmallIntegerField(default=4)
    tenants = models.ManyToManyField(Tenant, through="BatchItem", related_name="batches")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "provisioning batches"

    def __str__(self):
        return f"batch {str(self.id)[:8]} ({self.created_at:%Y-%m-%d %H:%M})" if self.created_at else "new batch"


class BatchItem(models.Model):
    """One tenant of a batch, with where it came from (the CSV line, or the index in a JSON list) and whether the
    batch has started it yet. ``started_at`` null = waiting for a free place among the batch's ``concurrency``."""

    class Action(models.TextChoices):
        CREATE = "create"  # a new tenant: its first run
        CONTINUE = "continue"  # PARTIAL, FAILED or CANCELLED: continued from its first incomplete step
        LEAVE = "leave"  # COMPLETED already: no run
        WAIT = "wait"  # IN_PROGRESS already: waited for, not started again

    batch = models.ForeignKey(ProvisioningBatch, on_delete=models.CASCADE, related_name="items")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="batch_items")
    line = models.PositiveIntegerField(help_text="CSV line number (header = 1), or 1 + index in a JSON list")
    action = models.CharField(max_length=8, choices=Action.choices)
    started_at = models.DateTimeField(null=True, blank=True)
    run_id = models.UUIDField(null=True, blank=True)

    class Meta:
        ordering = ["line"]
        constraints = [models.UniqueConstraint(fields=["batch", "tenant"], name="batch_item_unique_tenant")]
        indexes = [models.Index(fields=["batch", "started_at"])]


# --- The webhook outbox: one delivery per announced end state, one row per try -------------------------------
class WebhookDelivery(models.Model):
    """One end state of one run, to be announced once. Written in the transaction that ended the run.

    ``pending``: to send (again) at or after ``next_attempt_at``; ``sending``: claimed by a sender until
    ``claimed_until`` (past it, the claim is void: its worker died); ``delivered``: the receiver answered 2xx;
    ``failed``: refused for good, out of tries, or a target that is not allowed. Only ``resend`` leaves an end state.
    """

    class State(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"
        DELIVERED = "delivered"
        FAILED = "failed"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="webhook_deliveries")
    run = models.ForeignKey("provisioning.ProvisioningRun", on_delete=models.CASCADE, related_name="webhook_deliveries")
    event = models.CharField(max_length=64)
    status = models.CharField(max_length=16, help_text="the onboarding's end state being announced")
    idempotency_key = models.CharField(max_length=80, unique=True)
    # The body's facts, fixed when the run ended: every try sends the same bytes. The URL is not kept: it is read
    # from the tenant (or the global setting) at each try, so a corrected URL takes effect on resend, and a URL's
    # token is never copied into another table.
    payload = models.JSONField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0, help_text="tries so far, resends included")
    # Tries allowed in all; a resend grants a fresh allowance on top of the tries made.
    max_attempts = models.PositiveIntegerField()
    next_attempt_at = models.DateTimeField()
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(fields=["state", "next_attempt_at"]),
            models.Index(fields=["tenant", "-created_at"]),
            # The admin list's order (newest first; the id breaks ties), read off the index.
            models.Index(fields=["created_at", "id"], name="webhook_created_id"),
        ]

    def __str__(self):
        return f"{self.event} {self.status} ({self.idempotency_key})"


class WebhookAttempt(models.Model):
    """One try of a delivery. Created when the try is claimed, completed when it ends: a try whose worker died keeps
    ``finished_at`` empty until the next claim marks it interrupted."""

    class Outcome(models.TextChoices):
        STARTED = "started"
        DELIVERED = "delivered"
        RETRY = "retry"  # worth trying again (5xx, 408/425/429, no answer)
        REFUSED = "refused"  # the receiver's final answer
        BLOCKED = "blocked"  # the target is not allowed, or no URL is configured
        INTERRUPTED = "interrupted"  # its worker died; the claim expired

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="tries")
    number = models.PositiveIntegerField()
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.STARTED)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=300, blank=True)
    worker = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="webhook_attempt_number")]

    def __str__(self):
        return f"try {self.number} of delivery {self.delivery_id}"
