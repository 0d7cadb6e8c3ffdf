"""Everything the admin console needs to be looked at on a fresh clone: the schema, an operator account, a COMPLETED
demo tenant and a PARTIAL one (its step 4 made to fail once) to press Continue on.

Safe to run again: what exists is kept (a second run creates nothing and changes no password unless
``MORAN_ADMIN_PASSWORD`` is set). The operator's password comes from ``MORAN_ADMIN_PASSWORD``; without it a random
one is generated and printed once. Development only: it refuses ``MORAN_ENV=production``.
"""

from __future__ import annotations

import logging
import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from provisioning.models import Onboarding, OnboardingStatus, SandboxFault
from provisioning.services import onboarding_start
from provisioning.steps import TOTAL_STEPS
from tenants.models import EngineConnection, Tenant
from tenants.services import engine_get, tenant_create

# slug → what tenant_create needs, and the step made to fail once (None: provisioned to COMPLETED)
DEMO_TENANTS = {
    "demo-northwind": (
        {"company_name": "Northwind Demo Ltd", "abbr": "NWD", "currency": "EUR", "country": "Germany"},
        None,
    ),
    "demo-acme": (
        {"company_name": "Acme Demo Ltd", "abbr": "ACD", "currency": "EUR", "country": "Germany"},
        "step_4_cost_centers",
    ),
}


class Command(BaseCommand):
    help = "Migrate, create an operator account and two demo tenants (COMPLETED and PARTIAL) for the admin console."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin", help="the operator's username (default: %(default)s)")
        parser.add_argument("--email", default="admin@moran.test", help="the operator's email (default: %(default)s)")

    def handle(self, *args, **opts):
        if settings.PRODUCTION:
            raise CommandError("console_demo is for development: it refuses MORAN_ENV=production")
        call_command("migrate", verbosity=0, interactive=False)
        self._operator(opts["username"], opts["email"])
        engine = engine_get(name="sandbox")
        # One line per tenant says it all; the steps' own log lines are for workers (and -v 2).
        quiet = [logging.getLogger(name) for name in ("moran", "celery")] if opts["verbosity"] < 2 else []
        levels = [logger.level for logger in quiet]
        try:
            for logger in quiet:
                logger.setLevel(logging.CRITICAL)
            for slug, (fields, fail_step) in DEMO_TENANTS.items():
                self._tenant(slug, fields, fail_step, engine)
        finally:
            for logger, level in zip(quiet, levels, strict=True):
                logger.setLevel(level)
        where = "in this process" if settings.CELERY_TASK_ALWAYS_EAGER else "on the workers"
        self.stdout.write(f"Runs (and a Continue pressed in the admin) execute {where}.")

    def _operator(self, username: str, email: str) -> None:
        users = get_user_model()
        chosen = os.environ.get("MORAN_ADMIN_PASSWORD", "")
        user = users.objects.filter(username=username).first()
        if user is not None and not chosen:
            self.stdout.write(f"operator {username} exists: password unchanged (set MORAN_ADMIN_PASSWORD to reset it)")
            return
        password = chosen or secrets.token_urlsafe(12)
        if user is None:
            users.objects.create_superuser(username, email, password)
        else:
            user.set_password(password)
            user.is_staff = user.is_superuser = user.is_active = True
            user.save()
        shown = "from MORAN_ADMIN_PASSWORD" if chosen else f"password {password} (shown once)"
        self.stdout.write(f"operator {username}: {shown}")

    def _tenant(self, slug: str, fields: dict, fail_step: str | None, engine: EngineConnection) -> None:
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            tenant = tenant_create(slug=slug, admin_email=f"admin@{slug}.test", engine=engine, **fields)
            if fail_step:
                SandboxFault.objects.create(tenant=tenant, step=fail_step, kind=SandboxFault.Kind.PERMANENT)
            onboarding_start(onboarding=tenant.onboarding, requested_by="console_demo")
        onboarding = Onboarding.objects.get(tenant=tenant)
        hint = " (press Continue on it in the admin)" if onboarding.status == OnboardingStatus.PARTIAL else ""
        self.stdout.write(f"tenant {slug}: {onboarding.status} {onboarding.steps_completed}/{TOTAL_STEPS} steps{hint}")
