"""The operators' console: where every tenant stands, what failed and why, and the buttons that call the services.

Thin on purpose: the actions call the same services as the API and the CLI (``onboarding_continue`` / ``_retry`` /
``_cancel``), and nothing here writes step state. Onboardings are view-only in the Django sense (no change
permission for anyone, so the change form never POSTs a stale ``provisioning_steps`` back); the operator actions are
gated on the real ``provisioning.change_onboarding`` permission instead.
"""

from __future__ import annotations

import datetime as dt
import json

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from moran.errors import DomainError, NoActiveRun, NothingToContinue, RunActive
from moran.paging import KeysFirstPaginator
from provisioning.models import Onboarding, OnboardingStatus, ProvisioningRun, StepAttempt, StepLog
from provisioning.selectors import onboarding_logs, onboarding_status
from provisioning.services import onboarding_cancel, onboarding_continue, onboarding_retry
from provisioning.state import normalised
from provisioning.steps import STEP_BY_NAME, STEP_NAMES, TOTAL_STEPS

RECENT_LOG_LINES = 50

STATUS_COLOURS = {
    OnboardingStatus.PENDING: "#6b7280",
    OnboardingStatus.IN_PROGRESS: "#2563eb",
    OnboardingStatus.COMPLETED: "#15803d",
    OnboardingStatus.PARTIAL: "#c2410c",
    OnboardingStatus.FAILED: "#b91c1c",
    OnboardingStatus.CANCELLED: "#4b5563",
    # step statuses
    "pending": "#9ca3af",
    "running": "#2563eb",
    "retrying": "#7c3aed",
    "waiting": "#0891b2",
    "completed": "#15803d",
    "failed": "#b91c1c",
    "skipped": "#a16207",
}


# --- small display pieces (format_html only: every value is escaped) --------------------------------------------
def status_badge(status: str, label: str | None = None):
    return format_html(
        '<span class="moran-badge" data-status="{}" style="background:{}">{}</span>',
        status,
        STATUS_COLOURS.get(status, "#6b7280"),
        label or status,
    )


def progress_bar(steps_completed: int, progress: int):
    return format_html(
        '<span class="moran-progress" title="{} %"><span class="moran-progress-fill" style="width:{}%"></span></span>'
        ' <span class="moran-progress-text">{}/{} &middot; {} %</span>',
        progress,
        progress,
        steps_completed,
        TOTAL_STEPS,
        progress,
    )


