"""Prometheus metrics at ``/metrics``, computed from the database at scrape time.

Why from the database and not from counters in memory: steps run in worker processes on any number of machines, and
web processes come and go; a counter incremented in a worker lives in that worker (Prometheus would have to scrape
every pool process, and a restart resets it). The rows the control plane writes anyway — onboardings, runs, step log
lines — are the shared, durable record of the same events, so any web process gives the same, complete answer, and
nothing is lost on a restart. The ``_total`` series are counters in Prometheus's sense because those rows are only
ever added (deleting a tenant removes its history, which Prometheus sees as a counter reset).

Cost: a few grouped queries, each answered in the database (no row is parsed in Python on PostgreSQL), so a scrape
stays well under a second at tens of thousands of tenants; see :func:`step_state_counts` and
:func:`step_duration_rows` for the two that read the most.
"""

from __future__ import annotations

import hmac
import math
from collections import defaultdict
from itertools import accumulate

from django.conf import settings
from django.db import connection
from django.db.models import Case, Count, IntegerField, Sum, Value, When
from django.http import HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder

#: step attempt durations (seconds); the top buckets bracket the soft and hard time limits
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 180.0)


class ProvisioningCollector:
    """Reads the provisioning tables on every ``collect()`` (that is, on every scrape)."""

    def collect(self):
        yield from self._onboardings()
        yield from self._runs()
        yield from self._steps()

    def _onboardings(self):
        from provisioning.models import Onboarding, OnboardingStatus

        # Onboardings by status: every status is present, so a status dropping to zero is a 0, not a gap.
        by_status = dict.fromkeys(OnboardingStatus.values, 0)
        by_status.update(Onboarding.objects.values_list("status").annotate(n=Count("id")).order_by())
        family = GaugeMetricFamily("moran_onboardings", "Onboardings by status", labels=["status"])
        for status, n in by_status.items():
            family.add_metric([status], n)
        yield family

        # Where tenants stand, step by step (a step many tenants have failed stands out).
        family = GaugeMetricFamily(
            "moran_onboarding_steps", "Step states across onboardings", labels=["step", "status"]
        )
        for (name, status), n in sorted(step_state_counts().items()):
            family.add_metric([name, status], n)
        yield family

    def _runs(self):
        from provisioning.models import ProvisioningRun, RunKind

        # Runs started by kind (start / continue / retry), and how the finished ones ended.
        started = dict.fromkeys(RunKind.values, 0)
        started.update(ProvisioningRun.objects.values_list("kind").annotate(n=Count("id")).order_by())
        family = CounterMetricFamily("moran_provisioning_runs_started", "Runs started, by kind", labels=["kind"])
        for kind, n in started.items():
            family.add_metric([kind], n)
        yield family
        ended = dict.fromkeys([o for o in ProvisioningRun.Outcome.values if o != ProvisioningRun.Outcome.ACTIVE], 0)
        ended.update(
            ProvisioningRun.objects.exclude(outcome=ProvisioningRun.Outcome.ACTIVE)
            .values_list("outcome")
            .annotate(n=Count("id"))
            .order_by()
        )
        family = CounterMetricFamily("moran_provisioning_runs_ended", "Runs ended, by outcome", labels=["outcome"])
        for outcome, n in ended.items():
            family.add_metric([outcome], n)
        yield family
        active = ProvisioningRun.objects.filter(outcome=ProvisioningRun.Outcome.ACTIVE).count()
        yield GaugeMetricFamily("moran_provisioning_runs_active", "Runs in charge right now", value=active)

    def _steps(self):
        from provisioning.models import StepLog
        from provisioning.steps import STEP_NAMES

        # Step attempt errors by step, from the step log's levels: an error line ends an attempt that failed for
        # good, a warning line one that will be retried (or an optional step skipped). Read off the (level, id) index.
        errors = {(name, outcome): 0 for name in STEP_NAMES for outcome in ("failed", "retried_or_skipped")}
        rows = (
            StepLog.objects.filter(attempt__gt=0, level__in=[StepLog.Level.ERROR, StepLog.Level.WARNING])
            .exclude(step="")
            .values_list("step", "level")
            .annotate(n=Count("id"))
            .order_by()
        )
        for step, level, n in rows:
            outcome = "failed" if level == StepLog.Level.ERROR else "retried_or_skipped"
            errors[(step, outcome)] = errors.get((step, outcome), 0) + n
        family = CounterMetricFamily(
            "moran_step_failures", "Step attempts that ended in an error, by step", labels=["step", "outcome"]
        )
        for (step, outcome), n in errors.items():
            family.add_metric([step, outcome], n)
        yield family

        # Step attempt durations, bucketed by the database: one row per step comes back.
        family = HistogramMetricFamily(
            "moran_step_duration_seconds", "Duration of finished step attempts, by step", labels=["step"]
        )
        rows = {row[0]: row[1:] for row in step_duration_rows()}
        for step in dict.fromkeys([*STEP_NAMES, *rows]):
            count, total, *cumulative = rows.get(step) or (0, 0.0, *[0] * len(DURATION_BUCKETS))
            family.add_metric(
                [step],
                buckets=[*((str(b), n) for b, n in zip(DURATION_BUCKETS, cumulative, strict=True)), ("+Inf", count)],
                sum_value=total,
            )
        yield family


