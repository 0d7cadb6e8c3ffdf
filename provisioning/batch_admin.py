"""The batches in the operators' console: each batch's progress (tenants per status, a progress bar), its tenants,
and a "continue the PARTIAL ones" action that calls :func:`provisioning.batches.batch_continue_unfinished`.

Batches are made by the CLI and the API, and changed only by the services: view-only here. The action is gated on
``provisioning.change_onboarding``, like the onboarding console's buttons.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from provisioning.batches import batch_continue_unfinished, batch_list_with_counts
from provisioning.models import BatchItem, OnboardingStatus, ProvisioningBatch

#: the onboarding console's colours, per status.
COLOURS = {
    OnboardingStatus.COMPLETED: "#15803d",
    OnboardingStatus.IN_PROGRESS: "#2563eb",
    OnboardingStatus.PENDING: "#6b7280",
    OnboardingStatus.PARTIAL: "#c2410c",
    OnboardingStatus.FAILED: "#b91c1c",
    OnboardingStatus.CANCELLED: "#4b5563",
}


def batch_progress_bar(done: int, total: int):
    percent = round(100 * done / total) if total else 100
    return format_html(
        '<span class="moran-progress" title="{} %"><span class="moran-progress-fill" style="width:{}%"></span></span>'
        ' <span class="moran-progress-text">{}/{} &middot; {} %</span>',
        percent,
        percent,
        done,
        total,
        percent,
    )


class BatchItemInline(admin.TabularInline):
    model = BatchItem
    extra = 0
    can_delete = False
    fields = ["line", "tenant_link", "action", "status_col", "progress_col", "current_step_col", "started_at"]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("tenant__onboarding")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="tenant")
    def tenant_link(self, obj):
        url = reverse("admin:provisioning_onboarding_change", args=[obj.tenant.onboarding.pk])
        return format_html('<a href="{}">{}</a>', url, obj.tenant.slug)

    @admin.display(description="status")
    def status_col(self, obj):
        status = obj.tenant.onboarding.status
        return format_html(
            '<span class="moran-badge" data-status="{}" style="background:{}">{}</span>',
            status,
            COLOURS.get(status, "#6b7280"),
            status,
        )

    @admin.display(description="progress")
    def progress_col(self, obj):
        return f"{obj.tenant.onboarding.progress} %"

    @admin.display(description="current step")
    def current_step_col(self, obj):
        return obj.tenant.onboarding.current_step or "—"


class ProvisioningBatchAdmin(admin.ModelAdmin):
    list_display = ["batch_col", "created_at", "requested_by", "engine", "concurrency", "progress_col", "counts_col"]
    list_filter = ["engine", "source"]
    fields = ["id", "requested_by", "source", "filename", "engine", "concurrency", "created_at", "finished_at"]
    readonly_fields = fields
    inlines = [BatchItemInline]
    actions = ["continue_unfinished_action"]

    class Media:
        css = {"all": ["provisioning/admin.css"]}

    def get_queryset(self, request):
        # Counts per status in the same query as the batches: the page's query count does not grow with them.
        return batch_list_with_counts()

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_operate_permission(self, request):
        return request.user.has_perm("provisioning.change_onboarding")

    @admin.display(description="batch", ordering="created_at")
    def batch_col(self, obj):
        state = "finished" if obj.finished_at else "running"
        return format_html("<strong>{}</strong><br><small>{}</small>", str(obj.pk)[:8], state)

    @admin.display(description="progress")
    def progress_col(self, obj):
        ended = obj.n_completed + obj.n_partial + obj.n_failed + obj.n_cancelled
        return batch_progress_bar(ended, obj.n_total)

    @admin.display(description="tenants per status")
    def counts_col(self, obj):
        counts = [(status, getattr(obj, f"n_{status.lower()}")) for status in COLOURS]
        return format_html_join(
            " ",
            '<span class="moran-badge" data-status="{}" style="background:{}">{} {}</span>',
            ((status, COLOURS[status], status, n) for status, n in counts if n),
        )

    @admin.action(
        description="Continue the PARTIAL (and FAILED, CANCELLED) tenants of selected", permissions=["operate"]
    )
    def continue_unfinished_action(self, request, queryset: QuerySet):
        for batch in queryset:
            count = batch_continue_unfinished(batch=batch)
            short = str(batch.pk)[:8]
            if count:
                messages.success(request, f"Batch {short}: {count} tenant(s) continued, {batch.concurrency} at a time")
            else:
                messages.warning(request, f"Batch {short}: no PARTIAL, FAILED or CANCELLED tenant to continue")


admin.site.register(ProvisioningBatch, ProvisioningBatchAdmin)
