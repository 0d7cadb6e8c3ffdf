"""Provision many tenants from a CSV file, at most K at once, and watch them.

Exit codes: 0 every tenant ended COMPLETED (or ``--plan`` / ``--no-wait`` went through); 1 some did not (a table of
them is printed) or the wait timed out; 2 bad input: every problem of the file on stderr, with its line, and nothing
created.

The whole file is validated before anything is written. Running the same file again is safe: COMPLETED tenants are
left alone, PARTIAL / FAILED / CANCELLED ones continued, IN_PROGRESS ones waited for, missing ones created.
With ``--no-wait`` the command starts the first K and returns; the batch goes on without it (each run's end starts
the next tenant; beat's periodic pass is the safety net): follow it with ``GET /api/tenants/batch/<id>`` or the admin.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from moran.errors import DomainError
from provisioning.batches import (
    DEFAULT_CONCURRENCY,
    batch_advance,
    batch_create,
    batch_get,
    batch_plan,
    batch_rows_from_csv,
    batch_start,
    batch_status,
    batch_validate,
)
from provisioning.management.progress import interactive
from provisioning.models import BatchItem, OnboardingStatus
from tenants.services import engine_get

EXIT_OK, EXIT_NOT_COMPLETED, EXIT_BAD_INPUT = 0, 1, 2
SHOWN_STATUSES = (
    OnboardingStatus.COMPLETED,
    OnboardingStatus.IN_PROGRESS,
    OnboardingStatus.PENDING,
    OnboardingStatus.PARTIAL,
    OnboardingStatus.FAILED,
    OnboardingStatus.CANCELLED,
)


class Command(BaseCommand):
    help = "Create and provision the tenants of a CSV file, at most K at once, with a live progress display."

    def add_arguments(self, parser):
        parser.add_argument("file", help="CSV: slug,company,abbr,currency,country,admin_email[,name,...]")
        parser.add_argument("--engine", default=None, help="engine connection name (default: the default engine)")
        parser.add_argument(
            "--concurrency",
            type=int,
            default=DEFAULT_CONCURRENCY,
            metavar="K",
            help="tenants provisioning at once (default %(default)s; the engine's own cap applies on top)",
        )
        parser.add_argument("--sandbox-latency", type=int, metavar="MS", help="sandbox: add MS to every engine call")
        parser.add_argument("--plan", action="store_true", help="print what would be done per tenant; writes nothing")
        parser.add_argument("--no-wait", action="store_true", help="start the first K and return")
        parser.add_argument(
            "--timeout", type=float, default=3600, help="seconds to wait for the end (default %(default)s)"
        )

    def handle(self, *args, **opts):
        loggers = [logging.getLogger(name) for name in ("moran", "celery")]
        levels = [logger.level for logger in loggers]
        if opts["verbosity"] < 2:
            for logger in loggers:  # the progress display says it all
                logger.setLevel(logging.CRITICAL)
        try:
            code = self._handle(opts)
        except DomainError as exc:
            self._problems(exc)
            code = EXIT_BAD_INPUT
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
        sys.exit(code)

    def _problems(self, exc: DomainError) -> None:
        if not exc.fields:
            self.stderr.write(f"error: {exc.message}")
            return
        for where, messages in exc.fields.items():
            for message in messages:
                self.stderr.write(f"error: {where}: {message}")
        self.stderr.write("nothing was created")

    def _handle(self, opts) -> int:
        path = Path(opts["file"])
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DomainError(f"cannot read {path}: {exc}") from None
        rows = batch_rows_from_csv(text=text)
        engine = engine_get(name=opts["engine"])
        validated = batch_validate(rows=rows, engine=engine)
        if opts["plan"]:
            return self._plan(validated, engine)
        batch = batch_create(
            rows=validated,
            engine=engine,
            concurrency=opts["concurrency"],
            requested_by="cli",
            filename=path.name,
            sandbox_latency_ms=opts["sandbox_latency"],
        )
        actions = {a: batch.items.filter(action=a).count() for a in BatchItem.Action.values}
        self.stdout.write(
            f"batch {batch.pk}: {sum(actions.values())} tenants on engine {engine.name}, {batch.concurrency} at a time "
            f"({', '.join(f'{n} {a}' for a, n in actions.items() if n)})"
        )
        if opts["no_wait"]:
            started = batch_start(batch=batch)
            self.stdout.write(
                f"started {len(started)}; the others start as runs end. Follow it with "
                f"GET /api/tenants/batch/{batch.pk} or the admin's batches page."
            )
            return EXIT_OK
        status = self._watch(batch, timeout=opts["timeout"])
        return self._summary(status)

    def _plan(self, validated, engine) -> int:
        plan = batch_plan(rows=validated)
        self.stdout.write(f"plan for {len(plan)} tenants on engine {engine.name}:")
        for entry in plan:
            now = entry.status or "new"
            self.stdout.write(f"  {entry.row.where:<9} {entry.row.tenant.slug:<30} {entry.action:<9} ({now})")
        totals = {a: sum(1 for e in plan if e.action == a) for a in BatchItem.Action.values}
        self.stdout.write(", ".join(f"{a}: {n}" for a, n in totals.items()))
        self.stdout.write("plan only: nothing was written")
        return EXIT_OK

    def _watch(self, batch, *, timeout: float) -> dict:
        display = ProgressDisplay.for_stream(getattr(self.stdout, "_out", self.stdout))
        deadline = time.monotonic() + timeout
        with display:
            while True:
                # Safe to call as often as we like (it locks the batch); the runs' ends advance it as well.
                batch_advance(batch_id=batch.pk)
                status = batch_status(batch=batch_get(batch_id=batch.pk))
                display.update(status)
                if status["finished"] or time.monotonic() >= deadline:
                    return status
                if not settings.CELERY_TASK_ALWAYS_EAGER:
                    time.sleep(0.5)

    def _summary(self, status: dict) -> int:
        counts = ", ".join(f"{s} {status['counts'][s]}" for s in SHOWN_STATUSES if status["counts"][s])
        self.stdout.write(f"batch {status['id']}: {status['done']}/{status['total']} done; {counts}")
        if status["counts"][OnboardingStatus.COMPLETED] == status["total"]:
            return EXIT_OK
        if not status["finished"]:
            self.stdout.write(f"still in progress: follow it with GET /api/tenants/batch/{status['id']}")
        not_completed = [t for t in status["tenants"] if t["status"] != OnboardingStatus.COMPLETED]
        errors = {f["tenant"]: f["error"] for f in status["failures"]}
        self.stdout.write(f"{'slug':<30} {'status':<12} {'step':<28} error")
        for t in not_completed:
            error = errors.get(t["tenant"])
            text = f"{error['type']}: {error['message']}" if error else ""
            self.stdout.write(f"{t['tenant']:<30} {t['status']:<12} {t['current_step'] or '-':<28} {text}")
        return EXIT_NOT_COMPLETED


class ProgressDisplay:
    """Plain lines (one each time the counts change): for logs, pipes and CI."""

    def __init__(self, stream):
        self.stream = stream
        self.started = time.monotonic()
        self.last = None

    @classmethod
    def for_stream(cls, stream) -> ProgressDisplay:
        return RichProgressDisplay(stream) if interactive(stream) else cls(stream)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def counts_text(self, status: dict) -> str:
        return " · ".join(f"{s} {status['counts'][s]}" for s in SHOWN_STATUSES if status["counts"][s])

    def eta(self, status: dict) -> str:
        done, total = status["done"], status["total"]
        if not done or done == total:
            return ""
        left = (time.monotonic() - self.started) / done * (total - done)
        return f" · ETA {int(left // 60)}:{int(left % 60):02d}"

    def update(self, status: dict) -> None:
        key = (status["done"], tuple(status["counts"].values()))
        if key == self.last:
            return
        self.last = key
        self.stream.write(
            f"[{status['done']}/{status['total']}] {status['progress']:>3} % {self.counts_text(status)}"
            f"{self.eta(status)}\n"
        )
        self.stream.flush()


class RichProgressDisplay(ProgressDisplay):
    """A live progress bar in a terminal: done/total, counts per status, elapsed time and ETA."""

    def __init__(self, stream):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        super().__init__(stream)
        self.progress = Progress(
            TextColumn("[bold]batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=stream),
        )
        self.task = None

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
        return False

    def update(self, status: dict) -> None:
        if self.task is None:
            self.task = self.progress.add_task("batch", total=status["total"], counts="")
        self.progress.update(self.task, completed=status["done"], counts=self.counts_text(status))
