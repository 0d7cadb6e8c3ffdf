"""Fixtures for tests that provision through the ``erpnext`` engine: a Frappe-compatible test server and the
EngineConnection row that points at it (a worker subprocess reaches it through that row's URL)."""

from __future__ import annotations

import pytest

from tenants.models import EngineConnection
from tests.support.frappe_server import FrappeTestServer


@pytest.fixture
def frappe():
    server = FrappeTestServer().start()
    yield server
    server.stop()


@pytest.fixture
def lab_engine(frappe):
    return EngineConnection.objects.create(
        name="lab",
        kind=EngineConnection.Kind.ERPNEXT,
        base_url=frappe.url,
        api_key=frappe.api_key,
        api_secret=frappe.api_secret,
        connect_timeout=2,
        read_timeout=10,
    )
