"""The sandbox engine: the ERPNext emulator over the project's database, with per-tenant fault injection.

Every worker process (on every machine) that shares the database sees the same sandbox site, exactly as every
worker would see the same ERPNext site.
"""

from __future__ import annotations

import json
import time

from django.conf import settings
from django.db import connection as database
from django.db import transaction
from django.db.models import F

from moran.errors import InvalidInput
from provisioning.engines.company_lock import company_creation_done
from provisioning.engines.emulator import DuplicateName, ERPNextEmulator
from provisioning.engines.errors import EngineTransientError, EngineValidationError, concurrent_company_error
from provisioning.models import SandboxDocument, SandboxFault
from tenants.models import EngineConnection


class DatabaseStore:
    """The sandbox site's documents in the ``SandboxDocument`` table, one row per document.

    Plain SQL (the same on PostgreSQL and SQLite) rather than the ORM: the emulator issues a few dozen of these per
    step, and the ORM's compilation of each was a good part of their cost. A write is one statement that cannot
    fail on a taken name (``ON CONFLICT``), so it needs no savepoint inside a transaction."""

    table = SandboxDocument._meta.db_table

    def __init__(self, site: str):
        self.site = site

    def _fetch(self, sql, params):
        with database.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()

    def get(self, doctype, name):
        rows = self._fetch(
            f"SELECT data FROM {self.table} WHERE site = %s AND doctype = %s AND name = %s", [self.site, doctype, name]
        )
        return _loads(rows[0][0]) if rows else None

    def get_many(self, keys):
        if not keys:
            return {}
        pairs = " OR ".join(["(doctype = %s AND name = %s)"] * len(keys))
        params = [self.site] + [part for key in keys for part in key]
        rows = self._fetch(f"SELECT doctype, name, data FROM {self.table} WHERE site = %s AND ({pairs})", params)
        return {(doctype, name): _loads(data) for doctype, name, data in rows}

    def add(self, doctype, name, doc):
        self.add_many([(doctype, name, doc)])

    def add_many(self, entries):
        if not entries:
            return
        values = ", ".join(["(%s, %s, %s, %s)"] * len(entries))
        params = [part for doctype, name, doc in entries for part in (self.site, doctype, name, json.dumps(doc))]
        # A name taken (by a committed row, or by a concurrent transaction once that commits) inserts nothing: the
        # duplicate a unique violation would report, without aborting the surrounding transaction (no savepoint).
        sql = (
            f"INSERT INTO {self.table} (site, doctype, name, data) VALUES {values} "
            "ON CONFLICT (site, doctype, name) DO NOTHING RETURNING doctype, name"
        )
        if len(entries) == 1:
            if not self._fetch(sql, params):
                raise DuplicateName(*entries[0][:2])
            return
        # The rows before a taken name must not stay: raising inside this block rolls them back (or dooms the
        # caller's transaction, which the exception leaves).
        with transaction.atomic(savepoint=False):
            inserted = {tuple(row) for row in self._fetch(sql, params)}
            if len(inserted) < len(entries):
                seen = set()
                for doctype, name, _ in entries:  # the first taken, or named twice in the batch
                    if (doctype, name) not in inserted or (doctype, name) in seen:
                        raise DuplicateName(doctype, name)
                    seen.add((doctype, name))

    def put(self, doctype, name, doc):
        with database.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {self.table} (site, doctype, name, data) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (site, doctype, name) DO UPDATE SET data = excluded.data",
                [self.site, doctype, name, json.dumps(doc)],
            )

    def remove(self, doctype, name):
        with database.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {self.table} WHERE site = %s AND doctype = %s AND name = %s", [self.site, doctype, name]
            )
            return cursor.rowcount > 0

    def rows(self, doctype, match=None):
        sql = f"SELECT data FROM {self.table} WHERE site = %s AND doctype = %s"
        params = [self.site, doctype]
        # Plain string equalities (company = X) are pushed down so a list does not read every company's documents;
        # the emulator still applies every filter itself. On PostgreSQL as one jsonb containment.
        if match:
            if database.vendor == "postgresql":
                sql += " AND data @> %s::jsonb"
                params.append(json.dumps(match))
            else:
                for field, value in match.items():
                    sql += " AND json_extract(data, %s) = %s"
                    params += ["$." + json.dumps(field), value]
        return [_loads(data) for (data,) in self._fetch(sql + " ORDER BY name", params)]

    def field_values(self, doctype, field):
        if database.vendor == "postgresql":
            value = "data ->> %s"
        else:
            value = "json_extract(data, '$.' || %s)"
            field = json.dumps(field)
        rows = self._fetch(
            f"SELECT name, {value} FROM {self.table} WHERE site = %s AND doctype = %s ORDER BY name",
            [field, self.site, doctype],
        )
        return dict(rows)

    def site_and_faults(self, tenant_id: int | None) -> tuple[bool, list[dict]]:
        """Whether the site exists (its System Settings), and the tenant's sandbox faults: one round trip."""
        faults, fault_tenant = SandboxFault._meta.db_table, SandboxFault._meta.get_field("tenant")
        rows = self._fetch(
            f"SELECT 0, NULL, NULL, NULL FROM {self.table} WHERE site = %s AND doctype = %s AND name = %s "
            f"UNION ALL SELECT id, step, kind, latency_ms FROM {faults} WHERE tenant_id = %s",
            # The key as the backend stores it (a UUID is text on SQLite; raw SQL does not convert it).
            [self.site, "System Settings", "System Settings", fault_tenant.get_db_prep_value(tenant_id, database)],
        )
        found = [{"id": pk, "step": step, "kind": kind, "latency_ms": ms} for pk, step, kind, ms in rows if pk]
        return any(not pk for pk, *_ in rows), sorted(found, key=lambda fault: fault["id"])

    def atomic(self):
        return transaction.atomic()

    def lock_site(self):
        # A row lock on the site's settings, held until the transaction ends; the reads after it see what the
        # writers before it committed (READ COMMITTED).
        lock = " FOR UPDATE" if database.features.has_select_for_update else ""  # SQLite has one writer anyway
        self._fetch(
            f"SELECT id FROM {self.table} WHERE site = %s AND doctype = %s{lock}", [self.site, "System Settings"]
        )


def _loads(data):
    # PostgreSQL's driver hands jsonb to Django as text (Django decodes it itself); SQLite stores text.
    return json.loads(data) if isinstance(data, str) else data


class SandboxEngine:
    """The :class:`~provisioning.engines.base.Engine` of a sandbox connection, bound to one tenant and step so that
    the faults injected for that tenant apply."""

    kind = "sandbox"

    def __init__(self, connection, *, tenant=None, step: str | None = None):
        self.name = connection.name
        self.tenant = tenant
        self.step = step
        store = DatabaseStore(connection.name)
        # The tenant's faults, read once per engine (one engine serves one step attempt; consumed in the database),
        # in the same statement as whether the site exists.
        site_ready, self._faults = store.site_and_faults(tenant.pk if tenant else None)
        self.site = ERPNextEmulator(store, company_latency=settings.SANDBOX_COMPANY_LATENCY, site_ready=site_ready)
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
