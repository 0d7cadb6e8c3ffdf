"""Print a tenant's provisioning status: the brief's status body (``--json``: exactly what the API returns)."""

import json
import sys

from django.core.management.base import BaseCommand

from moran.errors import DomainError
from provisioning.selectors import onboarding_get, onboarding_status


class Command(BaseCommand):
    help = "Show a tenant's provisioning status."

    def add_arguments(self, parser):
        parser.add_argument("slug", help="the tenant's slug (or id)")
        parser.add_argument("--json", action="store_true", help="print the status endpoint's JSON")

    def handle(self, *args, **opts):
        try:
            onboarding = onboarding_get(tenant_id=opts["slug"])
        except DomainError as exc:
            self.stderr.write(f"error: {exc.message}")
            sys.exit(2)
        status = onboarding_status(onboarding=onboarding)
        if opts["json"]:
            self.stdout.write(json.dumps(status, indent=2))
            return
        self.stdout.write(
            f"{status['tenant']} ({status['tenant_id']}): {status['status']}, {status['steps_completed']}/"
            f"{status['total_steps']} steps, {status['progress']} %, current step {status['current_step'] or '-'}"
        )
        for i, step in enumerate(status["steps"]):
            optional = " (optional)" if step["optional"] else ""
            line = f"  [{i + 1:>2}] {step['name']:<28} {step['status']:<9} attempts {step['attempts']}{optional}"
            if step["error"]:
                line += f" — {step['error']['type']}: {step['error']['message']}"
            self.stdout.write(line)
