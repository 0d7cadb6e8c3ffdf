"""Prometheus metrics at ``/metrics``, computed from the database at scrape time.

Why from the database and not from counters in memory: steps run in worker processes on any number of machines, and
web processes come and go; a counter incremented in a worker lives in that worker (Prometheus would have to scrape
every pool process, and a restart resets it). The rows the control plane writes anyway — onboardings, runs, step log
lines — are the shared, durable record of the same events, so any web process gives the same, complete answer, and
nothing is lost on a restart. The ``_total`` series are counters in Prometheus's sense because those rows are only
ever added (deleting a tenant removes its history, which Prometheus sees as a counter reset).

Cost: one grouped query per family; the step-duration histogram reads one row per finished step attempt. That is
cheap for the hundreds of tenants this serves; at a much larger scale, aggregate into a table as steps finish.
"""

from __future__ import annotations

import hmac
from collections import defaultdict

from django.conf import settings
from django.db.models import Count, Max, Min
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
        from provisioning.models import Onboarding, OnboardingStatus, ProvisioningRun, RunKind, StepLog
        from provisioning.state import normalised
        from provisioning.steps import STEP_NAMES

        # Onboardings by status: every status is present, so a status dropping to zero is a 0, not a gap.
        by_status = dict.fromkeys(OnboardingStatus.values, 0)
        by_status.update(Onboarding.objects.values_list("status").annotate(n=Count("id")).order_by())
        family = GaugeMetricFamily("moran_onboardings", "Onboardings by status", labels=["status"])
        for status, n in by_status.items():
            family.add_metric([status], n)
        yield family

        # Where tenants stand, step by step (a step many tenants have failed stands out).
        counts = defaultdict(int)
        for steps in Onboarding.objects.values_list("provisioning_steps", flat=True).iterator():
            for name, entry in normalised(steps).items():
                counts[(name, entry["status"])] += 1
        family = GaugeMetricFamily(
            "moran_onboarding_steps", "Step states across onboardings", labels=["step", "status"]
        )
        for (name, status), n in sorted(counts.items()):
            family.add_metric([name, status], n)
        yield family

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

        # Step attempt errors by step, from the step log's levels: an error line ends an attempt that failed for
        # good, a warning line one that will be retried (or an optional step skipped).
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

        # Step attempt durations: an attempt's first log line ("attempt N started") and its last (how it ended) are
        # written by the worker at its start and end; an attempt with a single line is still running.
        attempts = (
            StepLog.objects.filter(attempt__gt=0)
            .exclude(step="")
            .values("onboarding_id", "run_id", "step", "attempt")
            .annotate(lines=Count("id"), began=Min("created_at"), ended=Max("created_at"))
            .filter(lines__gte=2)
            .values_list("step", "began", "ended")
            .order_by()
        )
        buckets = {name: [0] * len(DURATION_BUCKETS) for name in STEP_NAMES}
        totals = {name: [0, 0.0] for name in STEP_NAMES}
        for step, began, ended in attempts.iterator():
            seconds = (ended - began).total_seconds()
            step_buckets = buckets.setdefault(step, [0] * len(DURATION_BUCKETS))
            for i, bound in enumerate(DURATION_BUCKETS):
                if seconds <= bound:
                    step_buckets[i] += 1
            total = totals.setdefault(step, [0, 0.0])
            total[0] += 1
            total[1] += seconds
        family = HistogramMetricFamily(
            "moran_step_duration_seconds", "Duration of finished step attempts, by step", labels=["step"]
        )
        for step, step_buckets in buckets.items():
            count, total = totals[step]
            family.add_metric(
                [step],
                buckets=[*((str(b), n) for b, n in zip(DURATION_BUCKETS, step_buckets, strict=True)), ("+Inf", count)],
                sum_value=total,
            )
        yield family


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
