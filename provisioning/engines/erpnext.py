"""The ERPNext engine: the :class:`~provisioning.engines.base.Engine` protocol over a real ERPNext v15 site's REST API.

Everything ERPNext-specific about transport and errors lives in :mod:`provisioning.engines.frappe`; the steps
send the documents (``company`` always explicit) and interpret 404/409/417 themselves.
"""

from __future__ import annotations

from typing import Any

from provisioning.engines.company_lock import company_creation_done
from provisioning.engines.frappe import FrappeClient, client_for


class ERPNextEngine:
    kind = "erpnext"

    def __init__(self, connection, *, client: FrappeClient | None = None):
        self.name = connection.name
        self.client = client or client_for(connection)

    def __repr__(self):
        return f"<ERPNextEngine {self.name}>"

    def call(self, method: str, **params: Any) -> Any:
        return self.client.call(method, **params)

    def get_doc(self, doctype: str, name: str) -> dict:
        return self.client.get_doc(doctype, name)

    def get_list(self, doctype, *, filters=None, fields=None, order_by=None, limit=0) -> list[dict]:
        return self.client.get_list(doctype, filters=filters, fields=fields, order_by=order_by, limit=limit)

    def insert(self, doctype: str, doc: dict) -> dict:
        try:
            return self.client.insert(doctype, doc)
        finally:
            if doctype == "Company":
                company_creation_done()  # the next tenant's create may start while this step looks again

    def update(self, doctype: str, name: str, changes: dict) -> dict:
        return self.client.update(doctype, name, changes)

    def delete(self, doctype: str, name: str) -> None:
        self.client.delete(doctype, name)
