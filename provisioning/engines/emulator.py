"""An emulation of the parts of an ERPNext v15 site that provisioning touches.

It reproduces what ``shared/erpnext-recordings`` shows a real server does: the names it generates (``Ops - RTL``),
the duplicates it rejects (409 ``DuplicateEntryError``) and the ones it accepts (User Permission), mandatory fields,
link validation (417), the global fiscal-year labels and overlaps, the silent fill of a missing ``company`` from the
default company, the default warehouses, cost centers and accounts a new company gets, and the deterministic 500s.

The state lives in a *store* (the database store of the sandbox engine, or the tests' in-memory one), so the same rules
serve the sandbox engine (shared by every worker process through the database) and the Frappe-compatible HTTP test
server.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import string
import time
import uuid
from typing import Any, Protocol

from provisioning.currencies import ISO_4217
from provisioning.engines.errors import (
    EngineBadRequestError,
    EngineConflictError,
    EngineNotFoundError,
    EngineValidationError,
)

FRAPPE_VERSION = "15.75.0"
ERPNEXT_VERSION = "15.71.1"

ROLES = (
    "System Manager",
    "Accounts Manager",
    "Accounts User",
    "Stock Manager",
    "Stock User",
    "Sales Manager",
    "Sales User",
    "Purchase Manager",
    "Purchase User",
    "Item Manager",
    "HR Manager",
)

STANDARD_FIELDS = {"name", "owner", "creation", "modified", "modified_by", "docstatus", "idx", "doctype"}

# Fields each doctype knows (filters and field lists naming anything else get 417 DataError, as on a real site).
FIELDS: dict[str, set[str]] = {
    "Company": {
        "company_name",
        "abbr",
        "default_currency",
        "country",
        "is_group",
        "parent_company",
        "chart_of_accounts",
        "create_chart_of_accounts_based_on",
        "default_cash_account",
        "default_receivable_account",
        "default_payable_account",
        "default_income_account",
        "default_expense_account",
        "cost_center",
        "round_off_account",
        "round_off_cost_center",
        "write_off_account",
        "exchange_gain_loss_account",
        "default_inventory_account",
        "stock_adjustment_account",
        "enable_perpetual_inventory",
        "lft",
        "rgt",
    },
    "Fiscal Year": {
        "year",
        "year_start_date",
        "year_end_date",
        "disabled",
        "is_short_year",
        "auto_created",
        "companies",
    },
    "Account": {
        "account_name",
        "account_number",
        "company",
        "parent_account",
        "is_group",
        "root_type",
        "report_type",
        "account_type",
        "account_currency",
        "lft",
        "rgt",
        "disabled",
    },
    "Cost Center": {
        "cost_center_name",
        "cost_center_number",
        "parent_cost_center",
        "company",
        "is_group",
        "lft",
        "rgt",
        "disabled",
    },
    "Warehouse": {
        "warehouse_name",
        "company",
        "parent_warehouse",
        "is_group",
        "warehouse_type",
        "lft",
        "rgt",
        "disabled",
    },
    "Customer Group": {"customer_group_name", "parent_customer_group", "is_group", "lft", "rgt"},
    "Supplier Group": {"supplier_group_name", "parent_supplier_group", "is_group", "lft", "rgt"},
    "Item Group": {"item_group_name", "parent_item_group", "is_group", "lft", "rgt"},
    "Price List": {"price_list_name", "currency", "selling", "buying", "enabled"},
    "User": {
        "email",
        "first_name",
        "last_name",
        "full_name",
        "username",
        "enabled",
        "user_type",
        "roles",
        "send_welcome_email",
    },
    "User Permission": {
        "user",
        "allow",
        "for_value",
        "apply_to_all_doctypes",
        "applicable_for",
        "is_default",
        "hide_descendants",
    },
    "Role": {"role_name"},
    "Global Defaults": {"default_company", "default_currency", "country"},
    # Made with every company on a real site; known here so that counts and lists of them answer as they do there.
    "Department": {"department_name", "parent_department", "company", "is_group", "lft", "rgt"},
    "Sales Taxes and Charges Template": {"title", "company", "is_default"},
    "Purchase Taxes and Charges Template": {"title", "company", "is_default"},
    "Item Tax Template": {"title", "company"},
    "Currency": {"currency_name", "enabled"},
    "System Settings": {"setup_complete", "time_zone", "country"},
}

# Child tables, and the child doctype names used in child-table filters.
CHILD_TABLES = {"Fiscal Year Company": ("Fiscal Year", "companies"), "Has Role": ("User", "roles")}

# Group doctypes whose root the site ships with.
GROUP_ROOTS = {
    "Customer Group": ("customer_group_name", "parent_customer_group", "All Customer Groups"),
    "Supplier Group": ("supplier_group_name", "parent_supplier_group", "All Supplier Groups"),
    "Item Group": ("item_group_name", "parent_item_group", "All Item Groups"),
}

# The chart a new company gets (ERPNext's "Standard" template, without a country's tax accounts):
# (account_name, parent account_name or None, is_group, root_type, account_type).
_G, _L = 1, 0
STANDARD_CHART = (
    ("Application of Funds (Assets)", None, _G, "Asset", ""),
    ("Current Assets", "Application of Funds (Assets)", _G, "Asset", ""),
    ("Accounts Receivable", "Current Assets", _G, "Asset", ""),
    ("Debtors", "Accounts Receivable", _L, "Asset", "Receivable"),
    ("Bank Accounts", "Current Assets", _G, "Asset", "Bank"),
    ("Cash In Hand", "Current Assets", _G, "Asset", "Cash"),
    ("Cash", "Cash In Hand", _L, "Asset", "Cash"),
    ("Loans and Advances (Assets)", "Current Assets", _G, "Asset", ""),
    ("Employee Advances", "Loans and Advances (Assets)", _L, "Asset", ""),
    ("Securities and Deposits", "Current Assets", _G, "Asset", ""),
    ("Earnest Money", "Securities and Deposits", _L, "Asset", ""),
    ("Stock Assets", "Current Assets", _G, "Asset", "Stock"),
    ("Stock In Hand", "Stock Assets", _L, "Asset", "Stock"),
    ("Tax Assets", "Current Assets", _G, "Asset", ""),
    ("Fixed Assets", "Application of Funds (Assets)", _G, "Asset", ""),
    ("Capital Equipments", "Fixed Assets", _L, "Asset", "Fixed Asset"),
    ("Electronic Equipments", "Fixed Assets", _L, "Asset", "Fixed Asset"),
    ("Furnitures and Fixtures", "Fixed Assets", _L, "Asset", "Fixed Asset"),
    ("Office Equipments", "Fixed Assets", _L, "Asset", "Fixed Asset"),
    ("Plants and Machineries", "Fixed Assets", _L, "Asset", "Fixed Asset"),
    ("Buildings", "Fixed Assets", _L, "Asset", "Fixed Asset"),
    ("Softwares", "Fixed Assets", _L, "Asset", "Fixed Asset"),
    ("Accumulated Depreciation", "Fixed Assets", _L, "Asset", "Accumulated Depreciation"),
    ("CWIP Account", "Fixed Assets", _L, "Asset", "Capital Work in Progress"),
    ("Investments", "Application of Funds (Assets)", _G, "Asset", ""),
    ("Temporary Accounts", "Application of Funds (Assets)", _G, "Asset", ""),
    ("Temporary Opening", "Temporary Accounts", _L, "Asset", "Temporary"),
    ("Source of Funds (Liabilities)", None, _G, "Liability", ""),
    ("Current Liabilities", "Source of Funds (Liabilities)", _G, "Liability", ""),
    ("Accounts Payable", "Current Liabilities", _G, "Liability", ""),
    ("Creditors", "Accounts Payable", _L, "Liability", "Payable"),
    ("Payroll Payable", "Accounts Payable", _L, "Liability", ""),
    ("Stock Liabilities", "Current Liabilities", _G, "Liability", ""),
    ("Stock Received But Not Billed", "Stock Liabilities", _L, "Liability", "Stock Received But Not Billed"),
    ("Asset Received But Not Billed", "Stock Liabilities", _L, "Liability", "Asset Received But Not Billed"),
    ("Duties and Taxes", "Current Liabilities", _G, "Liability", "Tax"),
    ("Loans (Liabilities)", "Current Liabilities", _G, "Liability", ""),
    ("Secured Loans", "Loans (Liabilities)", _L, "Liability", ""),
    ("Unsecured Loans", "Loans (Liabilities)", _L, "Liability", ""),
    ("Bank Overdraft Account", "Loans (Liabilities)", _L, "Liability", ""),
    ("Equity", None, _G, "Equity", ""),
    ("Capital Stock", "Equity", _L, "Equity", "Equity"),
    ("Dividends Paid", "Equity", _L, "Equity", "Equity"),
    ("Opening Balance Equity", "Equity", _L, "Equity", "Equity"),
    ("Retained Earnings", "Equity", _L, "Equity", "Equity"),
    ("Revaluation Surplus", "Equity", _L, "Equity", "Equity"),
    ("Income", None, _G, "Income", ""),
    ("Direct Income", "Income", _G, "Income", "Income Account"),
    ("Sales", "Direct Income", _L, "Income", "Income Account"),
    ("Service", "Direct Income", _L, "Income", "Income Account"),
    ("Indirect Income", "Income", _G, "Income", "Income Account"),
    ("Expenses", None, _G, "Expense", ""),
    ("Direct Expenses", "Expenses", _G, "Expense", "Expense Account"),
    ("Stock Expenses", "Direct Expenses", _G, "Expense", "Expense Account"),
    ("Cost of Goods Sold", "Stock Expenses", _L, "Expense", "Cost of Goods Sold"),
    ("Expenses Included In Asset Valuation", "Stock Expenses", _L, "Expense", "Expenses Included In Asset Valuation"),
    ("Expenses Included In Valuation", "Stock Expenses", _L, "Expense", "Expenses Included In Valuation"),
    ("Stock Adjustment", "Stock Expenses", _L, "Expense", "Stock Adjustment"),
    ("Indirect Expenses", "Expenses", _G, "Expense", "Expense Account"),
    ("Administrative Expenses", "Indirect Expenses", _L, "Expense", "Expense Account"),
    ("Commission on Sales", "Indirect Expenses", _L, "Expense", "Expense Account"),
    ("Depreciation", "Indirect Expenses", _L, "Expense", "Depreciation"),
    ("Entertainment Expenses", "Indirect Expenses", _L, "Expense", "Expense Account"),
    ("Exchange Gain/Loss", "Indirect Expenses", _L, "Expense", ""),
    ("Freight and Forwarding Charges", "Indirect Expenses", _L, "Expense", "Chargeable"),
    ("Gain/Loss on Asset Disposal", "Indirect Expenses", _L, "Expense", ""),
    ("Impairment", "Indirect Expenses", _L, "Expense", ""),
    ("Legal Expenses", "Indirect Expenses", _L, "Expense", "Expense Account"),
    ("Marketing Expenses", "Indirect Expenses", _L, "Expense", "Chargeable"),
    ("Miscellaneous Expenses", "Indirect Expenses", _L, "Expense", "Chargeable"),
    ("Office Maintenance Expenses", "Indirect Expenses", _L, "Expense", "Expense Account"),
    ("Office Rent", "Indirect Expenses", _L, "Expense", "Expense Account"),
    ("Postal Expenses", "Indirect Expenses", _L, "Expense", "Expense Account"),
    ("Print and Stationery", "Indirect Expenses", _L, "Expense", "Expense Account"),
    ("Round Off", "Indirect Expenses", _L, "Expense", "Round Off"),
    ("Salary", "Indirect Expenses", _L, "Expense", "Expense Account"),
    ("Sales Expenses", "Indirect Expenses", _L, "Expense", "Expense Account"),
    ("Telephone Expenses", "Indirect Expenses", _L, "Expense", "Expense Account"),
    ("Travel Expenses", "Indirect Expenses", _L, "Expense", "Expense Account"),
    ("Utility Expenses", "Indirect Expenses", _L, "Expense", "Expense Account"),
    ("Write Off", "Indirect Expenses", _L, "Expense", ""),
)
ROOT_ACCOUNTS = {row[3]: row[0] for row in STANDARD_CHART if row[1] is None}
DEFAULT_WAREHOUSES = (
    ("All Warehouses", None, 1, ""),
    ("Stores", "All Warehouses", 0, ""),
    ("Work In Progress", "All Warehouses", 0, ""),
    ("Finished Goods", "All Warehouses", 0, ""),
    ("Goods In Transit", "All Warehouses", 0, "Transit"),
)

DEFAULT_DEPARTMENTS = (
    "Accounts",
    "Marketing",
    "Sales",
    "Purchase",
    "Operations",
    "Production",
    "Dispatch",
    "Customer Service",
    "Human Resources",
    "Management",
    "Quality Management",
    "Research & Development",
    "Legal",
)

#: the store's rows of the Company creates in flight (not a doctype of the API).
FLIGHT_DOCTYPE = "Company Creation"
#: how often a Company create looks again at how many others run beside it (seconds).
FLIGHT_TICK = 0.05

DEFAULT_COMPANY = "Moran Sandbox"
DEFAULT_ABBR = "MS"


class DuplicateName(Exception):
    pass


class Store(Protocol):
    def get(self, doctype: str, name: str) -> dict | None: ...
    def add(self, doctype: str, name: str, doc: dict) -> None:
        """Insert; raises DuplicateName when the name is taken (atomically, like a primary key)."""

    def put(self, doctype: str, name: str, doc: dict) -> None: ...
    def remove(self, doctype: str, name: str) -> bool: ...
    def rows(self, doctype: str, match: dict | None = None) -> list[dict]:
        """Every document of the doctype; ``match`` ({field: str}) is a hint the store may use to read fewer."""

    def atomic(self):
        """A context in which several writes succeed or fail together."""

    def lock_site(self) -> None:
        """Inside ``atomic()``: wait for every other writer that took this lock to end, and hold it until this one
        ends (what ERPNext's ``for_update`` of a shared document does)."""


def _now() -> str:
    return dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")


def _date(value: Any, label: str) -> dt.date | None:
    if value in (None, ""):
        return None
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise EngineValidationError(f"{label} {value} is not a valid date", status=417, exc_type="ValidationError")


def _fmt_date(day: dt.date) -> str:
    # The recorded site's date format (mm-dd-yyyy) in messages.
    return day.strftime("%m-%d-%Y")


def _random_name() -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=10))