def parse_iso(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def human_duration(start: dt.datetime | None, end: dt.datetime | None, *, running: bool = False) -> str:
    """How long something took; while it still runs, how long so far."""
    if start is None:
        return "—"
    so_far = end is None
    if so_far:
        if not running:
            return "—"
        end = timezone.now()
    seconds = max((end - start).total_seconds(), 0.0)
    if seconds < 10:
        text = f"{seconds:.1f} s"
    elif seconds < 60:
        text = f"{seconds:.0f} s"
    elif seconds < 3600:
        text = f"{int(seconds // 60)} min {int(seconds % 60)} s"
    else:
        text = f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{text} so far" if so_far else text


def compact_time(value: dt.datetime | None) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S") if value else "—"


def last_error(onboarding: Onboarding) -> dict | None:
    """The most recent step error (by when it happened), with its step; from the row already loaded, no query."""
    errors = [
        {"step": name, **entry["error"], "at": entry.get("finished_at") or entry.get("started_at") or ""}
        for name, entry in normalised(onboarding.provisioning_steps).items()
        if entry.get("error")
    ]
    return max(errors, key=lambda e: e["at"]) if errors else None


def error_text(error: dict) -> str:
    status = f" [{error['engine_status']}]" if error.get("engine_status") else ""
    return f"{error.get('type') or 'Error'}{status}: {error.get('message') or ''}"


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- what "continue", "retry all" and "cancel" report ----------------------------------------------------------
OPERATIONS = {
    "continue": (onboarding_continue, "continue started"),
    "retry": (onboarding_retry, "retry of all steps started"),
    "cancel": (onboarding_cancel, "run cancelled"),
}
OUTCOME_LABELS = {
    RunActive: "already running",
    NothingToContinue: "nothing to continue (every step is completed)",
    NoActiveRun: "no run is active (nothing to cancel)",
}


def operate(request: HttpRequest, operation: str, onboardings) -> None:
    """Call the service once per onboarding and report per tenant, grouped by outcome, with Django messages."""
    service, done_label = OPERATIONS[operation]
    requested_by = f"admin:{request.user.get_username()}"
    outcomes: dict[tuple[int, str], list[str]] = {}
    for onboarding in onboardings:
        slug = onboarding.tenant.slug
        try:
            service(onboarding=onboarding, requested_by=requested_by)
        except DomainError as exc:
            label = next((text for cls, text in OUTCOME_LABELS.items() if isinstance(exc, cls)), exc.message)
            outcomes.setdefault((messages.WARNING, label), []).append(slug)
        else:
            outcomes.setdefault((messages.SUCCESS, done_label), []).append(slug)
    for (level, label), slugs in outcomes.items():
        # Only the first letter: a service's own message may hold names whose case matters.
        messages.add_message(request, level, f"{label[:1].upper()}{label[1:]}: {', '.join(sorted(slugs))}")


def may_operate(request: HttpRequest) -> bool:
    return request.user.has_perm("provisioning.change_onboarding")


class OnboardingAdmin(admin.ModelAdmin):
    list_display = [
        "tenant_col",
        "engine_col",
        "status_col",
        "progress_col",
        "current_step",
        "last_error_col",
        "started_col",
        "finished_col",
        "duration_col",
    ]
    list_display_links = ["tenant_col"]
    list_filter = ["status", "tenant__engine"]
    search_fields = ["tenant__name", "tenant__slug", "tenant__company_name"]
    # Newest activity first: every write through the one writer bumps updated_at (indexed with the id).
    ordering = ["-updated_at", "-id"]
    list_select_related = ["tenant", "tenant__engine"]
    list_per_page = 50
    list_max_show_all = 100
    # A filtered page counts its matches once, not the whole table a second time.
    show_full_result_count = False
    paginator = KeysFirstPaginator
    actions = ["continue_action", "retry_action", "cancel_action"]
    change_form_template = "admin/provisioning/onboarding/change_form.html"
    change_list_template = "admin/provisioning/onboarding/change_list.html"
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "tenant_link",
                    "engine_col",
                    "status_col",
                    "progress_col",
                    "current_step",
                    "run_link",
                    "started_col",
                    "finished_col",
                    "duration_col",
                    "last_error_full",
                ]
            },
        ),
        ("Step state (raw, read-only)", {"classes": ["collapse"], "fields": ["steps_json", "version", "updated_at"]}),
    ]
    # Every field shown is read-only: step state is written by the services alone.
    readonly_fields = [name for _, options in fieldsets for name in options["fields"]]

    class Media:
        css = {"all": ["provisioning/admin.css"]}

    # Onboardings are made with their tenant and changed only by the services: view-only for everyone.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_operate_permission(self, request):
        return may_operate(request)

    # --- columns ----------------------------------------------------------------------------------------------
    @admin.display(description="tenant", ordering="tenant__slug")
    def tenant_col(self, obj):
        return format_html("<strong>{}</strong><br><small>{}</small>", obj.tenant.slug, obj.tenant.company_name)

    @admin.display(description="engine", ordering="tenant__engine__name")
    def engine_col(self, obj):
        engine = obj.tenant.engine
        return format_html('{} <small class="moran-kind">{}</small>', engine.name, engine.get_kind_display())

    @admin.display(description="started", ordering="started_at")
    def started_col(self, obj):
        return compact_time(obj.started_at)

    @admin.display(description="finished", ordering="finished_at")
    def finished_col(self, obj):
        return compact_time(obj.finished_at)

    @admin.display(description="status", ordering="status")
    def status_col(self, obj):
        return status_badge(obj.status, obj.get_status_display())

    @admin.display(description="progress", ordering="progress")
    def progress_col(self, obj):
        return progress_bar(obj.steps_completed, obj.progress)

    @admin.display(description="last error")
    def last_error_col(self, obj):
        error = last_error(obj)
        if error is None:
            return "—"
        text = error_text(error)
        return format_html(
            '<span class="moran-error" title="{}">{}: {}</span>', text, error["step"], truncate(text, 80)
        )

    @admin.display(description="duration")
    def duration_col(self, obj):
        running = obj.status == OnboardingStatus.IN_PROGRESS
        return human_duration(obj.started_at, obj.finished_at, running=running)

    # --- detail fields ------------------------------------------------------------------------------------------
    @admin.display(description="tenant")
    def tenant_link(self, obj):
        url = reverse("admin:tenants_tenant_change", args=[obj.tenant_id])
        return format_html('<a href="{}">{}</a> — {}', url, obj.tenant.slug, obj.tenant.company_name)

    @admin.display(description="run in charge")
    def run_link(self, obj):
        if not obj.run_id:
            return "— (no run is active)"
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:provisioning_provisioningrun_change", args=[obj.run_id]), obj.run_id
        )

    @admin.display(description="last error")
    def last_error_full(self, obj):
        error = last_error(obj)
        return format_html("{}: {}", error["step"], error_text(error)) if error else "—"

    @admin.display(description="provisioning_steps")
    def steps_json(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.provisioning_steps, indent=2, sort_keys=False))

    # --- bulk actions -------------------------------------------------------------------------------------------
    @admin.action(description="Continue selected (from the first step not done)", permissions=["operate"])
    def continue_action(self, request, queryset: QuerySet):
        operate(request, "continue", queryset.select_related("tenant"))

    @admin.action(description="Retry all steps of selected", permissions=["operate"])
    def retry_action(self, request, queryset: QuerySet):
        operate(request, "retry", queryset.select_related("tenant"))

    @admin.action(description="Cancel the active run of selected", permissions=["operate"])
    def cancel_action(self, request, queryset: QuerySet):
        operate(request, "cancel", queryset.select_related("tenant"))

    # --- the detail page: timeline, logs, buttons, and a JSON status for its polling ----------------------------
    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        wrap = self.admin_site.admin_view
        # Before the default URLs, whose "<path:object_id>/" catch-all would swallow these.
        return [
            path("<int:object_id>/status.json", wrap(self.status_view), name=f"{prefix}_status"),
            path(
                "<int:object_id>/operate/<str:operation>/",
                wrap(require_POST(self.operation_view)),
                name=f"{prefix}_operate",
            ),
            *super().get_urls(),
        ]

    def operation_view(self, request, object_id, operation):
        onboarding = get_object_or_404(Onboarding.objects.select_related("tenant"), pk=object_id)
        if operation not in OPERATIONS or not may_operate(request):
            messages.error(request, "You may not do that.")
        else:
            operate(request, operation, [onboarding])
        return HttpResponseRedirect(reverse("admin:provisioning_onboarding_change", args=[onboarding.pk]))

    def status_view(self, request, object_id):
        if not self.has_view_permission(request):
            return JsonResponse({"error": "forbidden"}, status=403)
        onboarding = get_object_or_404(Onboarding.objects.select_related("tenant"), pk=object_id)
        return JsonResponse({**onboarding_status(onboarding=onboarding), "version": onboarding.version})

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # Django's "<path:object_id>/" URL passes any text (".../abc/change/", or ".../abc/status.json" redirected
        # here): anything but an integer is no onboarding, and must not reach the integer primary key as a 500.
        if not str(object_id).isdigit():
            raise Http404("No onboarding has that id")
        onboarding = get_object_or_404(Onboarding.objects.select_related("tenant", "tenant__engine"), pk=object_id)
        status = onboarding_status(onboarding=onboarding)
        in_progress = onboarding.status == OnboardingStatus.IN_PROGRESS
        # Each step's attempts, from their rows (one query): outcome, duration and worker of every try.
        tries: dict[str, list] = {}
        for attempt in StepAttempt.objects.filter(onboarding=onboarding).order_by("id"):
            tries.setdefault(attempt.step, []).append(attempt)
        timeline = []
        for index, step in enumerate(status["steps"]):
            started, finished = parse_iso(step["started_at"]), parse_iso(step["finished_at"])
            timeline.append(
                {
                    "index": index,
                    "name": step["name"],
                    "title": STEP_BY_NAME[step["name"]].title,
                    "optional": step["optional"],
                    "badge": status_badge(step["status"]),
                    "attempts": step["attempts"],
                    "tries": tries.get(step["name"], []),
                    "started_at": started,
                    "finished_at": finished,
                    "duration": human_duration(started, finished, running=step["status"] in ("running", "retrying")),
                    "error": step["error"],
                    "result": json.dumps(step["result"], sort_keys=True) if step["result"] else "",
                    "current": step["name"] == onboarding.current_step,
                }
            )
        logs = list(onboarding_logs(onboarding=onboarding).order_by("-id")[:RECENT_LOG_LINES])[::-1]
        can_operate = may_operate(request)
        context = {
            "timeline": timeline,
            "log_lines": logs,
            "logs_url": reverse("admin:provisioning_steplog_changelist") + f"?onboarding__id__exact={onboarding.pk}",
            "in_progress": in_progress,
            "status_url": reverse("admin:provisioning_onboarding_status", args=[onboarding.pk]),
            "version": onboarding.version,
            "buttons": [
                {
                    "operation": op,
                    "label": label,
                    "url": reverse("admin:provisioning_onboarding_operate", args=[onboarding.pk, op]),
                }
                for op, label, shown in [
                    ("continue", "Continue", not in_progress and onboarding.status != OnboardingStatus.COMPLETED),
                    ("retry", "Retry all", not in_progress),
                    ("cancel", "Cancel run", in_progress),
                ]
                if shown and can_operate
            ],
            "title": f"{onboarding.tenant.slug}: provisioning",
            "subtitle": onboarding.tenant.slug,
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, extra_context=context)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Runs and log lines are records: looked at, never edited here."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ProvisioningRunAdmin(ReadOnlyAdmin):
    list_display = ["id", "tenant_col", "kind", "start_index", "outcome", "requested_by", "created_at", "finished_at"]
    list_filter = ["outcome", "kind"]
    search_fields = ["onboarding__tenant__slug", "id", "requested_by"]
    list_select_related = ["onboarding__tenant"]
    ordering = ["-created_at"]
    paginator = KeysFirstPaginator

    @admin.display(description="tenant", ordering="onboarding__tenant__slug")
    def tenant_col(self, obj):
        url = reverse("admin:provisioning_onboarding_change", args=[obj.onboarding_id])
        return format_html('<a href="{}">{}</a>', url, obj.onboarding.tenant.slug)


