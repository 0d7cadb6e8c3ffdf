"""The null engine: for benchmarks only. It answers every look as if the tenant's resources were already in place
and every act at once, without reading or writing anything, so that a benchmark on it measures Moran's own cost per
step (the state writes, the lease, the task round trips) and nothing of an engine's.

It is never the default and cannot be used for real tenants: :func:`provisioning.engines.engine_for` refuses it
unless ``MORAN_NULL_ENGINE=1`` (set by ``benchmarks/throughput.py``), and the admin and ``tenant_create`` refuse to
make one otherwise. Nothing it "provisions" exists anywhere.
"""

from __future__ import annotations

from typing import Any

from provisioning.engines.base import ADMIN_ROLES, ROOT_ACCOUNTS

#: the fixed answers of the engine check (step 0)
_CALLS = {
    "ping": "pong",
    "frappe.auth.get_logged_user": "Administrator",
    "frappe.utils.change_log.get_versions": {"erpnext": {"version": "15.0.0"}, "frappe": {"version": "15.0.0"}},
}


class NullEngine:
    kind = "null"

    def __init__(self, connection, *, tenant=None, step: str | None = None):
        self.name = connection.name
        # Only what the looks compare (the company's abbreviation and currency); no query.
        self._abbr = getattr(tenant, "abbr", "")
        self._currency = getattr(tenant, "currency", "")

    def __repr__(self):
        return f"<NullEngine {self.name}>"

    def call(self, method: str, **params: Any) -> Any:
        if method in _CALLS:
            return _CALLS[method]
        if method == "frappe.client.get_value":
            if params.get("doctype") == "System Settings":
                return {"setup_complete": 1}
            return {}  # no other company holds the abbreviation
        if method == "erpnext.accounts.utils.get_fiscal_year":
            return {"name": "null"}  # a fiscal year applies to every company
        return None

    def get_doc(self, doctype: str, name: str) -> dict:
        doc = {"name": name}
        if doctype == "Company":
            doc.update(abbr=self._abbr, default_currency=self._currency)
        elif doctype == "Price List":
            doc["currency"] = self._currency
        elif doctype == "User":
            doc["roles"] = [{"role": role} for role in ADMIN_ROLES]
        return doc

    def get_list(self, doctype, *, filters=None, fields=None, order_by=None, limit=0) -> list[dict]:
        if doctype == "Account":
            return [{"name": f"{name} - {self._abbr}", "root_type": t} for t, (name, _) in ROOT_ACCOUNTS.items()]
        if doctype == "User Permission":
            return [{"name": "null", "apply_to_all_doctypes": 1}]
        return []

    def insert(self, doctype: str, doc: dict) -> dict:
        return {"name": doc.get("name", ""), **doc}

    def update(self, doctype: str, name: str, changes: dict) -> dict:
        return {"name": name, **changes}

    def delete(self, doctype: str, name: str) -> None:
        return None