def _truthy(value) -> bool:
    return str(value).strip().lower() in {"1", "true"}


def _check_flag(value, message):
    if value in (None, ""):
        return 0
    if value in (0, 1, True, False) or str(value) in {"0", "1"}:
        return int(value)
    raise EngineValidationError(message, status=417, exc_type="ValidationError")


class ERPNextEmulator:
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
    ):
        """``default_company`` (company_name, abbr, default_currency, country) is the company the setup wizard made,
        the API user's default; ``fiscal_years``: calendar-year labels that exist with no company rows. Both apply
        only when the store is bootstrapped (a new site). ``company_latency``: the seconds a Company create takes
        when it runs alone (a real ERPNext takes about 2.5 s); concurrent creates share the site and take longer."""
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
        doc = {
            "name": name,
            "owner": self.user,
            "creation": _now(),
            "modified": _now(),
            "modified_by": self.user,
            "docstatus": 0,
            "idx": 0,
            **fields,
            "doctype": doctype,
        }
        try:
            self.store.add(doctype, name, doc)
        except DuplicateName:
            raise EngineConflictError(f"{doctype} {name} already exists", status=409, exc_type="DuplicateEntryError")
        return doc

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
        day = _date(date, "Date") or self.today
        for year in sorted(self.store.rows("Fiscal Year"), key=lambda y: y["year_start_date"], reverse=True):
            if _truthy(year.get("disabled") or 0):
                continue
            start, end = dt.date.fromisoformat(year["year_start_date"]), dt.date.fromisoformat(year["year_end_date"])
            companies = {row["company"] for row in year.get("companies") or []}
            if start <= day <= end and (not company or not companies or company in companies):
                if _truthy(as_dict or 0):
                    return {
                        "name": year["name"],
                        "year_start_date": year["year_start_date"],
                        "year_end_date": year["year_end_date"],
                    }
                return [year["name"], year["year_start_date"], year["year_end_date"]]
        if _truthy(boolean or 0):
            return False
        suffix = f" for {company}" if company else ""
        raise EngineValidationError(
            f"Date {_fmt_date(day)} is not in any active Fiscal Year{suffix}", status=417, exc_type="FiscalYearError"
        )

    # --- resources ---------------------------------------------------------------------------------------------
    def _check_doctype(self, doctype: str, *, listing: bool = False) -> None:
        if doctype not in FIELDS:
            if listing:
                raise EngineNotFoundError(f"DocType {doctype} not found", status=404)
            raise EngineBadRequestError(f"No module named '{doctype}'", status=500, exc_type="ImportError")

    def get_doc(self, doctype: str, name: str) -> dict:
        self._check_doctype(doctype)
        doc = self.store.get(doctype, name)
        if doc is None:
            raise EngineNotFoundError(f"{doctype} {name} not found", status=404)
        return doc

    def get_list(self, doctype, *, filters=None, fields=None, order_by=None, limit=0, start=0):
        self._check_doctype(doctype, listing=True)
        conditions = self._parse_filters(doctype, filters)
        fields = self._parse_json(fields, "fields") or ["name"]
        for field in fields:
            self._check_field(doctype, field.split(" as ")[0].strip("`"))
        parsed = self._parse_json(filters, "filters")
        match = {f: v for f, v in parsed.items() if isinstance(v, str)} if isinstance(parsed, dict) else {}
        rows = [row for row in self.store.rows(doctype, match) if all(cond(row) for cond in conditions)]
        if order_by:
            # "field [asc|desc]", the field possibly qualified as Frappe writes it: `tabCost Center`.`name` desc
            match = re.fullmatch(r"\s*(?:`tab[^`]+`\.)?`?(\w+)`?(?:\s+(asc|desc))?\s*", str(order_by), re.IGNORECASE)
            if match is None:
                raise EngineValidationError(f"Invalid order_by: {order_by}", status=417, exc_type="ValidationError")
            field, direction = match[1], (match[2] or "asc").lower()
            rows.sort(key=lambda r: _sort_key(r.get(field)), reverse=direction == "desc")
        else:
            rows.sort(key=lambda r: r["name"])
        rows = rows[int(start or 0) :]
        if limit:
            rows = rows[: int(limit)]
        if fields == ["*"]:
            return [{k: v for k, v in r.items() if not isinstance(v, list)} for r in rows]
        return [{f: r.get(f) for f in fields} for r in rows]

    def get_value(self, doctype, fieldname, filters=None):
        self._check_doctype(doctype)
        fieldname = self._parse_json(fieldname, "fieldname") or "name"
        names = fieldname if isinstance(fieldname, list) else [fieldname]
        if doctype == "System Settings":
            doc = self.store.get(doctype, doctype)
            return {f: doc.get(f) for f in names}
        rows = self.get_list(doctype, filters=filters or {}, fields=names, limit=1)
        return rows[0] if rows else {}

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
        doc["modified"] = _now()
        with self.store.atomic():
            self.store.put(doctype, name, doc)
        return doc

    def delete(self, doctype: str, name: str) -> None:
        self._check_doctype(doctype)
        if not self.store.remove(doctype, name):
            raise EngineNotFoundError(f"{doctype} {name} not found", status=404)

    # --- filters -----------------------------------------------------------------------------------------------
    @staticmethod
    def _parse_json(value, label):
        if isinstance(value, str) and value[:1] in "[{":
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise EngineBadRequestError(f"{exc}", status=500, exc_type="JSONDecodeError")
        return value

    def _check_field(self, doctype, field):
        if field != "*" and field not in FIELDS[doctype] and field not in STANDARD_FIELDS:
            raise EngineValidationError(f"Field not permitted in query: {field}", status=417, exc_type="DataError")

    def _parse_filters(self, doctype, filters):
        filters = self._parse_json(filters, "filters") or []
        items = []
        if isinstance(filters, dict):
            for field, value in filters.items():
                if isinstance(value, list) and len(value) == 2:
                    items.append((doctype, field, value[0], value[1]))
                else:
                    items.append((doctype, field, "=", value))
        else:
            for item in filters:
                if len(item) == 4:
                    items.append(tuple(item))
                else:
                    items.append((doctype, *item))
        conditions = []
        for item_doctype, field, op, value in items:
            if item_doctype in CHILD_TABLES and CHILD_TABLES[item_doctype][0] == doctype:
                table = CHILD_TABLES[item_doctype][1]
                conditions.append(
                    lambda row, t=table, f=field, o=op, v=value: any(
                        _compare(child.get(f), o, v) for child in row.get(t) or []
                    )
                )
            else:
                self._check_field(doctype, field)
                conditions.append(lambda row, f=field, o=op, v=value: _compare(row.get(f), o, v))
        return conditions

    # --- doctypes ----------------------------------------------------------------------------------------------
    def _require_link(self, doctype, name, label):
        if doctype == "Currency":  # the site's currencies are ISO 4217's; not stored as documents here
            if name not in ISO_4217:
                raise EngineValidationError(
                    f"Could not find {label}: {name}", status=417, exc_type="LinkValidationError"
                )
            return
        if not name or self.store.get(doctype, name) is None:
            raise EngineValidationError(f"Could not find {label}: {name}", status=417, exc_type="LinkValidationError")

    def _company_for(self, doc, doctype):
        # A missing or null company is filled from the user's default company, as ERPNext does; "" is refused.
        if "company" not in doc or doc["company"] is None:
            defaults = self.store.get("Global Defaults", "Global Defaults") or {}
            doc["company"] = defaults.get("default_company") or DEFAULT_COMPANY
        if doc["company"] == "":
            raise EngineValidationError(
                f"Error: Value missing for {doctype}: Company", status=417, exc_type="MandatoryError"
            )
        self._require_link("Company", doc["company"], "Company")
        return self.store.get("Company", doc["company"])

    # --- company creation: slow, and racy when concurrent ------------------------------------------------------
    def _insert_company(self, doc):
        """A Company create as ERPNext runs it. It is slow (the chart of accounts, warehouses, departments...), slower
        still beside other creates (they share the site), and it runs under REPEATABLE READ: its ``on_update`` adds a
        row to the one shared "Cash" Mode of Payment and validates every row's account against its own snapshot, so a
        company that another create committed while this one ran has a row whose account this create cannot see:
        417 ``LinkValidationError``, and nothing of this company is saved. Serialized creates never fail this way.

        While it runs, the create is an "in-flight" row of the store (``Company Creation``), so that every process
        sharing the store knows how many creates run at once."""
        name = (doc.get("company_name") or "").strip()
        snapshot = {c["name"] for c in self.store.rows("Company")}
        if not name or name in snapshot:  # refused before the slow part (417 / 409), as ERPNext does
            with self.store.atomic():
                return self._create_company(doc)
        flight = self._flight_begin(name)
        try:
            self._company_work()
            with self.store.atomic():
                # The shared "Cash" Mode of Payment, loaded for update: a create that committed meanwhile is seen
                # there, while its accounts are not in this create's snapshot.
                self.store.lock_site()
                committed = [c for c in self.store.rows("Company") if c["name"] not in snapshot]
                if committed:
                    raise EngineValidationError(
                        f"Could not find Row #{len(snapshot) + 1}: Default Account: Cash - {committed[0]['abbr']}",
                        status=417,
                        exc_type="LinkValidationError",
                    )
                return self._create_company(doc)
        finally:
            self.store.remove(FLIGHT_DOCTYPE, flight)

    def _flight_begin(self, company: str) -> str:
        flight = uuid.uuid4().hex
        self.store.add(FLIGHT_DOCTYPE, flight, {"name": flight, "company": company, "started": time.time()})
        return flight

    def companies_in_flight(self) -> int:
        """How many Company creates run now (a create whose process died is forgotten after a while)."""
        horizon = time.time() - max(60.0, 20 * self.company_latency)
        return sum(1 for row in self.store.rows(FLIGHT_DOCTYPE) if row.get("started", 0) >= horizon)

    def _company_work(self) -> None:
        """``company_latency`` seconds of work, at a share of the site's time that shrinks with every other create
        in flight (N creates at once take about N times as long each)."""
        remaining = self.company_latency
        while remaining > 0:
            share = 1 / max(1, self.companies_in_flight())
            tick = min(FLIGHT_TICK, remaining / share)
            time.sleep(tick)
            remaining -= tick * share

    def _create_company(self, doc):
        name = (doc.get("company_name") or "").strip()
        if not name:
            raise EngineValidationError("Company is required", status=417, exc_type="ValidationError")
        abbr = (doc.get("abbr") or "").strip() or "".join(word[0] for word in name.split()).upper()
        if self.store.get("Company", name) is None:
            for other in self.store.rows("Company"):
                if other.get("abbr", "").lower() == abbr.lower():
                    raise EngineValidationError(
                        "Abbreviation already used for another company", status=417, exc_type="ValidationError"
                    )
        currency = doc.get("default_currency") or "USD"
        self._require_link("Currency", currency, "Default Currency")
        fields = {
            "company_name": name,
            "abbr": abbr,
            "default_currency": currency,
            "country": doc.get("country") or "",
            "is_group": 0,
            "chart_of_accounts": "Standard",
            "create_chart_of_accounts_based_on": "Standard Template",
            "default_cash_account": f"Cash - {abbr}",
            "default_receivable_account": f"Debtors - {abbr}",
            "default_payable_account": f"Creditors - {abbr}",
            "default_income_account": f"Sales - {abbr}",
            "default_expense_account": f"Cost of Goods Sold - {abbr}",
            "cost_center": f"Main - {abbr}",
            "round_off_account": f"Round Off - {abbr}",
            "round_off_cost_center": f"Main - {abbr}",
            "write_off_account": f"Write Off - {abbr}",
            "exchange_gain_loss_account": f"Exchange Gain/Loss - {abbr}",
            "default_inventory_account": f"Stock In Hand - {abbr}",
            "stock_adjustment_account": f"Stock Adjustment - {abbr}",
            "enable_perpetual_inventory": 1,
        }
        company = self._add_raw("Company", name, fields)
        # What ERPNext makes with a company: its chart, cost centers and warehouses.
        for account_name, parent, is_group, root_type, account_type in STANDARD_CHART:
            self._add_raw(
                "Account",
                f"{account_name} - {abbr}",
                {
                    "account_name": account_name,
                    "company": name,
                    "is_group": is_group,
                    "root_type": root_type,
                    "report_type": "Balance Sheet"
                    if root_type in {"Asset", "Liability", "Equity"}
                    else "Profit and Loss",
                    "parent_account": f"{parent} - {abbr}" if parent else "",
                    "account_type": account_type,
                    "account_currency": currency,
                    "disabled": 0,
                },
            )
        self._add_raw(
            "Cost Center",
            f"{name} - {abbr}",
            {"cost_center_name": name, "company": name, "is_group": 1, "parent_cost_center": "", "disabled": 0},
        )
        self._add_raw(
            "Cost Center",
            f"Main - {abbr}",
            {
                "cost_center_name": "Main",
                "company": name,
                "is_group": 0,
                "parent_cost_center": f"{name} - {abbr}",
                "disabled": 0,
            },
        )
        for department in DEFAULT_DEPARTMENTS:
            if self.store.get("Department", "All Departments") is None:
                break  # a site bootstrapped before departments were emulated
            self._add_raw(
                "Department",
                f"{department} - {abbr}",
                {
                    "department_name": department,
                    "parent_department": "All Departments",
                    "company": name,
                    "is_group": 0,
                },
            )
        for wh_name, parent, is_group, wh_type in DEFAULT_WAREHOUSES:
            self._add_raw(
                "Warehouse",
                f"{wh_name} - {abbr}",
                {
                    "warehouse_name": wh_name,
                    "company": name,
                    "is_group": is_group,
                    "warehouse_type": wh_type,
                    "parent_warehouse": f"{parent} - {abbr}" if parent else "",
                    "disabled": 0,
                },
            )
        return company

    def _create_fiscal_year(self, doc):
        label = (doc.get("year") or "").strip()
        if not label:
            raise EngineValidationError(
                "Error: Value missing for Fiscal Year: Year Name", status=417, exc_type="MandatoryError"
            )
        start = _date(doc.get("year_start_date"), "Year Start Date")
        end = _date(doc.get("year_end_date"), "Year End Date")
        if (
            start is None
            or end is None
            or (not _truthy(doc.get("is_short_year") or 0) and end != _add_year(start) - dt.timedelta(days=1))
        ):
            raise EngineValidationError(
                "Fiscal Year End Date should be one year after Fiscal Year Start Date",
                status=417,
                exc_type="InvalidDates",
            )
        companies = [{"company": row.get("company")} for row in doc.get("companies") or []]
        for i, row in enumerate(companies, 1):
            self._require_link("Company", row["company"], f"Row #{i}: Company")
        mine = {row["company"] for row in companies}
        for other in self.store.rows("Fiscal Year"):
            if other["name"] == label:
                continue
            o_start, o_end = (
                dt.date.fromisoformat(other["year_start_date"]),
                dt.date.fromisoformat(other["year_end_date"]),
            )
            if (o_start, o_end) == (start, end):
                raise EngineValidationError(
                    f"Fiscal Year Start Date and Fiscal Year End Date are already set in Fiscal Year {other['name']}",
                    status=417,
                    exc_type="ValidationError",
                )
            theirs = {row["company"] for row in other.get("companies") or []}
            if start <= o_end and o_start <= end and (not mine or not theirs or mine & theirs):
                raise EngineConflictError(
                    f"Year start date or end date is overlapping with {other['name']}. To avoid please set company",
                    status=409,
                    exc_type="NameError",
                )
        return self._add_raw(
            "Fiscal Year",
            label,
            {
                "year": label,
                "year_start_date": start.isoformat(),
                "year_end_date": end.isoformat(),
                "disabled": 0,
                "is_short_year": int(_truthy(doc.get("is_short_year") or 0)),
                "auto_created": 0,
                "companies": [
                    {
                        "name": _random_name(),
                        "company": c["company"],
                        "parent": label,
                        "parentfield": "companies",
                        "parenttype": "Fiscal Year",
                        "idx": i,
                        "doctype": "Fiscal Year Company",
                    }
                    for i, c in enumerate(companies, 1)
                ],
            },
        )

    def _validate_update_fiscal_year(self, doc, changes):
        for field in ("year_start_date", "year_end_date"):
            if field in changes and str(changes[field]) != doc[field]:
                raise EngineValidationError(
                    "Cannot change Fiscal Year Start Date and Fiscal Year End Date once the Fiscal Year is saved.",
                    status=417,
                    exc_type="ValidationError",
                )
        if "companies" in changes:
            rows = []
            # Rows already on the year were validated when they were added: checking only the new ones keeps a year
            # shared by hundreds of companies from costing a read per company on every update.
            present = {row.get("company") for row in doc.get("companies") or []}
            for i, row in enumerate(changes["companies"] or [], 1):
                if row.get("company") not in present:
                    self._require_link("Company", row.get("company"), f"Row #{i}: Company")
                rows.append(
                    {
                        "name": _random_name(),
                        "company": row["company"],
                        "parent": doc["name"],
                        "parentfield": "companies",
                        "parenttype": "Fiscal Year",
                        "idx": i,
                        "doctype": "Fiscal Year Company",
                    }
                )
            changes["companies"] = rows

    def _create_account(self, doc):
        name = (doc.get("account_name") or "").strip()
        if not name:
            raise EngineValidationError(
                "Error: Value missing for Account: Account Name", status=417, exc_type="MandatoryError"
            )
        company = self._company_for(doc, "Account")
        parent = doc.get("parent_account") or ""
        if parent:
            self._require_link("Account", parent, "Parent Account")
        elif not doc.get("root_type"):
            raise EngineValidationError("Root Type is mandatory", status=417, exc_type="ValidationError")
        number = doc.get("account_number")
        full = f"{number} - {name} - {company['abbr']}" if number else f"{name} - {company['abbr']}"
        root_type = doc.get("root_type") or self.store.get("Account", parent)["root_type"]
        return self._add_raw(
            "Account",
            full,
            {
                "account_name": name,
                "account_number": number or "",
                "company": company["name"],
                "parent_account": parent,
                "is_group": int(doc.get("is_group") or 0),
                "root_type": root_type,
                "report_type": doc.get("report_type")
                or ("Balance Sheet" if root_type in {"Asset", "Liability", "Equity"} else "Profit and Loss"),
                "account_type": doc.get("account_type") or "",
                "account_currency": company["default_currency"],
                "disabled": 0,
            },
        )

    def _create_cost_center(self, doc):
        name = (doc.get("cost_center_name") or "").strip()
        if not name:
            raise EngineValidationError(
                "Error: Value missing for Cost Center: Cost Center Name", status=417, exc_type="MandatoryError"
            )
        company = self._company_for(doc, "Cost Center")
        parent = doc.get("parent_cost_center") or ""
        if not parent:
            raise EngineValidationError("Please enter parent cost center", status=417, exc_type="ValidationError")
        parent_doc = self.store.get("Cost Center", parent)
        if parent_doc is None:
            raise EngineValidationError(
                f"Could not find Parent Cost Center: {parent}", status=417, exc_type="LinkValidationError"
            )
        if not int(parent_doc.get("is_group") or 0):
            raise EngineValidationError(
                f"{parent} is not a group node. Please select a group node as parent cost center",
                status=417,
                exc_type="ValidationError",
            )
        number = doc.get("cost_center_number")
        full = f"{number} - {name} - {company['abbr']}" if number else f"{name} - {company['abbr']}"
        return self._add_raw(
            "Cost Center",
            full,
            {
                "cost_center_name": name,
                "cost_center_number": number or "",
                "company": company["name"],
                "parent_cost_center": parent,
                "is_group": int(doc.get("is_group") or 0),
                "disabled": 0,
            },
        )

    def _create_warehouse(self, doc):
        name = doc.get("warehouse_name")
        if name is None:
            # What ERPNext does when warehouse_name is missing: a deterministic 500.
            raise EngineBadRequestError(
                "'NoneType' object has no attribute 'endswith'", status=500, exc_type="AttributeError"
            )
        company = self._company_for(doc, "Warehouse")
        suffix = f" - {company['abbr']}"
        full = name if name.endswith(suffix) else name + suffix
        parent = doc.get("parent_warehouse") or ""
        if parent:
            self._require_link("Warehouse", parent, "Parent Warehouse")
        return self._add_raw(
            "Warehouse",
            full,
            {
                "warehouse_name": name,
                "company": company["name"],
                "parent_warehouse": parent,
                "is_group": int(doc.get("is_group") or 0),
                "warehouse_type": doc.get("warehouse_type") or "",
                "disabled": 0,
            },
        )

    def _create_group(self, doctype, doc):
        name_field, parent_field, root = GROUP_ROOTS[doctype]
        name = (doc.get(name_field) or "").strip()
        if not name:
            raise EngineValidationError(f"{doctype} Name is required", status=417, exc_type="ValidationError")
        parent = doc.get(parent_field) or root
        self._require_link(doctype, parent, f"Parent {doctype}")
        return self._add_raw(
            doctype, name, {name_field: name, parent_field: parent, "is_group": int(doc.get("is_group") or 0)}
        )

    def _create_price_list(self, doc):
        name = (doc.get("price_list_name") or "").strip()
        if not name:
            raise EngineValidationError("Price List Name is required", status=417, exc_type="ValidationError")
        fields = {
            "price_list_name": name,
            "currency": doc.get("currency") or "USD",
            "enabled": 1,
            "selling": doc.get("selling", 0),
            "buying": doc.get("buying", 0),
        }
        self._validate_update_price_list({}, fields)
        return self._add_raw("Price List", name, fields)

    def _validate_update_price_list(self, doc, changes):
        message = "Price List must be applicable for Buying or Selling"
        for flag in ("selling", "buying"):
            if flag in changes:
                changes[flag] = _check_flag(changes[flag], message)
        if "currency" in changes:
            self._require_link("Currency", changes["currency"], "Currency")
        merged = {**doc, **changes}
        if not (int(merged.get("selling") or 0) or int(merged.get("buying") or 0)):
            raise EngineValidationError(message, status=417, exc_type="ValidationError")

    def _create_user(self, doc):
        email = (doc.get("email") or "").strip()
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
            raise EngineValidationError(
                f"{email} is not a valid Email Address", status=417, exc_type="InvalidEmailAddressError"
            )
        if not (doc.get("first_name") or "").strip():
            raise EngineValidationError(
                "Error: Value missing for User: First Name", status=417, exc_type="MandatoryError"
            )
        roles = self._role_rows(doc.get("roles") or [], email.lower())
        first, last = doc["first_name"].strip(), (doc.get("last_name") or "").strip()
        return self._add_raw(
            "User",
            email.lower(),
            {
                "email": email.lower(),
                "first_name": first,
                "last_name": last,
                "full_name": f"{first} {last}".strip(),
                "username": re.sub(r"\W+", "_", first.lower()),
                "enabled": 1,
                "user_type": "System User",
                "roles": roles,
            },
        )

    def _role_rows(self, rows, parent):
        out = []
        for i, row in enumerate(rows, 1):
            self._require_link("Role", row.get("role"), f"Row #{i}: Role")
            out.append(
                {
                    "name": _random_name(),
                    "role": row["role"],
                    "parent": parent,
                    "parentfield": "roles",
                    "parenttype": "User",
                    "idx": i,
                    "doctype": "Has Role",
                }
            )
        return out

    def _validate_update_user(self, doc, changes):
        if "roles" in changes:
            changes["roles"] = self._role_rows(changes["roles"] or [], doc["name"])

    def _create_user_permission(self, doc):
        self._require_link("User", doc.get("user"), "User")
        allow = doc.get("allow") or ""
        if allow not in FIELDS:
            raise EngineValidationError(f"Could not find Allow: {allow}", status=417, exc_type="LinkValidationError")
        self._require_link(allow, doc.get("for_value"), "For Value")
        apply_all = int(doc.get("apply_to_all_doctypes", 1) or 0)
        # ERPNext's own duplicate check is a read before the insert (names are random), so two concurrent creates can
        # both pass it: the same race is kept here on purpose.
        for other in self.store.rows("User Permission"):
            if (other["user"], other["allow"], other["for_value"], other["apply_to_all_doctypes"]) == (
                doc["user"],
                allow,
                doc["for_value"],
                apply_all,
            ) and apply_all:
                raise EngineConflictError("User permission already exists", status=409, exc_type="DuplicateEntryError")
        return self._add_raw(
            "User Permission",
            _random_name(),
            {
                "user": doc["user"],
                "allow": allow,
                "for_value": doc["for_value"],
                "apply_to_all_doctypes": apply_all,
                "applicable_for": doc.get("applicable_for") or None,
                "is_default": int(doc.get("is_default") or 0),
                "hide_descendants": 0,
            },
        )


