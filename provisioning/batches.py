"""Batches: many tenants provisioned together, at most ``concurrency`` of them at once.

The CLI (``provision_batch``), the API (``POST /api/tenants/batch``) and the admin call these services.

* **Validate first, all of it.** ``batch_validate`` checks every row with the same rules as ``tenant_create`` and
  reports every problem with where it is (``line 3`` of a CSV file, ``rows[2]`` of a JSON list). Nothing is created
  unless every row is good; ``batch_create`` then creates the missing tenants and the batch in one transaction.
* **Re-runs are safe.** A row whose slug exists with the same data is the same tenant again: COMPLETED ones are left
  alone, PARTIAL / FAILED / CANCELLED ones are continued, IN_PROGRESS ones are waited for, PENDING ones started.
* **Who advances a batch.** ``batch_advance`` starts tenants while fewer than ``concurrency`` of the batch are in
  progress; it is safe to call any time, from anywhere (it locks the batch row). It is called (1) when a batch is
  created, (2) when a run of one of its tenants ends -- the one writer calls :func:`provisioning.batch_hooks.
  batch_run_ended`, which enqueues the task ``provisioning.batch_advance`` after the commit, (3) by beat every
  ``MORAN_BATCH_ADVANCE_INTERVAL`` seconds for every unfinished batch (a safety net for a lost message), and (4) by
  the CLI while it watches. So a batch progresses with no client attached. In the embedded mode (no broker, tasks
  run in-process) ``batch_start`` runs the tenants one pass after another instead.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from moran.errors import InvalidInput, NotFound, NothingToContinue, RunActive
from provisioning.models import BatchItem, OnboardingStatus, ProvisioningBatch, SandboxFault
from provisioning.runs import onboarding_continue, onboarding_start
from provisioning.state import normalised
from tenants.models import EngineConnection, Tenant
from tenants.services import tenant_build, tenant_create, tenant_validate

logger = logging.getLogger("moran.provisioning")

REQUIRED_COLUMNS = ("slug", "company", "abbr", "currency", "country", "admin_email")
OPTIONAL_COLUMNS = ("name", "admin_first_name", "cost_centers", "warehouses")
COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
LIST_COLUMNS = ("cost_centers", "warehouses")
MAX_ROWS = 1000
MAX_CONCURRENCY = 100
DEFAULT_CONCURRENCY = 4

#: an onboarding in one of these may be continued by a batch.
RESUMABLE = frozenset({OnboardingStatus.PARTIAL, OnboardingStatus.FAILED, OnboardingStatus.CANCELLED})
TERMINAL = RESUMABLE | {OnboardingStatus.COMPLETED}
#: the fields a re-run row must repeat for its existing tenant.
COMPARED = (
    "name",
    "company_name",
    "abbr",
    "currency",
    "country",
    "admin_email",
    "admin_first_name",
    "extra_cost_centers",
    "extra_warehouses",
)


@dataclass(frozen=True)
class RowInput:
    """One row as it came: ``where`` names it for people (``line 3``, ``rows[2]``), ``line`` is stored with it."""

    where: str
    line: int
    values: dict


@dataclass
class BatchRow:
    where: str
    line: int
    tenant: Tenant  # unsaved for a new tenant; the existing one for a re-run
    exists: bool


@dataclass(frozen=True)
class PlanEntry:
    row: BatchRow
    action: str  # BatchItem.Action
    status: str | None  # the onboarding's status now, None for a tenant to create


@dataclass
class Problems:
    by_place: dict[str, list[str]] = field(default_factory=dict)

    def add(self, where: str, message: str) -> None:
        self.by_place.setdefault(where, []).append(message)

    def raise_if_any(self) -> None:
        if self.by_place:
            lines = [f"{where}: {message}" for where, messages in self.by_place.items() for message in messages]
            raise InvalidInput(
                f"The batch has {len(lines)} problem(s); nothing was created: " + "; ".join(lines),
                fields=self.by_place,
            )


# --- input ------------------------------------------------------------------------------------------------------
def batch_rows_from_csv(*, text: str) -> list[RowInput]:
    """The rows of a CSV file (header ``slug,company,abbr,currency,country,admin_email`` plus optional ``name``,
    ``admin_first_name``, ``cost_centers``, ``warehouses``). Header problems are reported against line 1."""
    problems = Problems()
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        header = [h.strip() for h in next(reader, [])]
        records = [(reader.line_num, record) for record in reader if any(cell.strip() for cell in record)]
    except csv.Error as exc:
        problems.add(f"line {reader.line_num or 1}", f"not a readable CSV file ({exc})")
        problems.raise_if_any()
    if not any(header):
        problems.add("line 1", "the file is empty: expected the header " + ",".join(REQUIRED_COLUMNS))
        problems.raise_if_any()
    _check_header(header, problems)
    if not records:
        problems.add("line 2", "the file has a header but no rows")
    problems.raise_if_any()
    rows = []
    for line, record in records:
        if len(record) > len(header):
            problems.add(f"line {line}", f"{len(record)} fields but the header has {len(header)}")
            continue
        values = {name: cell for name, cell in zip(header, record, strict=False)}
        rows.append(RowInput(where=f"line {line}", line=line, values=values))
    problems.raise_if_any()
    return rows


def _check_header(header: list[str], problems: Problems) -> None:
    unknown = [h or f"(unnamed, column {i + 1})" for i, h in enumerate(header) if h not in COLUMNS]
    if unknown:
        problems.add("line 1", f"unknown column(s) {', '.join(unknown)}; the columns are {', '.join(COLUMNS)}")
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        problems.add("line 1", f"column(s) {', '.join(duplicated)} appear more than once")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        problems.add("line 1", f"missing column(s) {', '.join(missing)}")


def batch_rows_from_list(*, rows) -> list[RowInput]:
    """The rows of a JSON list of objects with the CSV's column names (``cost_centers`` and ``warehouses`` as lists
    of names, or ``;``-separated text)."""
    problems = Problems()
    if not isinstance(rows, list):
        problems.add("rows", "expected a JSON list of rows")
        problems.raise_if_any()
    if not rows:
        problems.add("rows", "the list is empty")
    out = []
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(row, dict):
            problems.add(where, "expected an object")
            continue
        unknown = [str(k) for k in row if k not in COLUMNS]
        if unknown:
            problems.add(where, f"unknown field(s) {', '.join(unknown)}; the fields are {', '.join(COLUMNS)}")
        for key, value in row.items():
            if key in LIST_COLUMNS and isinstance(value, list) and all(isinstance(v, str) for v in value):
                continue
            if value is not None and not isinstance(value, str):
                problems.add(where, f"{key}: expected text")
        out.append(RowInput(where=where, line=i + 1, values=row))
    problems.raise_if_any()
    return out


def _names(value) -> list[str]:
    if isinstance(value, list):
        return [v.strip() for v in value if v.strip()]
    return [v.strip() for v in (value or "").split(";") if v.strip()]


# --- validation -------------------------------------------------------------------------------------------------
def batch_validate(*, rows: list[RowInput], engine: EngineConnection) -> list[BatchRow]:
    """Every row checked, every problem reported (``InvalidInput`` with ``fields`` = place -> messages); nothing is
    written. A row whose slug exists with the same data (on the same engine) is a re-run of that tenant."""
    problems = Problems()
    if len(rows) > MAX_ROWS:
        problems.add("rows", f"{len(rows)} rows; a batch holds at most {MAX_ROWS}")
        problems.raise_if_any()
    slugs = [str(r.values.get("slug") or "").strip() for r in rows]
    existing = {t.slug: t for t in Tenant.objects.filter(slug__in=slugs).select_related("engine")}
    taken_abbr = dict(Tenant.objects.filter(engine=engine).values_list("abbr", "slug"))
    taken_company = dict(Tenant.objects.filter(engine=engine).values_list("company_name", "slug"))
    seen: dict[tuple[str, str], str] = {}
    out = []
    for row in rows:
        missing = [c for c in REQUIRED_COLUMNS if not str(row.values.get(c) or "").strip()]
        if missing:
            problems.add(row.where, f"missing {', '.join(missing)}")
            continue
        tenant = _build(row, engine)
        previous = existing.get(tenant.slug)
        if previous is not None:
            _check_rerun(row, tenant, previous, problems)
            tenant = previous
        else:
            _check_new(row, tenant, problems, taken_abbr=taken_abbr, taken_company=taken_company)
        for key, label in (("slug", "slug"), ("abbr", "abbreviation"), ("company_name", "company")):
            value = getattr(tenant, key)
            first = seen.setdefault((key, value), row.where)
            if first != row.where:
                problems.add(row.where, f"{key}: {label} '{value}' is also on {first}")
        out.append(BatchRow(where=row.where, line=row.line, tenant=tenant, exists=previous is not None))
    problems.raise_if_any()
    return out


def _build(row: RowInput, engine: EngineConnection) -> Tenant:
    v = row.values
    return tenant_build(
        slug=str(v.get("slug") or ""),
        company_name=str(v.get("company") or ""),
        abbr=str(v.get("abbr") or ""),
        currency=str(v.get("currency") or ""),
        country=str(v.get("country") or ""),
        admin_email=str(v.get("admin_email") or ""),
        name=str(v.get("name") or ""),
        admin_first_name=str(v.get("admin_first_name") or ""),
        extra_cost_centers=_names(v.get("cost_centers")),
        extra_warehouses=_names(v.get("warehouses")),
        engine=engine,
    )


def _check_rerun(row: RowInput, tenant: Tenant, previous: Tenant, problems: Problems) -> None:
    differ = [f for f in COMPARED if getattr(tenant, f) != getattr(previous, f)]
    if previous.engine_id != tenant.engine.pk:
        differ.append(f"engine (it is on '{previous.engine.name}')")
    if differ:
        problems.add(
            row.where,
            f"slug: a tenant '{tenant.slug}' already exists with a different {', '.join(differ)} "
            "(a re-run must repeat the tenant's data)",
        )


def _check_new(row: RowInput, tenant: Tenant, problems: Problems, *, taken_abbr: dict, taken_company: dict) -> None:
    try:
        tenant_validate(tenant)
    except InvalidInput as exc:
        for name, messages in exc.fields.items():
            for message in messages:
                problems.add(row.where, f"{name}: {message}")
    if tenant.abbr in taken_abbr:
        problems.add(
            row.where, f"abbr: abbreviation '{tenant.abbr}' already belongs to tenant '{taken_abbr[tenant.abbr]}'"
        )
    if tenant.company_name in taken_company:
        problems.add(
            row.where,
            f"company: '{tenant.company_name}' already belongs to tenant '{taken_company[tenant.company_name]}'",
        )


# --- plan and create --------------------------------------------------------------------------------------------
def batch_plan(*, rows: list[BatchRow]) -> list[PlanEntry]:
    """What a batch of these rows would do to each tenant. Reads only."""
    statuses = dict(
        Tenant.objects.filter(pk__in=[r.tenant.pk for r in rows if r.exists]).values_list("pk", "onboarding__status")
    )
    out = []
    for row in rows:
        status = statuses.get(row.tenant.pk) if row.exists else None
        out.append(PlanEntry(row=row, action=_action_for(status), status=status))
    return out


def _action_for(status: str | None) -> str:
    if status is None or status == OnboardingStatus.PENDING:
        return BatchItem.Action.CREATE
    if status == OnboardingStatus.COMPLETED:
        return BatchItem.Action.LEAVE
    if status == OnboardingStatus.IN_PROGRESS:
        return BatchItem.Action.WAIT
    return BatchItem.Action.CONTINUE


def batch_create(
    *,
    rows: list[BatchRow],
    engine: EngineConnection,
    concurrency: int = DEFAULT_CONCURRENCY,
    created_by=None,
    requested_by: str = "",
    source: str = ProvisioningBatch.Source.CLI,
    filename: str = "",
    sandbox_latency_ms: int | None = None,
) -> ProvisioningBatch:
    """Create the missing tenants and the batch, all or nothing. Starts no run: call :func:`batch_start`."""
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InvalidInput(
            f"concurrency must be between 1 and {MAX_CONCURRENCY}",
            fields={"concurrency": [f"between 1 and {MAX_CONCURRENCY}"]},
        )
    if sandbox_latency_ms is not None and (engine.kind != EngineConnection.Kind.SANDBOX or sandbox_latency_ms < 0):
        raise InvalidInput(
            "--sandbox-latency needs a sandbox engine and 0 or more milliseconds",
            fields={"sandbox_latency": ["a sandbox engine and 0 or more milliseconds"]},
        )
    now = timezone.now()
    with transaction.atomic():
        plan = batch_plan(rows=rows)
        batch = ProvisioningBatch.objects.create(
            engine=engine,
            concurrency=concurrency,
            created_by=created_by,
            requested_by=requested_by[:150],
            source=source,
            filename=filename[:255],
        )
        items = []
        for entry in plan:
            tenant = entry.row.tenant if entry.row.exists else _create(entry.row)
            # Nothing to start for a COMPLETED tenant or one whose run is already going.
            done = entry.action in (BatchItem.Action.LEAVE, BatchItem.Action.WAIT)
            items.append(
                BatchItem(
                    batch=batch,
                    tenant=tenant,
                    line=entry.row.line,
                    action=entry.action,
                    started_at=now if done else None,
                )
            )
            if sandbox_latency_ms is not None:
                SandboxFault.objects.filter(tenant=tenant, kind=SandboxFault.Kind.LATENCY).delete()
                if sandbox_latency_ms:
                    SandboxFault.objects.create(
                        tenant=tenant, kind=SandboxFault.Kind.LATENCY, latency_ms=sandbox_latency_ms
                    )
        BatchItem.objects.bulk_create(items)
    logger.info("batch %s created: %s tenants, %s at a time", batch.id, len(items), concurrency)
    return batch


def _create(row: BatchRow) -> Tenant:
    t = row.tenant
    try:
        return tenant_create(
            slug=t.slug,
            name=t.name,
            company_name=t.company_name,
            abbr=t.abbr,
            currency=t.currency,
            country=t.country,
            admin_email=t.admin_email,
            admin_first_name=t.admin_first_name,
            extra_cost_centers=t.extra_cost_centers,
            extra_warehouses=t.extra_warehouses,
            engine=t.engine,
        )
    except InvalidInput as exc:
        # Someone created a clashing tenant since the validation: the whole batch is rolled back.
        fields = {row.where: [f"{k}: {' '.join(v)}" for k, v in exc.fields.items()] or [exc.message]}
        raise InvalidInput(f"{row.where}: {exc.message}; nothing was created", fields=fields) from None


# --- advancing --------------------------------------------------------------------------------------------------
def batch_get(*, batch_id) -> ProvisioningBatch:
    try:
        return ProvisioningBatch.objects.select_related("engine", "created_by").get(pk=batch_id)
    except (ProvisioningBatch.DoesNotExist, ValueError, TypeError):
        raise NotFound(f"Unknown batch '{batch_id}'") from None


def batch_advance(*, batch_id) -> list[str]:
    """Start the batch's waiting tenants while fewer than ``concurrency`` of its tenants are in progress; mark the
    batch finished when every tenant was started and none is in progress. Returns the slugs it started.

    Safe to call at any time from any process: the batch row is locked, so two calls at once start each tenant once
    and never exceed the concurrency. Runs are enqueued after the commit (by the services it calls)."""
    started: list[str] = []
    with transaction.atomic():
        batch = ProvisioningBatch.objects.select_for_update().filter(pk=batch_id, finished_at__isnull=True).first()
        if batch is None:
            return started
        # Read after the lock: every run that ended before this call is seen as ended.
        items = list(batch.items.select_related("tenant__onboarding"))
        in_flight = sum(1 for i in items if i.tenant.onboarding.status == OnboardingStatus.IN_PROGRESS)
        free = batch.concurrency - in_flight
        for item in items:
            if free <= 0:
                break
            if item.started_at is not None:
                continue
            run = _item_start(item, requested_by=batch.requested_by or f"batch:{batch.pk}")
            item.started_at = timezone.now()
            item.run_id = run.id if run else None
            item.save(update_fields=["started_at", "run_id"])
            if run is not None:
                free -= 1
                started.append(item.tenant.slug)
        if not started and in_flight == 0 and all(i.started_at is not None for i in items):
            batch.finished_at = timezone.now()
            batch.save(update_fields=["finished_at"])
    return started


def _item_start(item: BatchItem, *, requested_by: str):
    onboarding = item.tenant.onboarding
    try:
        if onboarding.status == OnboardingStatus.PENDING:
            return onboarding_start(onboarding=onboarding, requested_by=requested_by)
        if onboarding.status in RESUMABLE:
            return onboarding_continue(onboarding=onboarding, requested_by=requested_by)
    except (RunActive, NothingToContinue):
        # Started by someone else since we read it (another batch, an operator): it is theirs now.
        return None
    return None


def batch_start(*, batch: ProvisioningBatch) -> list[str]:
    """Start a batch: its first ``concurrency`` tenants; the rest start as runs end (see the module's docstring).
    In the embedded mode (tasks run in-process, no worker, no beat) each pass runs its tenants to the end, so this
    runs passes until the batch is finished."""
    started = batch_advance(batch_id=batch.pk)
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        return started
    while True:
        more = batch_advance(batch_id=batch.pk)
        if not more:
            return started
        started += more


def batch_advance_all() -> int:
    """One pass over every unfinished batch (beat's safety net). Returns how many tenants it started."""
    ids = list(ProvisioningBatch.objects.filter(finished_at__isnull=True).values_list("pk", flat=True))
    return sum(len(batch_advance(batch_id=batch_id)) for batch_id in ids)


def batch_continue_unfinished(*, batch: ProvisioningBatch) -> int:
    """Continue the batch's PARTIAL, FAILED and CANCELLED tenants, at most ``concurrency`` at once like the first
    pass. Returns how many tenants were put back in line."""
    with transaction.atomic():
        locked = ProvisioningBatch.objects.select_for_update().get(pk=batch.pk)
        again = BatchItem.objects.filter(batch=locked, tenant__onboarding__status__in=RESUMABLE)
        count = again.update(started_at=None, run_id=None, action=BatchItem.Action.CONTINUE)
        if count:
            locked.finished_at = None
            locked.save(update_fields=["finished_at"])
    if count:
        batch_start(batch=batch)
    return count


# --- reading ----------------------------------------------------------------------------------------------------
def batch_list_with_counts() -> QuerySet[ProvisioningBatch]:
    """Batches with a count per onboarding status (``n_<status>``) and ``n_total``, in one query."""
    counts = {
        f"n_{status.lower()}": Count("items", filter=Q(items__tenant__onboarding__status=status))
        for status in OnboardingStatus.values
    }
    return ProvisioningBatch.objects.select_related("engine", "created_by").annotate(n_total=Count("items"), **counts)


def batch_status(*, batch: ProvisioningBatch) -> dict:
    """Where a batch stands: counts per status, progress (the tenants' mean step progress), how many are done
    (ended, once started by this batch), the failures with their step and error, and every tenant."""
    items = list(batch.items.select_related("tenant__onboarding").order_by("line"))
    counts = {status: 0 for status in OnboardingStatus.values}
    tenants, failures = [], []
    done = 0
    for item in items:
        ob = item.tenant.onboarding
        counts[ob.status] += 1
        ended = item.started_at is not None and ob.status in TERMINAL
        done += ended
        entry = {
            "tenant": item.tenant.slug,
            "line": item.line,
            "action": item.action,
            "status": ob.status,
            "progress": ob.progress,
            "current_step": ob.current_step,
            "started": item.started_at is not None,
        }
        tenants.append(entry)
        if ended and ob.status != OnboardingStatus.COMPLETED:
            failures.append({**entry, "step": ob.current_step, "error": _last_error(ob.provisioning_steps)})
    total = len(items)
    return {
        "id": str(batch.pk),
        "engine": batch.engine.name,
        "concurrency": batch.concurrency,
        "created_by": batch.requested_by,
        "created_at": batch.created_at,
        "finished_at": batch.finished_at,
        "finished": done == total,
        "total": total,
        "done": done,
        "progress": round(sum(t["progress"] for t in tenants) / total) if total else 100,
        "counts": counts,
        "failures": failures,
        "tenants": tenants,
    }


def _last_error(steps: dict) -> dict | None:
    errors = [
        {"step": name, "type": e["error"].get("type"), "message": e["error"].get("message")}
        for name, e in normalised(steps).items()
        if e.get("error") and e.get("status") != "completed"
    ]
    return errors[-1] if errors else None
