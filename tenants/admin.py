"""Tenants and engine connections in the operators' console.

A tenant is created through ``tenant_create`` (the API's validation) and its provisioning starts through
``onboarding_start`` (the run is enqueued after the admin's transaction commits). An engine connection's secret is
write-only: the form has a "set / change" password field that is never rendered back, and no page shows the stored
value.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.options import IS_POPUP_VAR
from django.db.models import Count
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from moran.admin_lookups import SecretLookupGuard
from moran.errors import DomainError, InvalidInput
from moran.paging import KeysFirstPaginator
from provisioning.admin import progress_bar, status_badge
from provisioning.capacity import engine_slots_in_use
from provisioning.engines.connections import engine_connection_test
from provisioning.models import Onboarding, ProvisioningRun, StepLog
from provisioning.services import onboarding_start
from tenants.models import EngineConnection, Tenant
from tenants.services import tenant_create, tenant_validate


# --- engine connections ---------------------------------------------------------------------------------------
class EngineConnectionForm(forms.ModelForm):
    base_url = forms.URLField(
        required=False, assume_scheme="https", help_text="e.g. https://erp.example.com (ERPNext only)"
    )
    new_api_secret = forms.CharField(
        label="API secret",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Set or change the secret. Leave blank to keep the current one; it is never shown.",
    )
    clear_api_secret = forms.BooleanField(label="Remove the stored secret", required=False)
    max_concurrency = forms.IntegerField(
        label="Max concurrency",
        required=False,
        min_value=1,
        max_value=64,
        help_text="Steps of this engine in flight at once, across every worker (company creation: one at a time). "
        "Leave blank to keep the current value.",
    )

    class Meta:
        model = EngineConnection
        # Listed, not excluded: a field added to the model later must not appear here by accident. Never api_secret.
        fields = [
            "name",
            "kind",
            "base_url",
            "api_key",
            "verify_tls",
            "connect_timeout",
            "read_timeout",
            "max_concurrency",
        ]

    def clean_kind(self):
        kind = self.cleaned_data.get("kind")
        if kind == EngineConnection.Kind.NULL and not settings.NULL_ENGINE_ALLOWED:
            raise forms.ValidationError("The null engine provisions nothing: it is for benchmarks only.")
        return kind

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("new_api_secret") and cleaned.get("clear_api_secret"):
            raise forms.ValidationError("Either set a new secret or remove the stored one, not both.")
        return cleaned

    def clean_max_concurrency(self):
        # Blank keeps what the engine has (a new one gets the model's default).
        value = self.cleaned_data.get("max_concurrency")
        return value if value is not None else self.instance.max_concurrency

    def save(self, commit=True):
        if self.cleaned_data.get("new_api_secret"):
            self.instance.api_secret = self.cleaned_data["new_api_secret"]
        elif self.cleaned_data.get("clear_api_secret"):
            self.instance.api_secret = ""
        return super().save(commit)


def report_connection_test(request, connection: EngineConnection) -> None:
    ok, message = engine_connection_test(connection=connection)
    messages.add_message(request, messages.SUCCESS if ok else messages.ERROR, message)


@admin.register(EngineConnection)
class EngineConnectionAdmin(SecretLookupGuard, admin.ModelAdmin):
    form = EngineConnectionForm
    list_display = [
        "name",
        "kind",
        "base_url",
        "api_key",
        "secret_state",
        "verify_tls",
        "slots_col",
        "tenant_count",
        "updated_at",
    ]
    list_filter = ["kind"]
    search_fields = ["name", "base_url"]
    actions = ["test_connection_action"]
    change_form_template = "admin/tenants/engineconnection/change_form.html"
    fieldsets = [
        (None, {"fields": ["name", "kind", "base_url", "verify_tls", "connect_timeout", "read_timeout"]}),
        ("Capacity", {"fields": ["max_concurrency", "slots_col"]}),
        ("Credentials", {"fields": ["api_key", "secret_state", "new_api_secret", "clear_api_secret"]}),
        ("Record", {"fields": ["created_at", "updated_at"]}),
    ]
    readonly_fields = ["secret_state", "slots_col", "created_at", "updated_at"]

    class Media:
        css = {"all": ["provisioning/admin.css"]}

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(tenant_total=Count("tenants"))

    @admin.display(description="secret stored")
    def secret_state(self, obj):
        # Whether one is stored, never what it is.
        return "set" if obj and obj.has_api_secret else "not set"

    def get_changelist_instance(self, request):
        changelist = super().get_changelist_instance(request)
        # One read of the lock table for the whole page, not one per engine.
        changelist.result_list = list(changelist.result_list)
        in_use = engine_slots_in_use(changelist.result_list)
        for engine in changelist.result_list:
            engine.slots_now = in_use.get(engine.pk)
        return changelist

    @admin.display(description="slots in use")
    def slots_col(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        in_use = obj.slots_now if hasattr(obj, "slots_now") else engine_slots_in_use([obj]).get(obj.pk)
        if in_use is None:  # the embedded mode (SQLite) runs one step at a time: no slots to count
            return f"max {obj.max_concurrency}"
        return f"{in_use} of {obj.max_concurrency}"

    @admin.display(description="tenants", ordering="tenant_total")
    def tenant_count(self, obj):
        return obj.tenant_total

    # It calls the engine with the stored credentials: for those who may change the connection, not view-only users.
    @admin.action(description="Test connection (run the engine check)", permissions=["change"])
    def test_connection_action(self, request, queryset):
        for connection in queryset:
            report_connection_test(request, connection)

    def get_urls(self):
        return [
            path(
                "<int:object_id>/test/",
                self.admin_site.admin_view(require_POST(self.test_view)),
                name="tenants_engineconnection_test",
            ),
            *super().get_urls(),
        ]

    def test_view(self, request, object_id):
        connection = get_object_or_404(EngineConnection, pk=object_id)
        if not self.has_change_permission(request, connection):
            messages.error(request, "You may not do that.")
        else:
            report_connection_test(request, connection)
        return HttpResponseRedirect(reverse("admin:tenants_engineconnection_change", args=[connection.pk]))


# --- tenants ----------------------------------------------------------------------------------------------------
class NameListField(forms.CharField):
    """The tenant's extra cost centers / warehouses: one plain name a line (the API takes a JSON list)."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 40})

    def prepare_value(self, value):
        return "\n".join(value) if isinstance(value, list | tuple) else value

    def to_python(self, value):
        if isinstance(value, list | tuple):
            return list(value)
        return [line.strip() for line in (value or "").splitlines() if line.strip()]


