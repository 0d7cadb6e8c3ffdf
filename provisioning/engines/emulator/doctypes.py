"""The rules of each doctype the steps create: links, naming, duplicates, what a company brings along, and the
concurrent company-creation race."""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid

from provisioning.currencies import ISO_4217
from provisioning.engines.emulator.store import field_values, get_many
from provisioning.engines.emulator.tables import (
    DEFAULT_COMPANY,
    DEFAULT_DEPARTMENTS,
    DEFAULT_WAREHOUSES,
    FIELDS,
    GROUP_ROOTS,
    STANDARD_CHART,
)
from provisioning.engines.emulator.values import add_year, check_flag, parse_date, random_name, truthy
from provisioning.engines.errors import (
    EngineBadRequestError,
    EngineConflictError,
    EngineValidationError,
)

#: the store's rows of the Company creates in flight (not a doctype of the API).
FLIGHT_DOCTYPE = "Company Creation"
#: how often a Company create looks again at how many others run beside it (seconds).
FLIGHT_TICK = 0.05


class DoctypeRules:
    """The per-doctype rules of :class:`~provisioning.engines.emulator.site.ERPNextEmulator` (a mixin over its store)."""

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

    def _company_and_parent(self, doc, doctype, parent: tuple[str, str] | None = None):
        """The document's company and, when asked, its parent document (None when missing), read together. A missing
        or null company is filled from the user's default company, as ERPNext does; "" is refused."""
        if "company" not in doc or doc["company"] is None:
            defaults = self.store.get("Global Defaults", "Global Defaults") or {}
            doc["company"] = defaults.get("default_company") or DEFAULT_COMPANY
        if doc["company"] == "":
            raise EngineValidationError(
                f"Error: Value missing for {doctype}: Company", status=417, exc_type="MandatoryError"
            )
        key = ("Company", doc["company"])
        found = get_many(self.store, [key, parent] if parent else [key])
        if key not in found:
            raise EngineValidationError(
                f"Could not find Company: {doc['company']}", status=417, exc_type="LinkValidationError"
            )
        return found[key], found.get(parent) if parent else None

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
        snapshot = set(field_values(self.store, "Company", "abbr"))
        if not name or name in snapshot:  # refused before the slow part (417 / 409), as ERPNext does
            with self.store.atomic():
                return self._create_company(doc)
        # A create that takes no time takes no share of the site's: only a slow one tells the others it runs.
        flight = self._flight_begin(name) if self.company_latency > 0 else None
        try:
            self._company_work()
            with self.store.atomic():
                # The shared "Cash" Mode of Payment, loaded for update: a create that committed meanwhile is seen
                # there, while its accounts are not in this create's snapshot.
                self.store.lock_site()
                abbrs = field_values(self.store, "Company", "abbr")
                committed = [other for other in abbrs if other not in snapshot]
                if committed:
                    raise EngineValidationError(
                        f"Could not find Row #{len(snapshot) + 1}: Default Account: Cash - {abbrs[committed[0]]}",
                        status=417,
                        exc_type="LinkValidationError",
                    )
                return self._create_company(doc, abbrs=abbrs)
        finally:
            if flight is not None:
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

    def _create_company(self, doc, abbrs: dict | None = None):
        """``abbrs``: every company's abbreviation by name, when the caller read them in this transaction."""
        name = (doc.get("company_name") or "").strip()
        if not name:
            raise EngineValidationError("Company is required", status=417, exc_type="ValidationError")
        abbr = (doc.get("abbr") or "").strip() or "".join(word[0] for word in name.split()).upper()
        if abbrs is None:
            abbrs = field_values(self.store, "Company", "abbr")
        if name not in abbrs:
            for other in abbrs.values():
                if (other or "").lower() == abbr.lower():
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
        # The company and everything it brings along in one write: the first name taken is the 409, as before.
        return self._add_raw_many([("Company", name, fields), *self._company_defaults(name, abbr, currency)])[0]

    def _company_defaults(self, name: str, abbr: str, currency: str) -> list[tuple[str, str, dict]]:
        """What ERPNext makes with a company: its chart, cost centers, departments and warehouses, as (doctype,
        name, fields) to add."""
        entries = []
        for account_name, parent, is_group, root_type, account_type in STANDARD_CHART:
            report_type = "Balance Sheet" if root_type in {"Asset", "Liability", "Equity"} else "Profit and Loss"
            fields = {
                "account_name": account_name,
                "company": name,
                "is_group": is_group,
                "root_type": root_type,
                "report_type": report_type,
                "parent_account": f"{parent} - {abbr}" if parent else "",
                "account_type": account_type,
                "account_currency": currency,
                "disabled": 0,
            }
            entries.append(("Account", f"{account_name} - {abbr}", fields))
        root_cc = {"cost_center_name": name, "company": name, "is_group": 1, "parent_cost_center": "", "disabled": 0}
        entries.append(("Cost Center", f"{name} - {abbr}", root_cc))
        main_cc = {
            "cost_center_name": "Main",
            "company": name,
            "is_group": 0,
            "parent_cost_center": f"{name} - {abbr}",
            "disabled": 0,
        }
        entries.append(("Cost Center", f"Main - {abbr}", main_cc))
        # A site bootstrapped before departments were emulated has no root department, and gets none.
        if self.store.get("Department", "All Departments") is not None:
            for department in DEFAULT_DEPARTMENTS:
                fields = {
                    "department_name": department,
                    "parent_department": "All Departments",
                    "company": name,
                    "is_group": 0,
                }
                entries.append(("Department", f"{department} - {abbr}", fields))
        for wh_name, parent, is_group, wh_type in DEFAULT_WAREHOUSES:
            fields = {
                "warehouse_name": wh_name,
                "company": name,
                "is_group": is_group,
                "warehouse_type": wh_type,
                "parent_warehouse": f"{parent} - {abbr}" if parent else "",
                "disabled": 0,
            }
            entries.append(("Warehouse", f"{wh_name} - {abbr}", fields))
        return entries

    def _create_fiscal_year(self, doc):
        label = (doc.get("year") or "").strip()
        if not label:
            raise EngineValidationError(
                "Error: Value missing for Fiscal Year: Year Name", status=417, exc_type="MandatoryError"
            )
        start = parse_date(doc.get("year_start_date"), "Year Start Date")
        end = parse_date(doc.get("year_end_date"), "Year End Date")
        if (
            start is None
            or end is None
            or (not truthy(doc.get("is_short_year") or 0) and end != add_year(start) - dt.timedelta(days=1))
        ):
            raise EngineValidationError(
                "Fiscal Year End Date should be one year after Fiscal Year Start Date",
                status=417,
                exc_type="InvalidDates",
            )
        companies = [{"company": row.get("company")} for row in doc.get("companies") or []]
        for i, row in enumerate(companies, 1):
            self._require_link("Company", row["company"], f"Row #{i}: Company")
        self._check_fiscal_year_overlaps(label, start, end, {row["company"] for row in companies})
        return self._add_raw(
            "Fiscal Year",
            label,
            {
                "year": label,
                "year_start_date": start.isoformat(),
                "year_end_date": end.isoformat(),
                "disabled": 0,
                "is_short_year": int(truthy(doc.get("is_short_year") or 0)),
                "auto_created": 0,
                "companies": [
                    {
                        "name": random_name(),
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

    def _check_fiscal_year_overlaps(self, label, start, end, mine: set) -> None:
        """Another year with the same dates (417), or one overlapping it for a shared company or for every company (409
        NameError: nothing with this name exists, so a 409 is not always "it is already there")."""
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
                        "name": random_name(),
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
        parent = doc.get("parent_account") or ""
        company, parent_doc = self._company_and_parent(doc, "Account", ("Account", parent) if parent else None)
        if parent:
            if parent_doc is None:
                raise EngineValidationError(
                    f"Could not find Parent Account: {parent}", status=417, exc_type="LinkValidationError"
                )
        elif not doc.get("root_type"):
            raise EngineValidationError("Root Type is mandatory", status=417, exc_type="ValidationError")
        number = doc.get("account_number")
        full = f"{number} - {name} - {company['abbr']}" if number else f"{name} - {company['abbr']}"
        root_type = doc.get("root_type") or parent_doc["root_type"]
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
        parent = doc.get("parent_cost_center") or ""
        company, parent_doc = self._company_and_parent(doc, "Cost Center", ("Cost Center", parent) if parent else None)
        if not parent:
            raise EngineValidationError("Please enter parent cost center", status=417, exc_type="ValidationError")
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
        parent = doc.get("parent_warehouse") or ""
        company, parent_doc = self._company_and_parent(doc, "Warehouse", ("Warehouse", parent) if parent else None)
        suffix = f" - {company['abbr']}"
        full = name if name.endswith(suffix) else name + suffix
        if parent and parent_doc is None:
            raise EngineValidationError(
                f"Could not find Parent Warehouse: {parent}", status=417, exc_type="LinkValidationError"
            )
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
                changes[flag] = check_flag(changes[flag], message)
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
        # Every role read at once; the first missing one (in row order) is the 417, as one by one.
        found = get_many(self.store, [("Role", row.get("role")) for row in rows if isinstance(row.get("role"), str)])
        for i, row in enumerate(rows, 1):
            if not isinstance(row.get("role"), str) or ("Role", row["role"]) not in found:
                raise EngineValidationError(
                    f"Could not find Row #{i}: Role: {row.get('role')}", status=417, exc_type="LinkValidationError"
                )
            out.append(
                {
                    "name": random_name(),
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
        # both pass it: the same race is kept here on purpose. Only this user's permissions can match.
        hint = {"user": doc["user"]} if isinstance(doc["user"], str) else None
        for other in self.store.rows("User Permission", hint):
            if (other["user"], other["allow"], other["for_value"], other["apply_to_all_doctypes"]) == (
                doc["user"],
                allow,
                doc["for_value"],
                apply_all,
            ) and apply_all:
                raise EngineConflictError("User permission already exists", status=409, exc_type="DuplicateEntryError")
        return self._add_raw(
            "User Permission",
            random_name(),
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
