"""Reads of tenants for the API. Nothing here writes."""

from __future__ import annotations

import uuid

from django.db.models import Q, QuerySet

from moran.errors import NotFound
from tenants.models import Tenant


def tenant_list(*, visible_to, status: str | None = None, search: str | None = None) -> QuerySet[Tenant]:
    """The tenants a user may see (staff: all; others: the ones they own), by slug; one query whatever the count.
    ``status`` filters on the onboarding status; ``search`` matches slug, name, company, abbreviation or admin email."""
    # The list shows the onboarding's summary columns, never its step states: leave that JSON (the bulk of the
    # row) in the database. The slug's unique index gives the order, so a deep page reads the index, not a sort.
    qs = (
        Tenant.objects.select_related("engine", "owner", "onboarding")
        .defer("onboarding__provisioning_steps")
        .order_by("slug")
    )
    if not visible_to.is_staff:
        qs = qs.filter(owner=visible_to)
    if status:
        qs = qs.filter(onboarding__status=status)
    if search:
        qs = qs.filter(
            Q(slug__icontains=search)
            | Q(name__icontains=search)
            | Q(company_name__icontains=search)
            | Q(abbr__iexact=search)
            | Q(admin_email__icontains=search)
        )
    return qs


def tenant_get_visible(*, identifier: str, visible_to=None) -> Tenant:
    """A tenant by id (UUID) or slug among those the user may see (``visible_to=None``: the operator's terminal,
    every tenant); any other is "not found"."""
    qs = tenant_list(visible_to=visible_to) if visible_to is not None else Tenant.objects.select_related("engine")
    try:
        return qs.get(id=uuid.UUID(str(identifier)))
    except (ValueError, Tenant.DoesNotExist):
        pass
    try:
        return qs.get(slug=identifier)
    except Tenant.DoesNotExist:
        raise NotFound(f"Unknown tenant '{identifier}'") from None
