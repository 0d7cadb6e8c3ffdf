"""Who a tenant is and which engine it lives in."""

import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from moran.encryption import secret_decrypt, secret_encrypt


class EngineConnection(models.Model):
    """Where tenants are provisioned: a real ERPNext site, or the built-in sandbox.

    ``api_secret`` is write-only: no API, admin page, log line or error message ever shows it. It is stored encrypted
    (``api_secret_encrypted``, a Fernet token under ``MORAN_SECRET_KEYS``); read and set it only through the
    ``api_secret`` property, which decrypts and encrypts. No query may filter on either (the admin refuses it).
    """

    class Kind(models.TextChoices):
        ERPNEXT = "erpnext", "ERPNext"
        SANDBOX = "sandbox", "Sandbox"
        # Answers everything at no cost and provisions nothing: benchmarks only (see provisioning.engines.null).
        NULL = "null", "Null (benchmarks only)"

    name = models.SlugField(max_length=64, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.SANDBOX)
    base_url = models.URLField(blank=True, help_text="e.g. https://erp.example.com (ERPNext only)")
    api_key = models.CharField(max_length=255, blank=True)
    api_secret_encrypted = models.TextField(blank=True, default="", editable=False)
    verify_tls = models.BooleanField(default=True)
    connect_timeout = models.FloatField(default=5.0)
    read_timeout = models.FloatField(default=60.0)
    max_concurrency = models.PositiveSmallIntegerField(
        default=4,
        validators=[MinValueValidator(1), MaxValueValidator(64)],
        help_text="Steps of this engine in flight at once, across every worker (company creation: one at a time)",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def __repr__(self):
        # Never include the secret, not even in a debugger or a traceback's locals.
        return f"<EngineConnection {self.name} ({self.kind})>"

    @property
    def api_secret(self) -> str:
        return secret_decrypt(self.api_secret_encrypted, label=f"API secret of engine '{self.name}'")

    @api_secret.setter
    def api_secret(self, value: str) -> None:
        self.api_secret_encrypted = secret_encrypt(value or "")

    @property
    def has_api_secret(self) -> bool:
        return bool(self.api_secret_encrypted)


slug_validator = RegexValidator(r"^[a-z0-9][a-z0-9-]{1,62}$", "Use 2-63 lowercase letters, digits and hyphens.")
abbr_validator = RegexValidator(r"^[A-Z0-9]{2,10}$", "Use 2-10 uppercase letters or digits.")


class Tenant(models.Model):
    class Status(models.TextChoices):
        NEW = "new", "New"
        ACTIVE = "active", "Active"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.SlugField(max_length=63, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=140)
    company_name = models.CharField(max_length=140)
    abbr = models.CharField("abbreviation", max_length=10, validators=[abbr_validator])
    currency = models.CharField(max_length=3)
    country = models.CharField(max_length=100)
    admin_email = models.EmailField()
    admin_first_name = models.CharField(max_length=100, blank=True)
    # The tenant's extra cost centers and warehouses, beyond the ones ERPNext makes with every company.
    extra_cost_centers = models.JSONField(default=list, blank=True)
    extra_warehouses = models.JSONField(default=list, blank=True)
    engine = models.ForeignKey(EngineConnection, on_delete=models.PROTECT, related_name="tenants")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="tenants"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NEW)
    # Called when the tenant's onboarding ends (COMPLETED, PARTIAL, FAILED); empty = the global MORAN_WEBHOOK_URL.
    webhook_url = models.URLField(max_length=500, null=True, blank=True)
    # Step 8 restricts the admin user to this tenant's company. For a user that existed in the engine before Moran and
    # may see every company (or is a System Manager), that takes access away: the step refuses unless this is set.
    allow_restricting_existing_admin = models.BooleanField(
        default=False,
        help_text="Let provisioning restrict an admin user that already existed in the engine (and could see every "
        "company) to this tenant's company.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]
        # The admin list's order (newest first; the id breaks ties). The search's trigram indexes are made by
        # the perf_indexes migration, on PostgreSQL only (SQLite has no pg_trgm).
        indexes = [models.Index(fields=["created_at", "id"], name="tenant_created_id")]
        constraints = [
            # Two tenants of one engine cannot share a company or its abbreviation: ERPNext would refuse the second.
            models.UniqueConstraint(fields=["engine", "company_name"], name="tenant_unique_company_per_engine"),
            models.UniqueConstraint(fields=["engine", "abbr"], name="tenant_unique_abbr_per_engine"),
        ]

    def __str__(self):
        return self.slug