CREATE_FIELDS = [
    "slug",
    "name",
    "company_name",
    "abbr",
    "currency",
    "country",
    "admin_email",
    "admin_first_name",
    "extra_cost_centers",
    "extra_warehouses",
    "engine",
    "owner",
    "webhook_url",
    "allow_restricting_existing_admin",
]
# What the engine already holds under these values: fixed once the tenant exists.
FIXED_AFTER_CREATE = ["slug", "company_name", "abbr", "currency", "country", "engine"]


class TenantForm(forms.ModelForm):
    webhook_url = forms.URLField(
        assume_scheme="https",
        max_length=500,
        required=False,
        empty_value=None,
        help_text="Called when the onboarding ends: https, a public address. Empty: the global MORAN_WEBHOOK_URL.",
    )
    extra_cost_centers = NameListField(required=False, help_text="One name a line, without ' - ABBR'.")
    extra_warehouses = NameListField(required=False, help_text="One name a line, without ' - ABBR'.")

    class Meta:
        model = Tenant
        fields = CREATE_FIELDS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "name" in self.fields:
            self.fields["name"].required = False
            self.fields["name"].help_text = "Display name; the company name when blank."
        if "engine" in self.fields and not self.instance.pk:
            self.fields["engine"].initial = EngineConnection.objects.filter(name=settings.DEFAULT_ENGINE).first()

    # The same normalisation as tenant_create.
    def clean_currency(self):
        return (self.cleaned_data.get("currency") or "").strip().upper()

    def clean_admin_email(self):
        return (self.cleaned_data.get("admin_email") or "").strip().lower()

    def clean(self):
        cleaned = super().clean()
        if "name" in self.fields and not cleaned.get("name"):
            cleaned["name"] = cleaned.get("company_name") or ""
        return cleaned

    def _post_clean(self):
        # The model's own validation first (fields, unique slug, one company / abbreviation per engine) ...
        super()._post_clean()
        # ... then the API's rules on the same instance (ISO 4217 currency, plain names in the lists), reported on
        # the fields that have no error yet, so a message is never shown twice.
        try:
            tenant_validate(self.instance)
        except InvalidInput as exc:
            for field, field_messages in exc.fields.items():
                if field in self.errors:
                    continue
                for message in field_messages:
                    self.add_error(field if field in self.fields else None, message)


