"""A fixed cast for tests: tenants made through the same service as production."""

from __future__ import annotations

import itertools

from tenants.services import tenant_create

_seq = itertools.count(1)


def make_tenant(**overrides):
    n = next(_seq)
    fields = {
        "slug": f"tenant-{n}",
        "company_name": f"Tenant {n} Ltd",
        "abbr": f"T{n}",
        "currency": "EUR",
        "country": "Germany",
        "admin_email": f"admin@tenant-{n}.test",
        "extra_cost_centers": ["Operations"],
        "extra_warehouses": ["Returns"],
    }
    fields.update(overrides)
    return tenant_create(**fields)
