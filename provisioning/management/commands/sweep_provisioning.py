"""One pass of the sweeper: resolve the runs no worker will finish. Prints what it did; exit 0."""

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils import timezone

from provisioning.models import Onboarding, ProvisioningRun
from provisioning.recovery import diagnose, sweep


class Command(BaseCommand):
    help = "Find runs stuck past their deadline or never enqueued, and resume or mark them (one pass)."

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="only say what is wrong; change nothing")

    def handle(self, *args, dry_run=False, **options):
        active = Onboarding.objects.filter(run_id__isnull=False).select_related("tenant").order_by("id")
        self.stdout.write(
            f"sweeping {active.count()} onboarding(s) with a run in charge (step deadline "
            f"{settings.SWEEP_STEP_DEADLINE} s, stall deadline {settings.SWEEP_STALL_DEADLINE} s, enqueue grace "
            f"{settings.SWEEP_ENQUEUE_GRACE} s)"
        )
        if dry_run:
            now, found = timezone.now(), 0
            runs = ProvisioningRun.objects.in_bulk([ob.run_id for ob in active])
            for onboarding in active:
                run = runs.get(onboarding.run_id)
                problem = run and diagnose(onboarding, run, now=now)
                if problem:
                    found += 1
                    self.stdout.write(f"{onboarding.tenant.slug}: {problem.kind}: {problem.detail}")
            self.stdout.write(f"dry run: {found} to resolve, nothing changed")
            return
        actions = sweep()
        for action in actions:
            self.stdout.write(str(action))
        counts = {kind: sum(1 for a in actions if a.action == kind) for kind in ("resumed", "marked", "ended", "left")}
        self.stdout.write("done: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
