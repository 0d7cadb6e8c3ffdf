"""What a step may ask of an engine: the subset of the Frappe REST API that provisioning uses.

Both engines implement it with the same semantics (names, duplicates, mandatory fields, errors), so the steps do not
know which one they talk to. Calls raise the errors of :mod:`provisioning.engines.errors`.
"""

from __future__ import annotations

from typing import Any, Protocol

# What every tenant's workspace holds in ERPNext terms: the steps create and check these, and an engine that answers
# without a site (the benchmarks' null engine) answers with them.
ADMIN_ROLES = ("Accounts Manager", "Accounts User", "Stock Manager", "Stock User", "Sales User", "Purchase User")
DEFAULT_WAREHOUSES = ("Stores", "Work In Progress", "Finished Goods", "Goods In Transit")
ROOT_ACCOUNTS = {
    "Asset": ("Application of Funds (Assets)", "Balance Sheet"),
    "Liability": ("Source of Funds (Liabilities)", "Balance Sheet"),
    "Equity": ("Equity", "Balance Sheet"),
    "Income": ("Income", "Profit and Loss"),
    "Expense": ("Expenses", "Profit and Loss"),
}


class Engine(Protocol):
    #: "erpnext" or "sandbox"; for messages only, steps never branch on it.
    kind: str
    #: the connection's name, for messages ("engine 'lab' is unreachable").
    name: str

    def call(self, method: str, **params: Any) -> Any:
        """``GET /api/method/<method>``; returns the ``message`` of the response."""

    def get_doc(self, doctype: str, name: str) -> dict:
        """``GET /api/resource/<doctype>/<name>``; raises EngineNotFoundError when it does not exist."""

    def get_list(
        self,
        doctype: str,
        *,
        filters: Any = None,
        fields: list[str] | None = None,
        order_by: str | None = None,
        limit: int = 0,
    ) -> list[dict]:
        """``GET /api/resource/<doctype>``; ``limit=0`` means every row (the client pages as needed)."""

    def insert(self, doctype: str, doc: dict) -> dict:
        """``POST /api/resource/<doctype>``; returns the created document."""

    def update(self, doctype: str, name: str, changes: dict) -> dict:
        """``PUT /api/resource/<doctype>/<name>`` (a partial update; a child table replaces the whole table)."""

    def delete(self, doctype: str, name: str) -> None:
        """``DELETE /api/resource/<doctype>/<name>``."""


def find_doc(engine: Engine, doctype: str, name: str) -> dict | None:
    """The document, or None when the engine says 404. Other errors propagate."""
    from provisioning.engines.errors import EngineNotFoundError

    try:
        return engine.get_doc(doctype, name)
    except EngineNotFoundError:
        return None
