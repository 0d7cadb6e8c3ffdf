"""What a run's end means for the batches its tenant belongs to: the next tenants may start.

Called by the one writer (:mod:`provisioning.state`) inside the transaction that ended a run. It only looks up the
unfinished batches of the tenant and enqueues ``provisioning.batch_advance`` for each after the commit, by name: the
writer must not import the batch services (they import the run services, which import the writer).
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction

from provisioning.models import BatchItem

logger = logging.getLogger("moran.provisioning")

TASK = "provisioning.batch_advance"


def batch_run_ended(*, onboarding) -> None:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        # Embedded mode: the caller (CLI, API) runs the batch pass after pass; advancing from here would nest every
        # tenant's run inside the previous one's call stack.
        return
    batch_ids = list(
        BatchItem.objects.filter(tenant_id=onboarding.tenant_id, batch__finished_at__isnull=True)
        .values_list("batch_id", flat=True)
        .distinct()
    )
    for batch_id in batch_ids:
        transaction.on_commit(lambda batch_id=batch_id: batch_advance_enqueue(batch_id=batch_id), robust=True)


def batch_advance_enqueue(*, batch_id) -> None:
    from celery import current_app

    try:
        current_app.signature(TASK, kwargs={"batch_id": str(batch_id)}).apply_async(queue=settings.PROVISIONING_QUEUE)
    except Exception as exc:  # the run's end is recorded; beat's pass over unfinished batches picks this one up
        logger.error("could not enqueue %s for batch %s (%s)", TASK, batch_id, type(exc).__name__)