class StepNameFilter(admin.SimpleListFilter):
    title = "step"
    parameter_name = "step"

    def lookups(self, request, model_admin):
        return [(name, name) for name in STEP_NAMES]

    def queryset(self, request, queryset):
        return queryset.filter(step=self.value()) if self.value() else queryset


class StepLogAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "tenant_col", "step", "attempt", "level", "message", "run_id"]
    # Filters whose choices are known (no DISTINCT over the whole log), each read off an index (level|step, id).
    list_filter = ["level", StepNameFilter]
    search_fields = ["onboarding__tenant__slug", "message", "=run_id"]
    list_select_related = ["onboarding__tenant"]
    ordering = ["-id"]
    list_per_page = 50
    list_max_show_all = 100
    # The log table grows without bound: no second COUNT(*) over all of it, and deep pages walk the id index.
    show_full_result_count = False
    paginator = KeysFirstPaginator

    def get_queryset(self, request):
        # A line shows its tenant's slug: the onboarding's step states and the tenant's other columns stay unread.
        # (A queryset that selects related rows already is not given list_select_related: name them here.)
        return (
            super()
            .get_queryset(request)
            .select_related("onboarding__tenant")
            .only(*LOG_LINE_FIELDS, "onboarding__id", "onboarding__tenant__id", "onboarding__tenant__slug")
        )

    @admin.display(description="tenant", ordering="onboarding__tenant__slug")
    def tenant_col(self, obj):
        url = reverse("admin:provisioning_onboarding_change", args=[obj.onboarding_id])
        return format_html('<a href="{}">{}</a>', url, obj.onboarding.tenant.slug)


LOG_LINE_FIELDS = [f.name for f in StepLog._meta.concrete_fields]


admin.site.site_header = "Moran provisioning console"
admin.site.site_title = "Moran console"
admin.site.index_title = "Tenants, their provisioning and the engines they live in"

admin.site.register(Onboarding, OnboardingAdmin)
admin.site.register(ProvisioningRun, ProvisioningRunAdmin)
admin.site.register(StepLog, StepLogAdmin)

# The pages of the webhook deliveries and of the batches register themselves.
from provisioning import admin_webhooks, batch_admin  # noqa: E402, F401