def _add_year(day: dt.date) -> dt.date:
    try:
        return day.replace(year=day.year + 1)
    except ValueError:  # 29 February
        return day.replace(year=day.year + 1, day=28)


def _compare(actual, op, expected) -> bool:
    op = str(op).strip().lower()
    if op == "is":
        is_set = actual not in (None, "")
        return is_set if str(expected).lower() == "set" else not is_set
    if op in {"in", "not in"}:
        values = expected if isinstance(expected, list) else [v.strip() for v in str(expected).split(",")]
        found = str(actual) in {str(v) for v in values}
        return found if op == "in" else not found
    if op in {"like", "not like"}:
        pattern = "^" + re.escape(str(expected)).replace("%", ".*").replace("_", ".") + "$"
        found = re.match(pattern, str(actual or ""), re.IGNORECASE) is not None
        return found if op == "like" else not found
    a, e = _normalise(actual), _normalise(expected)
    if op in {"=", "=="}:
        return a == e
    if op == "!=":
        return a != e
    try:
        return {"<": a < e, "<=": a <= e, ">": a > e, ">=": a >= e}[op]
    except TypeError:
        return False
    except KeyError:
        raise EngineValidationError(
            f"Operator must be one of =, !=, <, <=, >, >=, like, in, is: {op}", status=417, exc_type="ValidationError"
        )


def _sort_key(value):
    # Numbers before text, each in its own order, so a column of mixed types still sorts (as SQL would).
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, "" if value is None else str(value))


def _normalise(value):
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    text = "" if value is None else str(value)
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return text
