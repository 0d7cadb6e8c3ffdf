"""The sandbox engine: the ERPNext emulator over the project's database, with per-tenant fault injection.

Every worker process (on every machine) that shares the database sees the same sandbox site, exactly as every
worker would see the same ERPNext site.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F

from moran.errors import InvalidInput
from provisioning.engines.company_lock import company_creation_done
from provisioning.engines.emulator import DuplicateName, ERPNextEmulator
from provisioning.engines.errors import EngineTransientError, EngineValidationError, concurrent_company_error
from provisioning.models import SandboxDocument, SandboxFault
from tenants.models import EngineConnection


class DatabaseStore:
    def __init__(self, site: str):
        self.site = site

    def _docs(self, doctype):
        return SandboxDocument.objects.filter(site=self.site, doctype=doctype)

    def get(self, doctype, name):
        row = self._docs(doctype).filter(name=name).values_list("data", flat=True).first()
        return row

    def add(self, doctype, name, doc):
        try:
            with transaction.atomic():  # a savepoint, so a duplicate does not spoil an outer transaction
                SandboxDocument.objects.create(site=self.site, doctype=doctype, name=name, data=doc)
        except IntegrityError as exc:
            raise DuplicateName(name) from exc

    def put(self, doctype, name, doc):
        SandboxDocument.objects.update_or_create(site=self.site, doctype=doctype, name=name, defaults={"data": doc})

    def remove(self, doctype, name):
        deleted, _ = self._docs(doctype).filter(name=name).delete()
        return bool(deleted)

    def rows(self, doctype, match=None):
        qs = self._docs(doctype)
        # Plain string equalities (company = X) are pushed down so a list does not read every company's documents;
        # the emulator still applies every filter itself.
        for field, value in (match or {}).items():
            qs = qs.filter(**{f"data__{field}": value})
        return list(qs.order_by("name").values_list("data", flat=True))

    def atomic(self):
        return transaction.atomic()

    def lock_site(self):
        # A row lock on the site's settings, held until the transaction ends; the reads after it see what the
        # writers before it committed (READ COMMITTED).
        list(self._docs("System Settings").select_for_update().values_list("pk", flat=True))


class SandboxEngine:
    """The :class:`~provisioning.engines.base.Engine` of a sandbox connection, bound to one tenant and step so that
    the faults injected for that tenant apply."""

    kind = "sandbox"

    def __init__(self, connection, *, tenant=None, step: str | None = None):
        self.name = connection.name
        self.tenant = tenant
        self.step = step
        self.site = ERPNextEmulator(DatabaseStore(connection.name), company_latency=settings.SANDBOX_COMPANY_LATENCY)
        # The tenant's faults, read once per engine (one engine serves one step attempt); consumed in the database.
        self._faults = (
            list(SandboxFault.objects.filter(tenant=tenant).values("id", "step", "kind", "latency_ms"))
            if tenant
            else []
        )
        self._latency = max(
            (f["latency_ms"] for f in self._faults if f["kind"] == SandboxFault.Kind.LATENCY), default=0
        )

    # Fault injection -------------------------------------------------------------------------------------------
    def _consume(self, kind: str) -> bool:
        """Take one unit of a fault of this kind for this tenant and step; a conditional UPDATE, so two workers
        cannot both take the last one."""
        for fault in self._faults:
            if fault["kind"] == kind and fault["step"] == self.step:
                if SandboxFault.objects.filter(id=fault["id"], remaining__gt=0).update(remaining=F("remaining") - 1):
                    return True
        return False

    def _before_call(self):
        if not self._faults:
            return
        if self._latency:
            time.sleep(self._latency / 1000)
        if self._consume(SandboxFault.Kind.TRANSIENT):
            raise EngineTransientError(
                f"Service Unavailable: sandbox engine '{self.name}' injected a transient fault", status=503
            )
        if self._consume(SandboxFault.Kind.PERMANENT):
            raise EngineValidationError(
                f"Sandbox fault injected for {self.step}: the engine refused the request",
                status=417,
                exc_type="ValidationError",
            )

    # Engine protocol -------------------------------------------------------------------------------------------
    def call(self, method, **params):
        self._before_call()
        return self.site.call(method, **params)

    def get_doc(self, doctype, name):
        self._before_call()
        return self.site.get_doc(doctype, name)

    def get_list(self, doctype, *, filters=None, fields=None, order_by=None, limit=0):
        self._before_call()
        return self.site.get_list(doctype, filters=filters, fields=fields, order_by=order_by, limit=limit)

    def insert(self, doctype, doc):
        self._before_call()
        try:
            return self.site.insert(doctype, doc)
        except EngineValidationError as exc:
            classified = concurrent_company_error(doctype, exc)  # as the ERPNext client classifies it
            if classified is exc:
                raise
            raise classified from None
        finally:
            if doctype == "Company":
                company_creation_done()  # the next tenant's create may start while this step looks again

    def update(self, doctype, name, changes):
        self._before_call()
        return self.site.update(doctype, name, changes)

    def delete(self, doctype, name):
        self._before_call()
        return self.site.delete(doctype, name)


# Fault controls (demos, rehearsals and tests) ---------------------------------------------------------------------
def sandbox_faults_set(
    *, tenant, steps: tuple[str, ...], fail_step: str | None = None, latency_ms: int | None = None
) -> None:
    """Make the tenant's sandbox fail ``fail_step`` (one of ``steps``, the caller's step names: an engine does not
    know the steps) once (a 417), and/or answer every call ``latency_ms`` later (0 removes the latency). Only a
    sandbox tenant has faults."""
    if fail_step is None and latency_ms is None:
        return
    if tenant.engine.kind != EngineConnection.Kind.SANDBOX:
        raise InvalidInput("--fail-step and --sandbox-latency only apply to a sandbox engine")
    if fail_step is not None and fail_step not in steps:
        raise InvalidInput(f"unknown step '{fail_step}'; steps are: {', '.join(steps)}")
    if latency_ms is not None and latency_ms < 0:
        raise InvalidInput("--sandbox-latency must be 0 or more milliseconds")
    if fail_step is not None:
        SandboxFault.objects.create(tenant=tenant, step=fail_step, kind=SandboxFault.Kind.PERMANENT, remaining=1)
    if latency_ms is not None:
        SandboxFault.objects.filter(tenant=tenant, kind=SandboxFault.Kind.LATENCY).delete()
        if latency_ms:
            SandboxFault.objects.create(tenant=tenant, kind=SandboxFault.Kind.LATENCY, latency_ms=latency_ms)
