"""One pass of the sweeper: resolve the runs no worker will finish. Prints what it did; exit 0."""

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils import timezone

from provisioning.models import Onboarding
from provisioning.recovery import active_runs, diagnose, liveness, sweep


class Command(BaseCommand):
    help = (
        "Find runs whose worker is gone, whose next message was lost or that never reached the broker, and resume "
        "or mark them (one pass)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="only say what is wrong; change nothing")

    def handle(self, *args, dry_run=False, **options):
        active = Onboarding.objects.filter(run_id__isnull=False).select_related("tenant").order_by("id")
        self.stdout.write(
            f"sweeping {active.count()} onboarding(s) with a run in charge (liveness grace "
            f"{settings.SWEEP_LIVENESS_GRACE} s, idle grace {settings.SWEEP_IDLE_GRACE} s, step deadline "
            f"{settings.SWEEP_STEP_DEADLINE} s, stall deadline {settings.SWEEP_STALL_DEADLINE} s, enqueue grace "
            f"{settings.SWEEP_ENQUEUE_GRACE} s)"
        )
        if dry_run:
            now, found = timezone.now(), 0
            pairs = active_runs()
            live = liveness(pairs, now=now)
            for onboarding, run in pairs:
                problem = diagnose(onboarding, run, now=now, live=live)
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
