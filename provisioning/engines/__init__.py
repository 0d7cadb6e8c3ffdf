"""Engines: where tenants are provisioned. :func:`engine_for` picks the implementation for a connection."""

from __future__ import annotations


def engine_for(connection, *, tenant=None, step: str | None = None):
    """An engine for this connection. ``tenant``/``step`` bind the sandbox's fault injection."""
    from tenants.models import EngineConnection

    if connection.kind == EngineConnection.Kind.SANDBOX:
        from provisioning.engines.sandbox import SandboxEngine

        return SandboxEngine(connection, tenant=tenant, step=step)
    if connection.kind == EngineConnection.Kind.ERPNEXT:
        from provisioning.engines.erpnext import ERPNextEngine

        return ERPNextEngine(connection)
    if connection.kind == EngineConnection.Kind.NULL:
        from django.conf import settings

        if not settings.NULL_ENGINE_ALLOWED:
            raise ValueError(f"engine '{connection.name}' is a null engine, for benchmarks only (MORAN_NULL_ENGINE=1)")
        from provisioning.engines.null import NullEngine

        return NullEngine(connection, tenant=tenant, step=step)
    raise ValueError(f"unknown engine kind {connection.kind!r}")
