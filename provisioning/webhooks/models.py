"""The webhook outbox: one row per end state to announce, one row per try.

Kept apart from the onboarding's own models and loaded by ``provisioning.models``; foreign keys name their models
by string, so this module imports no other model module.
"""

from django.db import models


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
        indexes = [models.Index(fields=["state", "next_attempt_at"]), models.Index(fields=["tenant", "-created_at"])]

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
