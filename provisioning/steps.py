"""The ten provisioning steps (the contract of the brief; names are stable).

Each step works in two phases:

* ``look`` is read-only: it asks the engine what exists (by each resource's natural key) and returns what it found
  and the :class:`Change` list that would bring the engine to the tenant's desired state. ``--plan`` and
  ``--verify`` call only this.
* ``act`` applies those changes. :func:`execute` then looks again, and the step completes only when the engine
  confirms that nothing is missing, so a step is idempotent by construction and never reports work the engine
  did not confirm.

A :class:`StepFailed` raised by ``look`` is a permanent, operator-facing failure (an abbreviation owned by another
company, the setup wizard not completed, ...).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from provisioning.engines.base import ADMIN_ROLES, DEFAULT_WAREHOUSES, ROOT_ACCOUNTS, find_doc
from provisioning.engines.errors import EngineConflictError

SUPPORTED_ERPNEXT_MAJORS = (15,)


class StepFailed(Exception):
    """A permanent failure found by a step (not an engine error). The message is for operators."""

    def __init__(self, message: str, *, type: str = "StepFailed"):
        super().__init__(message)
        self.message = message
        self.type = type

    def as_step_error(self) -> dict:
        return {"type": self.type, "message": self.message, "engine_status": None}


@dataclass(frozen=True)
class TenantSpec:
    """The desired state of a tenant in its engine (what the steps converge to)."""

    company: str
    abbr: str
    currency: str
    country: str
    admin_email: str
    admin_first_name: str
    cost_centers: tuple[str, ...] = ()
    warehouses: tuple[str, ...] = ()
    admin_roles: tuple[str, ...] = ADMIN_ROLES
    #: the operator lets step 8 restrict an admin user that existed before Moran and could see every company
    allow_restricting_existing_admin: bool = False
    #: Moran created this admin user in this engine (for this tenant or another): restricting it takes nothing away
    admin_created_by_moran: bool = False

    @classmethod
    def from_tenant(cls, tenant, *, admin_created_by_moran: bool | None = None) -> TenantSpec:
        """``admin_created_by_moran``: its answer when the caller has it already (asked the database, or knows the
        step does not read it: see :attr:`Step.reads_admin_history`); None asks :func:`admin_user_created_by_moran`."""
        if admin_created_by_moran is None:
            admin_created_by_moran = admin_user_created_by_moran(tenant)
        return cls(
            company=tenant.company_name,
            abbr=tenant.abbr,
            currency=tenant.currency,
            country=tenant.country,
            admin_email=tenant.admin_email.lower(),
            admin_first_name=tenant.admin_first_name or tenant.name,
            cost_centers=tuple(tenant.extra_cost_centers or ()),
            warehouses=tuple(tenant.extra_warehouses or ()),
            allow_restricting_existing_admin=bool(getattr(tenant, "allow_restricting_existing_admin", False)),
            admin_created_by_moran=admin_created_by_moran,
        )


def admin_user_created_by_moran(tenant) -> bool:
    """Whether step 7 of any tenant of this engine created this admin user (its result says so; kept across runs)."""
    if tenant.pk is None or tenant.engine_id is None:
        return False
    return tenant.engine.tenants.filter(
        admin_email__iexact=tenant.admin_email,
        onboarding__provisioning_steps__step_7_admin_user__result__created_by_moran=True,
    ).exists()


@dataclass(frozen=True)
class Change:
    op: str  # "create" | "update" | "delete"
    doctype: str
    name: str  # the engine name it will have (create) or has (update, delete)
    doc: dict = field(default_factory=dict)
    reason: str = "missing"

    def describe(self) -> str:
        return f"{self.op} {self.doctype} '{self.name}' ({self.reason})"

    def as_dict(self) -> dict:
        return {"op": self.op, "doctype": self.doctype, "name": self.name, "reason": self.reason}


@dataclass
class Look:
    found: dict[str, Any] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class StepContext:
    engine: Any
    spec: TenantSpec
    today: dt.date = field(default_factory=dt.date.today)
    #: steps whose resources are not expected (an optional step that was skipped); used by finalize and verify.
    skipped: frozenset[str] = frozenset()
    #: (doctype, name) of the documents this execution created (not found, not created by a concurrent writer)
    created: set[tuple[str, str]] = field(default_factory=set)
    #: records, durably and before the engine is asked, that this step is about to create (doctype, name): a worker
    #: killed between the create and its result must not leave the next attempt taking Moran's document for a stranger's
    intend: Any = None
    #: (doctype, name) an earlier attempt of this step recorded with ``intend`` before it asked the engine to create it
    intended: frozenset[tuple[str, str]] = frozenset()


class Step:
    name: str = ""
    title: str = ""
    optional: bool = False
    #: the step reads ``spec.admin_created_by_moran`` (a query over the engine's other tenants): only then is it made
    reads_admin_history: bool = False
    #: doctypes whose creation by Moran later steps rely on: recorded through ``ctx.intend`` before the create
    records_intent: frozenset[str] = frozenset()

    def look(self, ctx: StepContext) -> Look:
        raise NotImplementedError

    def act(self, ctx: StepContext, look: Look) -> list[str]:
        """Apply the changes; returns what was done, for the log. A 409 ``DuplicateEntryError`` on a create means
        another writer created the same named document first: the confirming look decides."""
        done = []
        for change in look.changes:
            if change.op == "create":
                if change.doctype in self.records_intent and ctx.intend is not None:
                    ctx.intend(change.doctype, change.name)
                try:
                    ctx.engine.insert(change.doctype, change.doc)
                    ctx.created.add((change.doctype, change.name))
                    done.append(f"created {change.doctype} '{change.name}'")
                except EngineConflictError as exc:
                    if not exc.is_duplicate:
                        raise
                    done.append(f"{change.doctype} '{change.name}' already existed")
            elif change.op == "update":
                ctx.engine.update(change.doctype, change.name, change.doc)
                done.append(f"updated {change.doctype} '{change.name}' ({change.reason})")
            elif change.op == "delete":
                ctx.engine.delete(change.doctype, change.name)
                done.append(f"deleted {change.doctype} '{change.name}' ({change.reason})")
        return done

    def __repr__(self):
        return f"<Step {self.name}>"


def _company_exists(ctx: StepContext) -> bool:
    return find_doc(ctx.engine, "Company", ctx.spec.company) is not None


def _require_company(ctx: StepContext, look: Look) -> bool:
    """True when the company exists. When it does not, a plan notes it and a run fails: the step after it cannot
    be done before step_1_company."""
    if _company_exists(ctx):
        return True
    look.notes.append(f"Company '{ctx.spec.company}' does not exist yet; ERPNext makes this step's defaults with it")
    return False


class EngineCheck(Step):
    name = "step_0_engine_check"
    title = "Engine reachable, credentials valid, ERPNext supported, setup complete"

    def look(self, ctx):
        engine = ctx.engine
        pong = engine.call("ping")
        if pong != "pong":
            raise StepFailed(
                f"Engine '{engine.name}' answered ping with {pong!r}, not 'pong'", type="EngineUnreachable"
            )
        user = engine.call("frappe.auth.get_logged_user")
        versions = engine.call("frappe.utils.change_log.get_versions") or {}
        erpnext = (versions.get("erpnext") or {}).get("version")
        if not erpnext:
            raise StepFailed(f"ERPNext is not installed on engine '{engine.name}'", type="ERPNextMissing")
        major = int(str(erpnext).split(".")[0]) if str(erpnext).split(".")[0].isdigit() else None
        if major not in SUPPORTED_ERPNEXT_MAJORS:
            raise StepFailed(
                f"ERPNext {erpnext} on engine '{engine.name}' is not supported (version 15 is)",
                type="UnsupportedVersion",
            )
        settings = engine.call("frappe.client.get_value", doctype="System Settings", fieldname="setup_complete") or {}
        if str(settings.get("setup_complete")) != "1":
            raise StepFailed(
                f"The setup wizard of engine '{engine.name}' is not completed: complete it in ERPNext first "
                "(before it, creating a company fails with 'Could not find Warehouse Type: Transit')",
                type="SetupIncomplete",
            )
        frappe = (versions.get("frappe") or {}).get("version")
        return Look(found={"user": user, "frappe_version": frappe, "erpnext_version": erpnext})


class CompanyStep(Step):
    name = "step_1_company"
    title = "Company"

    def look(self, ctx):
        spec = ctx.spec
        doc = find_doc(ctx.engine, "Company", spec.company)
        if doc is not None:
            if doc.get("abbr") != spec.abbr:
                raise StepFailed(
                    f"Company '{spec.company}' already exists in the engine with abbreviation '{doc.get('abbr')}', "
                    f"not '{spec.abbr}': it is not this tenant's",
                    type="CompanyConflict",
                )
            if doc.get("default_currency") != spec.currency:
                raise StepFailed(
                    f"Company '{spec.company}' exists with currency {doc.get('default_currency')}, not {spec.currency}",
                    type="CompanyConflict",
                )
            return Look(found={"company": doc["name"], "abbr": doc["abbr"]})
        owner = ctx.engine.call(
            "frappe.client.get_value", doctype="Company", fieldname="name", filters={"abbr": spec.abbr}
        )
        if owner and owner.get("name"):
            raise StepFailed(
                f"Abbreviation '{spec.abbr}' is already used by company '{owner['name']}' in the engine: "
                "choose another abbreviation for this tenant",
                type="AbbreviationTaken",
            )
        create = {
            "company_name": spec.company,
            "abbr": spec.abbr,
            "default_currency": spec.currency,
            "country": spec.country,
        }
        return Look(changes=[Change("create", "Company", spec.company, create)])


class FiscalYearStep(Step):
    """A fiscal year covering today must apply to the company. Year labels are global across companies, and a year
    with the same dates as another is refused, so: add the company to the year that covers today when there is one,
    else create the calendar year for this company under a free label."""

    name = "step_2_fiscal_year"
    title = "Fiscal year"
    #: updates the shared companies table of a year: two tenants doing it at once would overwrite each other.
    serialize_per_engine = True

    def look(self, ctx):
        spec, today = ctx.spec, ctx.today
        applies = ctx.engine.call(
            "erpnext.accounts.utils.get_fiscal_year", date=today.isoformat(), company=spec.company, boolean=1
        )
        if applies:
            name = applies["name"] if isinstance(applies, dict) else applies[0]
            return Look(found={"fiscal_year": name})
        covering = ctx.engine.get_list(
            "Fiscal Year",
            filters=[
                ["year_start_date", "<=", today.isoformat()],
                ["year_end_date", ">=", today.isoformat()],
                ["disabled", "=", 0],
            ],
            fields=["name"],
            order_by="year_start_date desc",
        )
        if covering:
            year = ctx.engine.get_doc("Fiscal Year", covering[0]["name"])
            rows = [{"company": row["company"]} for row in year.get("companies") or []]
            return Look(
                changes=[
                    Change(
                        "update",
                        "Fiscal Year",
                        year["name"],
                        {"companies": rows + [{"company": spec.company}]},
                        reason=f"add {spec.company} to the year covering today",
                    )
                ]
            )
        label = str(today.year)
        if find_doc(ctx.engine, "Fiscal Year", label) is not None:
            label = f"{today.year} {spec.abbr}"
        doc = {
            "year": label,
            "year_start_date": f"{today.year}-01-01",
            "year_end_date": f"{today.year}-12-31",
            "companies": [{"company": spec.company}],
        }
        return Look(changes=[Change("create", "Fiscal Year", label, doc)])


class ChartOfAccountsStep(Step):
    name = "step_3_chart_of_accounts"
    title = "Chart of accounts"

    def look(self, ctx):
        look = Look()
        if not _require_company(ctx, look):
            return look
        spec = ctx.spec
        roots = ctx.engine.get_list(
            "Account",
            filters={"company": spec.company, "parent_account": ["is", "not set"]},
            fields=["name", "root_type"],
        )
        by_type = {row["root_type"]: row["name"] for row in roots}
        for root_type, (account_name, report_type) in ROOT_ACCOUNTS.items():
            if root_type not in by_type:
                look.changes.append(
                    Change(
                        "create",
                        "Account",
                        f"{account_name} - {spec.abbr}",
                        {
                            "account_name": account_name,
                            "company": spec.company,
                            "is_group": 1,
                            "root_type": root_type,
                            "report_type": report_type,
                        },
                        reason=f"root {root_type} account missing",
                    )
                )
        look.found = {"root_accounts": dict(sorted(by_type.items()))}
        return look


class CostCentersStep(Step):
    name = "step_4_cost_centers"
    title = "Cost centers"

    def look(self, ctx):
        look = Look()
        if not _require_company(ctx, look):
            for extra in ctx.spec.cost_centers:
                look.changes.append(
                    Change("create", "Cost Center", f"{extra} - {ctx.spec.abbr}", reason="extra cost center")
                )
            return look
        spec = ctx.spec
        root = f"{spec.company} - {spec.abbr}"
        if find_doc(ctx.engine, "Cost Center", root) is None:
            raise StepFailed(
                f"The root cost center '{root}' of the company is missing in the engine", type="CostCenterMissing"
            )
        names = [root]
        for wanted in ("Main", *spec.cost_centers):
            name = f"{wanted} - {spec.abbr}"
            names.append(name)
            if find_doc(ctx.engine, "Cost Center", name) is None:
                look.changes.append(
                    Change(
                        "create",
                        "Cost Center",
                        name,
                        {
                            "cost_center_name": wanted,
                            "parent_cost_center": root,
                            "company": spec.company,
                            "is_group": 0,
                        },
                    )
                )
        look.found = {"cost_centers": names}
        return look


class WarehousesStep(Step):
    name = "step_5_warehouses"
    title = "Warehouses"

    def look(self, ctx):
        look = Look()
        spec = ctx.spec
        if not _require_company(ctx, look):
            for extra in spec.warehouses:
                look.changes.append(Change("create", "Warehouse", f"{extra} - {spec.abbr}", reason="extra warehouse"))
            return look
        group = f"All Warehouses - {spec.abbr}"
        names = [group]
        if find_doc(ctx.engine, "Warehouse", group) is None:
            look.changes.append(
                Change(
                    "create",
                    "Warehouse",
                    group,
                    {"warehouse_name": "All Warehouses", "company": spec.company, "is_group": 1},
                )
            )
        for wanted in (*DEFAULT_WAREHOUSES, *spec.warehouses):
            name = f"{wanted} - {spec.abbr}"
            names.append(name)
            if find_doc(ctx.engine, "Warehouse", name) is None:
                doc = {"warehouse_name": wanted, "company": spec.company, "parent_warehouse": group}
                if wanted == "Goods In Transit":
                    doc["warehouse_type"] = "Transit"
                look.changes.append(Change("create", "Warehouse", name, doc))
        look.found = {"warehouses": names}
        return look


class MasterDataStep(Step):
    name = "step_6_master_data"
    title = "Master data (groups, price lists)"
    optional = True

    GROUPS = (
        ("Customer Group", "customer_group_name", "parent_customer_group", "All Customer Groups", "Customers"),
        ("Supplier Group", "supplier_group_name", "parent_supplier_group", "All Supplier Groups", "Suppliers"),
        ("Item Group", "item_group_name", "parent_item_group", "All Item Groups", "Items"),
    )

    def look(self, ctx):
        spec, look = ctx.spec, Look()
        for doctype, name_field, parent_field, root, suffix in self.GROUPS:
            name = f"{spec.abbr} {suffix}"
            look.found[doctype] = name
            if find_doc(ctx.engine, doctype, name) is None:
                look.changes.append(Change("create", doctype, name, {name_field: name, parent_field: root}))
        for kind in ("Selling", "Buying"):
            name = f"{spec.abbr} {kind}"
            look.found[f"Price List ({kind.lower()})"] = name
            doc = find_doc(ctx.engine, "Price List", name)
            if doc is None:
                look.changes.append(
                    Change(
                        "create",
                        "Price List",
                        name,
                        {"price_list_name": name, "currency": spec.currency, kind.lower(): 1},
                    )
                )
            elif doc.get("currency") != spec.currency:
                # ERPNext fills a missing currency with the site default: repair it.
                look.changes.append(
                    Change(
                        "update",
                        "Price List",
                        name,
                        {"currency": spec.currency},
                        reason=f"currency {doc.get('currency')} should be {spec.currency}",
                    )
                )
        return look


class AdminUserStep(Step):
    name = "step_7_admin_user"
    title = "Tenant admin user"
    reads_admin_history = True
    records_intent = frozenset({"User"})

    def look(self, ctx):
        spec = ctx.spec
        doc = find_doc(ctx.engine, "User", spec.admin_email)
        wanted = set(spec.admin_roles)
        if doc is None:
            return Look(
                changes=[
                    Change(
                        "create",
                        "User",
                        spec.admin_email,
                        {
                            "email": spec.admin_email,
                            "first_name": spec.admin_first_name,
                            "send_welcome_email": 0,
                            "roles": [{"role": role} for role in sorted(wanted)],
                        },
                    )
                ]
            )
        have = {row.get("role") for row in doc.get("roles") or []}
        look = Look(found={"user": doc["name"], "roles": sorted(have)})
        made = ("User", spec.admin_email)
        if spec.admin_created_by_moran or made in ctx.created or made in ctx.intended:
            # Recorded in the step's result: step 8 (of this tenant or another) may restrict a user Moran made.
            look.found["created_by_moran"] = True
        if wanted - have:
            # A PUT of a child table replaces the whole table: send the roles the user has plus the missing ones.
            look.changes.append(
                Change(
                    "update",
                    "User",
                    doc["name"],
                    {"roles": [{"role": r} for r in sorted(have | wanted)]},
                    reason="missing roles " + ", ".join(sorted(wanted - have)),
                )
            )
        return look


class UserPermissionStep(Step):
    """ERPNext accepts two identical User Permissions (its duplicate check is a read before the insert), so look
    first, and remove any duplicate an earlier race left behind."""

    name = "step_8_user_permissions"
    title = "User permission on the company"
    reads_admin_history = True

    def look(self, ctx):
        spec = ctx.spec
        rows = ctx.engine.get_list(
            "User Permission",
            filters={"user": spec.admin_email, "allow": "Company", "for_value": spec.company},
            fields=["name", "apply_to_all_doctypes"],
            order_by="creation asc",
        )
        applying = [row["name"] for row in rows if int(row.get("apply_to_all_doctypes") or 0) == 1]
        if not applying:
            _refuse_restricting_existing_user(ctx)
            return Look(
                changes=[
                    Change(
                        "create",
                        "User Permission",
                        f"{spec.admin_email} → {spec.company}",
                        {
                            "user": spec.admin_email,
                            "allow": "Company",
                            "for_value": spec.company,
                            "apply_to_all_doctypes": 1,
                        },
                    )
                ]
            )
        look = Look(found={"user_permission": applying[0]})
        for extra in applying[1:]:
            look.changes.append(Change("delete", "User Permission", extra, reason="duplicate"))
        return look


def _refuse_restricting_existing_user(ctx: StepContext) -> None:
    """A User Permission on one Company restricts its user to that company: for a user who could see every company
    (no Company permission yet) or is a System Manager, creating it takes access away. Moran does that only to users
    it created, or when the operator allowed it for this tenant; a user already restricted to other companies only
    gains one."""
    spec = ctx.spec
    created_now = ("User", spec.admin_email) in ctx.created
    if spec.admin_created_by_moran or spec.allow_restricting_existing_admin or created_now:
        return
    user = find_doc(ctx.engine, "User", spec.admin_email)
    if user is None:
        return  # step 7 makes it; nothing exists to take access from
    system_manager = "System Manager" in {row.get("role") for row in user.get("roles") or []}
    restricted = ctx.engine.get_list(
        "User Permission", filters={"user": spec.admin_email, "allow": "Company"}, fields=["name"], limit=1
    )
    if restricted and not system_manager:
        return
    why = "is a System Manager" if system_manager else "has no User Permission on Company, so it can see every company"
    raise StepFailed(
        f"The admin user '{spec.admin_email}' existed in the engine before Moran and {why}: a User Permission on "
        f"'{spec.company}' would restrict it to this company only and take its access to the others away. "
        "Give the tenant another admin email, or, if restricting this user is intended, allow it for this tenant "
        "(admin: 'Allow restricting existing admin'; CLI: provision_tenant SLUG --allow-restrict-existing-admin "
        "--continue) and continue.",
        type="ExistingUserNotRestricted",
    )


class FinalizeStep(Step):
    name = "step_9_finalize"
    title = "Verify everything and activate the tenant"

    def look(self, ctx):
        resources, drift = {}, []
        for step in STEPS[1:-1]:
            if step.name in ctx.skipped:
                continue
            step_look = step.look(ctx)
            resources[step.name] = step_look.found
            drift += [f"{step.name}: {change.describe()}" for change in step_look.changes]
        if drift:
            raise StepFailed("Verification found what is missing or different: " + "; ".join(drift), type="Drift")
        return Look(found={"resources": resources})


STEPS: tuple[Step, ...] = (
    EngineCheck(),
    CompanyStep(),
    FiscalYearStep(),
    ChartOfAccountsStep(),
    CostCentersStep(),
    WarehousesStep(),
    MasterDataStep(),
    AdminUserStep(),
    UserPermissionStep(),
    FinalizeStep(),
)
STEP_NAMES: tuple[str, ...] = tuple(step.name for step in STEPS)
STEP_BY_NAME: dict[str, Step] = {step.name: step for step in STEPS}
TOTAL_STEPS = len(STEPS)


def step_index(name: str) -> int:
    return STEP_NAMES.index(name)


def execute(step: Step, ctx: StepContext) -> tuple[dict, list[str]]:
    """Look, act, and look again. Returns (result, what was done). Raises StepFailed when the engine does not
    confirm the changes, and engine errors as they come."""
    look = step.look(ctx)
    done: list[str] = []
    if look.changes:
        done = step.act(ctx, look)
        look = step.look(ctx)
        if look.changes:
            raise StepFailed(
                "The engine did not confirm: " + "; ".join(change.describe() for change in look.changes),
                type="NotConfirmed",
            )
    return look.found, done
