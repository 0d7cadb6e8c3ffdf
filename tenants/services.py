"""Tenant services: creating a tenant validates it once, here, for the CLI, the API and the admin alike."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from moran.errors import InvalidInput
from provisioning.currencies import ISO_4217
from provisioning.webhooks.targets import WebhookTargetRefused, webhook_url_check
from tenants.models import EngineConnection, Tenant


def engine_get(*, name: str | None = None) -> EngineConnection:
    """The named engine connection, or the default one. The default sandbox connection is made on first use."""
    name = name or settings.DEFAULT_ENGINE
    if name == "sandbox":
        engine, _ = EngineConnection.objects.get_or_create(
            name="sandbox", defaults={"kind": EngineConnection.Kind.SANDBOX}
        )
        return engine
    try:
        return EngineConnection.objects.get(name=name)
    except EngineConnection.DoesNotExist:
        raise InvalidInput(f"Unknown engine '{name}'", fields={"engine": [f"Unknown engine '{name}'"]}) from None


def tenant_validate(tenant: Tenant) -> None:
    errors: dict[str, list[str]] = {}
    try:
        tenant.full_clean(exclude=["engine", "owner"])
    except ValidationError as exc:
        errors.update({k: [str(m) for m in v] for k, v in exc.message_dict.items()})
    if tenant.currency not in ISO_4217:
        errors.setdefault("currency", []).append(f"'{tenant.currency}' is not an ISO 4217 currency code")
    for field in ("extra_cost_centers", "extra_warehouses"):
        values = getattr(tenant, field)
        if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() and " - " not in v for v in values):
            errors.setdefault(field, []).append("A list of plain names (without ' - ABBR')")
    if tenant.webhook_url and "webhook_url" not in errors:
        try:
            webhook_url_check(tenant.webhook_url)
        except WebhookTargetRefused as exc:
            errors["webhook_url"] = [f"Not an allowed webhook target: {exc}"]
    if errors:
        raise InvalidInput(invalid_message(errors), fields=errors)


def invalid_message(errors: dict[str, list[str]]) -> str:
    return "Invalid tenant: " + "; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())


def tenant_build(
    *,
    slug: str,
    company_name: str,
    abbr: str,
    currency: str,
    country: str,
    admin_email: str,
    name: str = "",
    engine: EngineConnection | None = None,
    owner=None,
    admin_first_name: str = "",
    extra_cost_centers: list[str] | None = None,
    extra_warehouses: list[str] | None = None,
    webhook_url: str | None = None,
    allow_restricting_existing_admin: bool = False,
) -> Tenant:
    """An unsaved, normalised tenant: what ``tenant_create`` would save (batches compare and validate with it)."""
    return Tenant(
        slug=(slug or "").strip(),
        name=(name or company_name or "").strip(),
        company_name=(company_name or "").strip(),
        abbr=(abbr or "").strip(),
        currency=(currency or "").strip().upper(),
        country=(country or "").strip(),
        admin_email=(admin_email or "").strip().lower(),
        admin_first_name=(admin_first_name or "").strip(),
        extra_cost_centers=list(extra_cost_centers or []),
        extra_warehouses=list(extra_warehouses or []),
        engine=engine or engine_get(),
        owner=owner,
        webhook_url=(webhook_url or "").strip() or None,
        allow_restricting_existing_admin=bool(allow_restricting_existing_admin),
    )


def tenant_create(
    *,
    slug: str,
    company_name: str,
    abbr: str,
    currency: str,
    country: str,
    admin_email: str,
    name: str = "",
    engine: EngineConnection | None = None,
    owner=None,
    admin_first_name: str = "",
    extra_cost_centers: list[str] | None = None,
    extra_warehouses: list[str] | None = None,
    webhook_url: str | None = None,
    allow_restricting_existing_admin: bool = False,
) -> Tenant:
    """Create a tenant and its onboarding (PENDING). Provisioning starts with ``onboarding_start``."""
    from provisioning.runs import onboarding_create

    tenant = tenant_build(
        slug=slug,
        company_name=company_name,
        abbr=abbr,
        currency=currency,
        country=country,
        admin_email=admin_email,
        name=name,
        engine=engine,
        owner=owner,
        admin_first_name=admin_first_name,
        extra_cost_centers=extra_cost_centers,
        extra_warehouses=extra_warehouses,
        webhook_url=webhook_url,
        allow_restricting_existing_admin=allow_restricting_existing_admin,
    )
    tenant_validate(tenant)
    if tenant.engine.kind == EngineConnection.Kind.NULL and not settings.NULL_ENGINE_ALLOWED:
        message = f"Engine '{tenant.engine.name}' is a null engine: it provisions nothing (benchmarks only)"
        raise InvalidInput(message, fields={"engine": [message]})
    try:
        with transaction.atomic():
            tenant.save()
            onboarding_create(tenant=tenant)
    except IntegrityError:
        clashes = {}
        if Tenant.objects.filter(slug=tenant.slug).exists():
            clashes["slug"] = [f"A tenant '{tenant.slug}' already exists"]
        if Tenant.objects.filter(engine=tenant.engine, company_name=tenant.company_name).exists():
            clashes["company_name"] = [f"Company '{tenant.company_name}' already belongs to a tenant of this engine"]
        if Tenant.objects.filter(engine=tenant.engine, abbr=tenant.abbr).exists():
            clashes["abbr"] = [f"Abbreviation '{tenant.abbr}' already belongs to a tenant of this engine"]
        clashes = clashes or {"slug": ["A tenant with these details already exists"]}
        raise InvalidInput(invalid_message(clashes), fields=clashes) from None
    return tenant


def tenant_allow_restricting_existing_admin(*, tenant: Tenant, allow: bool = True) -> Tenant:
    """Let (or stop letting) step 8 restrict the tenant's admin user when that user existed in the engine before Moran
    and could see every company. An operator's explicit choice, per tenant."""
    Tenant.objects.filter(pk=tenant.pk).update(allow_restricting_existing_admin=allow)
    tenant.allow_restricting_existing_admin = allow
    return tenant
