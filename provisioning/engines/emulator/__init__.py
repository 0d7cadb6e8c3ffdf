"""An emulation of the parts of an ERPNext v15 site that provisioning touches.

It reproduces what ``shared/erpnext-recordings`` shows a real server does: the names it generates (``Ops - RTL``),
the duplicates it rejects (409 ``DuplicateEntryError``) and the ones it accepts (User Permission), mandatory fields,
link validation (417), the global fiscal-year labels and overlaps, the silent fill of a missing ``company`` from the
default company, the default warehouses, cost centers and accounts a new company gets, and the deterministic 500s.

The state lives in a *store* (the database store of the sandbox engine, or the tests' in-memory one), so the same rules
serve the sandbox engine (shared by every worker process through the database) and the Frappe-compatible HTTP test
server.

The package is split by concern: ``tables`` (what a site holds), ``values`` (Frappe's value formats), ``store`` (where
documents live), ``query`` (reads: filters, fields, order, paging), ``doctypes`` (the rules of each doctype) and
``site`` (bootstrap, methods, writes).
"""

from provisioning.engines.emulator.doctypes import FLIGHT_DOCTYPE, FLIGHT_TICK
from provisioning.engines.emulator.site import ERPNextEmulator
from provisioning.engines.emulator.store import DuplicateName, Store
from provisioning.engines.emulator.tables import DEFAULT_ABBR, DEFAULT_COMPANY, ERPNEXT_VERSION, FRAPPE_VERSION

__all__ = [
    "DEFAULT_ABBR",
    "DEFAULT_COMPANY",
    "ERPNEXT_VERSION",
    "FLIGHT_DOCTYPE",
    "FLIGHT_TICK",
    "FRAPPE_VERSION",
    "DuplicateName",
    "ERPNextEmulator",
    "Store",
]
