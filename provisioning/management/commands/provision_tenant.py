"""Provision a tenant from a terminal, with a progress display per step while it waits.

Exit codes: 0 COMPLETED; 1 PARTIAL, FAILED, CANCELLED or still running at --timeout; 2 bad input (one line on stderr).

Read-only modes (they run the steps' ``look`` only and write nothing: not the engine, not the onboarding):
``--plan`` prints step by step what a run would create or change (exit 0; 1 when a step could not be looked at);
``--verify`` checks a tenant against its engine, per step present / missing / different (exit 0 when nothing drifted,
1 otherwise). ``--create --plan`` creates the tenant record only, without provisioning it, then plans.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from moran.errors import DomainError
from provisioning.drift import PRESENT, drifted, tenant_plan, tenant_verify
from provisioning.engines.sandbox import sandbox_faults_set
from provisioning.management.progress import LiveTable
from provisioning.models import Onboarding, OnboardingStatus
from provisioning.selectors import onboarding_status
from provisioning.services import onboarding_continue, onboarding_retry, onboarding_start
from provisioning.steps import STEP_NAMES, TOTAL_STEPS
from tenants.selectors import tenant_get_visible
from tenants.services import engine_get, tenant_allow_restricting_existing_admin, tenant_create

EXIT_OK, EXIT_NOT_COMPLETED, EXIT_BAD_INPUT = 0, 1, 2
TERMINAL = {OnboardingStatus.COMPLETED, OnboardingStatus.PARTIAL, OnboardingStatus.FAILED, OnboardingStatus.CANCELLED}


class BadInput(Exception):
    pass


class Command(BaseCommand):
    help = "Create and/or provision a tenant, continue or retry its provisioning, and watch it step by step."

    def add_arguments(self, parser):
        parser.add_argument("slug", help="the tenant's slug (or id)")
        parser.add_argument("--create", action="store_true", help="create the tenant first")
        parser.add_argument("--company", help="company name in the engine (with --create)")
        parser.add_argument("--abbr", help="company abbreviation, 2-10 uppercase letters/digits (with --create)")
        parser.add_argument("--currency", help="ISO 4217 currency code (with --create)")
        parser.add_argument("--country", help="country name as ERPNext knows it (with --create)")
        parser.add_argument("--admin-email", help="the tenant admin's email (with --create)")
        parser.add_argument("--name", help="display name (default: the company name)")
        parser.add_argument(
            "--cost-center", action="append", default=[], dest="cost_centers", help="an extra cost center (repeatable)"
        )
        parser.add_argument(
            "--warehouse", action="append", default=[], dest="warehouses", help="an extra warehouse (repeatable)"
        )
        parser.add_argument("--engine", help="engine connection name (default: %(default)s)", default=None)
        parser.add_argument(
            "--allow-restrict-existing-admin",
            action="store_true",
            help="let step 8 restrict an admin user that existed in the engine before (and could see every company)",
        )
        parser.add_argument("--fail-step", help="sandbox: make this step fail once, permanently")
        parser.add_argument("--sandbox-latency", type=int, metavar="MS", help="sandbox: add MS to every engine call")
        action = parser.add_mutually_exclusive_group()
        action.add_argument(
            "--continue", action="store_true", dest="continue_", help="resume from the first incomplete step"
        )
        action.add_argument("--retry", action="store_true", help="run every step again from step 0")
        action.add_argument(
            "--plan", action="store_true", help="print what a run would create or change; writes nothing"
        )
        action.add_argument(
            "--verify", action="store_true", help="check the tenant against its engine: present, missing, different"
        )
        parser.add_argument("--no-wait", action="store_true", help="return once the run is enqueued")
        parser.add_argument(
            "--timeout", type=float, default=900, help="seconds to wait for the end (default %(default)s)"
        )

    def handle(self, *args, **opts):
        loggers = [logging.getLogger(name) for name in ("moran", "celery")]
        levels = [logger.level for logger in loggers]
        if opts["verbosity"] < 2:
            # The progress display says it all; per-task log lines are for workers (and -v 2).
            for logger in loggers:
                logger.setLevel(logging.CRITICAL)
        try:
            code = self._handle(opts)
        except (BadInput, DomainError, CommandError) as exc:
            self.stderr.write(f"error: {getattr(exc, 'message', None) or exc}")
            code = EXIT_BAD_INPUT
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
        sys.exit(code)

    def _handle(self, opts) -> int:
        if opts["verify"] and opts["create"]:
            raise BadInput("--verify checks an existing tenant: drop --create")
        tenant = self._tenant(opts)
        if opts["plan"] or opts["verify"]:
            return self._read_only(tenant, verify=opts["verify"])
        self._faults(tenant, opts)
        onboarding = Onboarding.objects.get(tenant=tenant)
        who = "cli"
        eager = settings.CELERY_TASK_ALWAYS_EAGER
        watcher = None
        if not opts["no_wait"]:
            display = LiveTable(self.stdout, columns=("#", "step", "status", "attempts", "error"), title=tenant.slug)
            watcher = Watcher(display, onboarding.pk)
        try:
            if watcher:
                watcher.display.start()
                watcher.poll()  # remember the state before the run, so only what this run changes is shown
                watcher.start()
            if opts["continue_"]:
                run = onboarding_continue(onboarding=onboarding, requested_by=who)
            elif opts["retry"]:
                run = onboarding_retry(onboarding=onboarding, requested_by=who)
            elif onboarding.status == OnboardingStatus.PENDING:
                run = onboarding_start(onboarding=onboarding, requested_by=who)
            else:
                raise BadInput(f"Tenant '{tenant.slug}' is {onboarding.status}: use --continue or --retry")
            if opts["no_wait"]:
                self.stdout.write(f"run {run.id} {'finished' if eager else 'enqueued'} for {tenant.slug}")
                return EXIT_OK
            # Embedded mode ran the chain inside the call above; otherwise workers run it and we watch the row.
            deadline = time.monotonic() + (0 if eager else opts["timeout"])
            while time.monotonic() < deadline:
                onboarding.refresh_from_db()
                if onboarding.status in TERMINAL:
                    break
                time.sleep(0.25)
        finally:
            if watcher:
                watcher.stop()
        onboarding.refresh_from_db()
        return self._summary(onboarding)

    def _tenant(self, opts):
        if opts["create"]:
            missing = [
                f"--{k.replace('_', '-')}"
                for k in ("company", "abbr", "currency", "country", "admin_email")
                if not opts[k]
            ]
            if missing:
                raise BadInput(f"--create needs {', '.join(missing)}")
            engine = engine_get(name=opts["engine"])
            tenant = tenant_create(
                slug=opts["slug"],
                name=opts["name"] or "",
                company_name=opts["company"],
                abbr=opts["abbr"],
                currency=opts["currency"],
                country=opts["country"],
                admin_email=opts["admin_email"],
                engine=engine,
                extra_cost_centers=opts["cost_centers"],
                extra_warehouses=opts["warehouses"],
                allow_restricting_existing_admin=opts["allow_restrict_existing_admin"],
            )
            self.stdout.write(
                f"created tenant {tenant.slug} ({tenant.company_name}, {tenant.abbr}) on engine {engine.name}"
            )
            return tenant
        for flag in ("company", "abbr", "currency", "country", "admin_email", "engine"):
            if opts[flag]:
                raise BadInput(f"--{flag.replace('_', '-')} is only used with --create")
        tenant = tenant_get_visible(identifier=opts["slug"])
        if opts["allow_restrict_existing_admin"]:
            tenant_allow_restricting_existing_admin(tenant=tenant)
        return tenant

    def _read_only(self, tenant, *, verify: bool) -> int:
        engine = tenant.engine
        self.stdout.write(
            f"{'verify' if verify else 'plan for'} tenant {tenant.slug} ({tenant.company_name}, {tenant.abbr}) "
            f"on engine {engine.name} ({engine.kind}):"
        )
        reports = tenant_verify(tenant=tenant) if verify else tenant_plan(tenant=tenant)
        for i, report in enumerate(reports):
            if verify:
                head = report.state
            elif report.state == PRESENT:
                head = "nothing to do"
            elif report.state == "error":
                head = "cannot tell"
            else:
                changes = sum(1 for line in report.lines if not line.startswith("note:"))
                head = f"{changes} change(s)" if changes else "nothing to create (see the note)"
            if report.state == PRESENT and report.found:
                head += " (" + ", ".join(f"{k}: {_short(v)}" for k, v in report.found.items()) + ")"
            self.stdout.write(f"[{i + 1:>2}/{TOTAL_STEPS}] {report.step:<28} {head}")
            for line in report.lines:
                self.stdout.write(f"{'':8}{line}")
        self.stdout.write(f"[{TOTAL_STEPS:>2}/{TOTAL_STEPS}] {STEP_NAMES[-1]:<28} verifies every resource above")
        if verify:
            bad = [r.step for r in reports if r.state not in (PRESENT, "skipped")]
            self.stdout.write(f"drift in {', '.join(bad)}" if bad else "no drift: every resource is present")
            return EXIT_NOT_COMPLETED if drifted(reports) else EXIT_OK
        self.stdout.write("plan only: nothing was written")
        return EXIT_NOT_COMPLETED if any(r.state == "error" for r in reports) else EXIT_OK

    def _faults(self, tenant, opts):
        sandbox_faults_set(
            tenant=tenant, steps=tuple(STEP_NAMES), fail_step=opts["fail_step"], latency_ms=opts["sandbox_latency"]
        )

    def _summary(self, onboarding) -> int:
        status = onboarding_status(onboarding=onboarding)
        self.stdout.write(
            f"{status['tenant']}: {status['status']} {status['steps_completed']}/{status['total_steps']} steps, "
            f"{status['progress']} %" + (f", current step {status['current_step']}" if status["current_step"] else "")
        )
        for error in status["errors"]:
            self.stdout.write(f"  error in {error['step']}: {error['type']}: {error['message']}")
        if status["status"] == OnboardingStatus.COMPLETED:
            return EXIT_OK
        if status["status"] == OnboardingStatus.IN_PROGRESS:
            self.stdout.write(
                "  still in progress: watch it with `manage.py provisioning_status " + status["tenant"] + "`"
            )
        return EXIT_NOT_COMPLETED


def _short(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_short(v) for v in value)
    return str(value)


class Watcher(threading.Thread):
    """Shows each step's transitions while a run goes on: a table redrawn in place on a terminal, one line per
    transition otherwise. It polls the database (its own connection), so it shows the same whether the steps run in
    this process (embedded mode) or on workers elsewhere."""

    def __init__(self, display: LiveTable, onboarding_id, interval=0.2):
        super().__init__(daemon=True)
        self.display, self.onboarding_id, self.interval = display, onboarding_id, interval
        self._stop_event = threading.Event()
        self._seen: dict[str, tuple] = {}

    def run(self):
        try:
            while not self._stop_event.is_set():
                self.poll()
                self._stop_event.wait(self.interval)
            self.poll()
        finally:
            connection.close()

    def poll(self):
        steps = Onboarding.objects.values_list("provisioning_steps", flat=True).get(pk=self.onboarding_id)
        for i, name in enumerate(STEP_NAMES):
            entry = steps.get(name) or {}
            key = (entry.get("status"), entry.get("attempts"))
            if self._seen.get(name) == key:
                continue
            first = name not in self._seen
            self._seen[name] = key
            status, attempts, error = entry.get("status", "pending"), entry.get("attempts", 0), ""
            if entry.get("error") and status != "completed":
                error = f"{entry['error'].get('type')}: {entry['error'].get('message')}"
            # The state before this run fills the table but prints no line: the summary shows it.
            line = None
            if not first:
                line = f"[{i + 1:>2}/{TOTAL_STEPS}] {name:<28} {status:<9} attempt {attempts}"
                line += f" — {error}" if error else ""
            self.display.update(name, (f"{i + 1}/{TOTAL_STEPS}", name, status, str(attempts), error), line=line)

    def stop(self):
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)
        self.display.stop()