@admin.register(Tenant)
class TenantAdmin(SecretLookupGuard, admin.ModelAdmin):
    form = TenantForm
    list_display = ["slug", "name", "company_name", "abbr", "engine", "status", "onboarding_col", "created_at"]
    list_filter = ["status", "engine", "onboarding__status"]
    search_fields = ["name", "slug", "company_name"]
    list_select_related = ["engine", "onboarding"]
    # Newest first, read off the (created_at, id) index; a deep page walks it for its keys only.
    ordering = ["-created_at", "-id"]
    list_per_page = 50
    list_max_show_all = 100
    # A filtered page counts its matches once, not the whole table a second time.
    show_full_result_count = False
    paginator = KeysFirstPaginator

    def get_queryset(self, request):
        # The pages show the onboarding's status and progress, never its step states: leave that JSON unread. (A
        # queryset that selects related rows already is not given list_select_related: name them all here.)
        return (
            super()
            .get_queryset(request)
            .select_related(*self.list_select_related)
            .defer("onboarding__provisioning_steps")
        )

    def has_delete_permission(self, request, obj=None):
        # Not while a run is in charge: its next step would find no onboarding. (Deleting a tenant removes nothing
        # from its engine.)
        onboarding = getattr(obj, "onboarding", None) if obj is not None else None
        if onboarding is not None and onboarding.run_id is not None:
            return False
        return super().has_delete_permission(request, obj)

    def get_deleted_objects(self, objs, request):
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        # The onboarding, its runs and log lines go with their tenant; their admins are read-only (no delete permission
        # for anyone), which must not stop the tenant's own deletion.
        cascaded = {model._meta.verbose_name for model in (Onboarding, ProvisioningRun, StepLog)}
        return deleted, model_count, perms_needed - cascaded, protected

    def get_actions(self, request):
        # One at a time, from the tenant's page, where the check above applies.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def get_fields(self, request, obj=None):
        return CREATE_FIELDS if obj is None else [*CREATE_FIELDS, "provisioning", "status", "created_at"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else [*FIXED_AFTER_CREATE, "provisioning", "status", "created_at"]

    @admin.display(description="provisioning", ordering="onboarding__status")
    def onboarding_col(self, obj):
        onboarding = getattr(obj, "onboarding", None)
        if onboarding is None:
            return "—"
        url = reverse("admin:provisioning_onboarding_change", args=[onboarding.pk])
        return format_html(
            '<a href="{}">{}</a> {}',
            url,
            status_badge(onboarding.status, onboarding.get_status_display()),
            progress_bar(onboarding.steps_completed, onboarding.progress),
        )

    @admin.display(description="provisioning")
    def provisioning(self, obj):
        return self.onboarding_col(obj)

    def save_model(self, request, obj, form, change):
        if change:
            obj.save()
            return
        # Created by the service the API uses (validation, tenant + onboarding in one transaction), then started.
        # The run is enqueued when the admin's transaction commits, so the worker sees the committed rows.
        # The form ran the same validation; only a concurrent create of the same slug / company can still fail here.
        tenant = tenant_create(**{field: form.cleaned_data.get(field) for field in CREATE_FIELDS})
        obj.pk = tenant.pk
        obj._state.adding = False
        obj._state.db = tenant._state.db
        try:
            onboarding_start(onboarding=tenant.onboarding, requested_by=f"admin:{request.user.get_username()}")
        except DomainError as exc:
            messages.warning(request, f"Provisioning not started for {tenant.slug}: {exc.message}")
        else:
            messages.info(request, f"Provisioning started: {tenant.slug}")

    def response_add(self, request, obj, post_url_continue=None):
        response = super().response_add(request, obj, post_url_continue)
        if any(key in request.POST for key in ("_addanother", "_continue", IS_POPUP_VAR)):
            return response
        # Plain "Save": to the provisioning page, where the run can be watched as it moves.
        onboarding = Onboarding.objects.filter(tenant_id=obj.pk).values_list("pk", flat=True).first()
        if onboarding is None:
            return response
        return HttpResponseRedirect(reverse("admin:provisioning_onboarding_change", args=[onboarding]))

    class Media:
        css = {"all": ["provisioning/admin.css"]}
