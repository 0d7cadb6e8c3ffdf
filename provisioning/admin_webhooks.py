"""The webhook deliveries in the console: where each announcement stands, every try it took, and "resend".

Read-only pages; the one action calls :func:`provisioning.webhooks.outbox.webhook_delivery_resend` and is gated on the
``provisioning.change_webhookdelivery`` permission. No page shows a webhook URL: it may carry a token.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html

from moran.errors import DomainError
from moran.paging import KeysFirstPaginator
from provisioning.models import WebhookAttempt, WebhookDelivery
from provisioning.webhooks.outbox import webhook_delivery_resend

DELIVERY_FIELDS = [f.name for f in WebhookDelivery._meta.concrete_fields if f.name != "payload"]

STATE_COLOURS = {
    WebhookDelivery.State.PENDING: "#6b7280",
    WebhookDelivery.State.SENDING: "#2563eb",
    WebhookDelivery.State.DELIVERED: "#15803d",
    WebhookDelivery.State.FAILED: "#b91c1c",
}


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    fields = ["number", "outcome", "status_code", "error", "started_at", "duration_ms", "worker"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["number"]

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "tenant_col",
        "status",
        "state_col",
        "attempts",
        "last_status_code",
        "last_error",
        "delivered_at",
    ]
    list_filter = ["state", "status"]
    search_fields = ["tenant__slug", "=idempotency_key"]
    list_select_related = ["tenant"]
    # Newest first, read off the (created_at, id) index; a deep page walks it for its keys only.
    ordering = ["-created_at", "-id"]
    list_per_page = 50
    list_max_show_all = 100
    # One delivery per ended run: the table grows with every run; a filtered page counts its matches once.
    show_full_result_count = False
    paginator = KeysFirstPaginator
    actions = ["resend_action"]
    inlines = [WebhookAttemptInline]
    fields = [
        "tenant_col",
        "run",
        "event",
        "status",
        "idempotency_key",
        "state_col",
        "attempts",
        "max_attempts",
        "next_attempt_at",
        "claimed_until",
        "last_status_code",
        "last_error",
        "delivered_at",
        "created_at",
        "payload",
    ]
    readonly_fields = fields

    def get_queryset(self, request):
        # Pages show a delivery's tenant by its slug; the payload (only on a delivery's own page) is read when shown.
        return (
            super()
            .get_queryset(request)
            .select_related("tenant")
            .defer("payload")
            .only(*DELIVERY_FIELDS, "tenant__id", "tenant__slug")
        )

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_resend_permission(self, request):
        return request.user.has_perm("provisioning.change_webhookdelivery")

    @admin.display(description="tenant", ordering="tenant__slug")
    def tenant_col(self, obj):
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:tenants_tenant_change", args=[obj.tenant_id]), obj.tenant.slug
        )

    @admin.display(description="state", ordering="state")
    def state_col(self, obj):
        return format_html(
            '<span class="moran-badge" data-state="{}" style="background:{}">{}</span>',
            obj.state,
            STATE_COLOURS.get(obj.state, "#6b7280"),
            obj.get_state_display(),
        )

    @admin.action(description="Resend the selected deliveries", permissions=["resend"])
    def resend_action(self, request, queryset):
        resent, busy = [], []
        for delivery in queryset.select_related("tenant"):
            try:
                webhook_delivery_resend(delivery=delivery)
            except DomainError:
                busy.append(delivery.idempotency_key)
            else:
                resent.append(delivery.idempotency_key)
        if resent:
            messages.success(request, f"Resending {len(resent)} deliver{'y' if len(resent) == 1 else 'ies'}.")
        if busy:
            messages.warning(request, f"Being sent at this moment, left alone: {', '.join(busy)}")

    class Media:
        css = {"all": ["provisioning/admin.css"]}