def step_state_counts() -> dict[tuple[str, str], int]:
    """{(step, status): onboardings} over every onboarding, every step present (a missing entry is pending, as
    :func:`provisioning.state.normalised` reads it).

    PostgreSQL unnests the JSON with ``jsonb_each`` and groups it, returning one row per (step, status) in use;
    SQLite (the embedded default, a handful of tenants) parses the documents in Python."""
    from provisioning.models import Onboarding, StepStatus
    from provisioning.state import normalised
    from provisioning.steps import STEP_NAMES

    counts: dict[tuple[str, str], int] = defaultdict(int)
    if connection.vendor != "postgresql":
        for steps in Onboarding.objects.values_list("provisioning_steps", flat=True).iterator():
            for name, entry in normalised(steps).items():
                counts[(name, entry["status"])] += 1
        return dict(counts)
    table = Onboarding._meta.db_table
    with connection.cursor() as cursor:
        # The cost is one pass over every entry of every document: per entry, only its status is read (``->>`` of
        # anything but an object is NULL, as is a JSON null status, and NULL <> 'pending' filters it out).
        cursor.execute(
            f"SELECT s.key, s.value ->> 'status', COUNT(*) FROM {table} o,"  # noqa: S608 -- a model's table name
            " jsonb_each(CASE jsonb_typeof(o.provisioning_steps) WHEN 'object' THEN o.provisioning_steps"
            " ELSE '{}'::jsonb END) s"
            " WHERE s.value ->> 'status' <> %s GROUP BY 1, 2",
            [StepStatus.PENDING.value],
        )
        rows = cursor.fetchall()
    total = Onboarding.objects.count()
    for name, status, n in rows:
        if name in STEP_NAMES:
            counts[(name, status)] += n
    for name in STEP_NAMES:
        # Pending = every onboarding whose entry for the step is not in another state (absent entries included).
        pending = total - sum(n for (step, _), n in counts.items() if step == name)
        if pending:
            counts[(name, StepStatus.PENDING.value)] += pending
    return dict(counts)


def step_duration_rows() -> list[tuple]:
    """Finished step attempts by step: ``(step, count, seconds in all, n <= bucket 0, n <= bucket 1, ...)``, in one
    grouped query over the attempt rows (each holds its own duration), whatever the number of log lines.

    Each row is put in its first bucket by one ``CASE`` and counted per (step, bucket); the cumulative counts are
    summed here (a dozen rows per step), rather than the database testing every row against every bucket."""
    from provisioning.models import StepAttempt

    # duration_ms is an integer: at most a bound's milliseconds is at most their floor
    bucket = Case(
        *(When(duration_ms__lte=math.floor(bound * 1000), then=Value(i)) for i, bound in enumerate(DURATION_BUCKETS)),
        default=Value(len(DURATION_BUCKETS)),
        output_field=IntegerField(),
    )
    rows = (
        StepAttempt.objects.filter(finished_at__isnull=False)
        .exclude(duration_ms__isnull=True)
        .annotate(bucket=bucket)
        .values_list("step", "bucket")
        .annotate(n=Count("id"), total_ms=Sum("duration_ms"))
        .order_by()
    )
    per_bucket: dict[str, list[int]] = defaultdict(lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total_ms: dict[str, int] = defaultdict(int)
    for step, index, n, ms in rows:
        per_bucket[step][index] += n
        total_ms[step] += ms or 0
    return [
        (step, sum(counts), total_ms[step] / 1000, *accumulate(counts[: len(DURATION_BUCKETS)]))
        for step, counts in per_bucket.items()
    ]


registry = CollectorRegistry(auto_describe=False)
registry.register(ProvisioningCollector())


@never_cache
@require_GET
def metrics(request):
    token = settings.METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return HttpResponse("metrics need a bearer token\n", status=401, content_type="text/plain")
    # The library negotiates the format: Prometheus's text format by default, OpenMetrics when the scraper asks.
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(registry), content_type=content_type)
