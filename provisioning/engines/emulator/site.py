"""The emulated site: its bootstrap (what the setup wizard leaves), its methods, and document writes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from provisioning.engines.emulator.doctypes import DoctypeRules
from provisioning.engines.emulator.query import Query
from provisioning.engines.emulator.store import DuplicateName, Store, add_many
from provisioning.engines.emulator.tables import (
    DEFAULT_ABBR,
    DEFAULT_COMPANY,
    ERPNEXT_VERSION,
    FIELDS,
    FRAPPE_VERSION,
    GROUP_ROOTS,
    ROLES,
)
from provisioning.engines.emulator.values import fmt_date, now_stamp, parse_date, truthy
from provisioning.engines.errors import (
    EngineBadRequestError,
    EngineConflictError,
    EngineNotFoundError,
    EngineValidationError,
)


class ERPNextEmulator(Query, DoctypeRules):
    """ERPNext semantics over a store. Methods mirror the REST API and raise the engine error family."""

    def __init__(
        self,
        store: Store,
        *,
        user: str = "Administrator",
        today: dt.date | None = None,
        default_company: dict | None = None,
        fiscal_years: tuple[str, ...] = (),
        company_latency: float = 0.0,
        site_ready: bool = False,
    ):
        """``default_company`` (company_name, abbr, default_currency, country) is the company the setup wizard made,
        the API user's default; ``fiscal_years``: calendar-year labels that exist with no company rows. Both apply
        only when the store is bootstrapped (a new site). ``company_latency``: the seconds a Company create takes
        when it runs alone (a real ERPNext takes about 2.5 s); concurrent creates share the site and take longer.
        ``site_ready``: the caller has just read that the site exists (its System Settings), so it is not read again."""
        self.store = store
        self.company_latency = company_latency
        self.user = user
        self._today = today
        self._seed_company = default_company or {
            "company_name": DEFAULT_COMPANY,
            "abbr": DEFAULT_ABBR,
            "default_currency": "USD",
            "country": "United States",
        }
        self._seed_years = tuple(fiscal_years)
        if not site_ready:
            self.ensure_site()

    # --- site bootstrap ------------------------------------------------------------------------------------------
    def ensure_site(self) -> None:
        """Create what a site has after its setup wizard (idempotent)."""
        if self.store.get("System Settings", "System Settings") is not None:
            return
        with self.store.atomic():
            try:
                # Inserted first: a second process bootstrapping at the same moment stops here.
                self._add_raw(
                    "System Settings",
                    "System Settings",
                    {"setup_complete": "1", "time_zone": "UTC", "country": "United States"},
                )
            except EngineConflictError:
                return
            self._bootstrap()

    def _bootstrap(self) -> None:
        for role in ROLES:
            self._add_raw("Role", role, {"role_name": role})
        self._add_raw(
            "User",
            "Administrator",
            {
                "email": "admin@example.com",
                "first_name": "Administrator",
                "enabled": 1,
                "user_type": "System User",
                "roles": [{"role": "System Manager"}],
            },
        )
        for doctype, (name_field, parent_field, root) in GROUP_ROOTS.items():
            self._add_raw(doctype, root, {name_field: root, parent_field: "", "is_group": 1})
        self._add_raw(
            "Department",
            "All Departments",
            {"department_name": "All Departments", "parent_department": "", "company": "", "is_group": 1},
        )
        company = self._create_company(dict(self._seed_company))
        self._add_raw(
            "Global Defaults",
            "Global Defaults",
            {
                "default_company": company["name"],
                "default_currency": company["default_currency"],
                "country": company["country"],
            },
        )
        for label in self._seed_years:
            self._create_fiscal_year(
                {"year": label, "year_start_date": f"{label}-01-01", "year_end_date": f"{label}-12-31"}
            )

    def set_setup_complete(self, complete: bool) -> None:
        doc = self.store.get("System Settings", "System Settings")
        doc["setup_complete"] = "1" if complete else "0"
        self.store.put("System Settings", "System Settings", doc)

    def _add_raw(self, doctype, name, fields):
        doc = self._new_doc(doctype, name, fields)
        try:
            self.store.add(doctype, name, doc)
        except DuplicateName:
            raise EngineConflictError(f"{doctype} {name} already exists", status=409, exc_type="DuplicateEntryError")
        return doc

    def _add_raw_many(self, entries: list[tuple[str, str, dict]]) -> list[dict]:
        """``_add_raw`` of several documents in one write (inside ``store.atomic()``): the first name taken is the
        409, as it would have been one by one."""
        docs = [self._new_doc(doctype, name, fields) for doctype, name, fields in entries]
        try:
            add_many(self.store, [(e[0], e[1], doc) for e, doc in zip(entries, docs, strict=True)])
        except DuplicateName as exc:
            doctype, name = exc.args
            raise EngineConflictError(f"{doctype} {name} already exists", status=409, exc_type="DuplicateEntryError")
        return docs

    def _new_doc(self, doctype, name, fields):
        stamp = now_stamp()
        return {
            "name": name,
            "owner": self.user,
            "creation": stamp,
            "modified": stamp,
            "modified_by": self.user,
            "docstatus": 0,
            "idx": 0,
            **fields,
            "doctype": doctype,
        }

    @property
    def today(self) -> dt.date:
        return self._today or dt.date.today()

    # --- methods -----------------------------------------------------------------------------------------------
    def call(self, method: str, **params) -> Any:
        handler = {
            "ping": lambda: "pong",
            "frappe.auth.get_logged_user": lambda: self.user,
            "frappe.utils.change_log.get_versions": self._versions,
            "frappe.client.get_value": lambda: self.get_value(
                params.get("doctype"), params.get("fieldname"), params.get("filters")
            ),
            "frappe.client.get_count": lambda: len(
                self.get_list(params.get("doctype"), filters=params.get("filters"), fields=["name"])
            ),
            "frappe.client.get_list": lambda: self.get_list(
                params.get("doctype"),
                filters=params.get("filters"),
                fields=params.get("fields"),
                order_by=params.get("order_by"),
                limit=int(params.get("limit_page_length") or 0),
            ),
            "erpnext.accounts.utils.get_fiscal_year": lambda: self._get_fiscal_year(**params),
        }.get(method)
        if handler is None:
            module = method.split(".")[0]
            raise EngineValidationError(
                f"Failed to get method for command {method} with module '{module}' has no attribute '{method.split('.')[-1]}'",
                status=417,
                exc_type="ValidationError",
            )
        return handler()

    def _versions(self):
        return {
            "frappe": {
                "title": "Frappe Framework",
                "description": "Full stack web framework",
                "branch": "",
                "version": FRAPPE_VERSION,
            },
            "erpnext": {"title": "ERPNext", "description": "ERP made simple", "branch": "", "version": ERPNEXT_VERSION},
        }

    def _get_fiscal_year(self, date=None, company=None, as_dict=None, boolean=None, **_):
        day = parse_date(date, "Date") or self.today
        for year in sorted(self.store.rows("Fiscal Year"), key=lambda y: y["year_start_date"], reverse=True):
            if truthy(year.get("disabled") or 0):
                continue
            start, end = dt.date.fromisoformat(year["year_start_date"]), dt.date.fromisoformat(year["year_end_date"])
            companies = {row["company"] for row in year.get("companies") or []}
            if start <= day <= end and (not company or not companies or company in companies):
                if truthy(as_dict or 0):
                    return {
                        "name": year["name"],
                        "year_start_date": year["year_start_date"],
                        "year_end_date": year["year_end_date"],
                    }
                return [year["name"], year["year_start_date"], year["year_end_date"]]
        if truthy(boolean or 0):
            return False
        suffix = f" for {company}" if company else ""
        raise EngineValidationError(
            f"Date {fmt_date(day)} is not in any active Fiscal Year{suffix}", status=417, exc_type="FiscalYearError"
        )

    def insert(self, doctype: str, doc: dict) -> dict:
        self._check_doctype(doctype)
        if not isinstance(doc, dict):
            raise EngineBadRequestError("'list' object has no attribute 'get'", status=500, exc_type="TypeError")
        doc = {k: v for k, v in doc.items() if k in FIELDS[doctype] or k == "name"}
        creator = getattr(self, "_create_" + doctype.lower().replace(" ", "_"), None)
        if creator is None and doctype in GROUP_ROOTS:
            creator = lambda d: self._create_group(doctype, d)  # noqa: E731
        if doctype == "Company":
            return self._insert_company(doc)
        if creator is not None:
            # A document and what it brings along (a company's chart, warehouses...) are saved together.
            with self.store.atomic():
                return creator(doc)
        raise EngineValidationError(f"Cannot create {doctype} here", status=417, exc_type="PermissionError")

    def update(self, doctype: str, name: str, changes: dict) -> dict:
        doc = self.get_doc(doctype, name)
        changes = {k: v for k, v in changes.items() if k in FIELDS[doctype]}
        validator = getattr(self, "_validate_update_" + doctype.lower().replace(" ", "_"), None)
        if validator is not None:
            validator(doc, changes)
        doc.update(changes)
        doc["modified"] = now_stamp()
        with self.store.atomic():
            self.store.put(doctype, name, doc)
        return doc

    def delete(self, doctype: str, name: str) -> None:
        self._check_doctype(doctype)
        if not self.store.remove(doctype, name):
            raise EngineNotFoundError(f"{doctype} {name} not found", status=404)
