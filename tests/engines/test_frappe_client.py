"""Contract tests of the Frappe REST client against the Frappe-compatible test server: every error class, paging,
timeouts, refused connections, and the secret nowhere."""

from __future__ import annotations

import datetime as dt
import json
from email.utils import format_datetime

import pytest

from provisioning.engines import engine_for
from provisioning.engines.errors import (
    EngineAuthError,
    EngineBadRequestError,
    EngineConflictError,
    EngineError,
    EngineNotFoundError,
    EngineTransientError,
    EngineValidationError,
)
from provisioning.engines.frappe import FrappeClient, server_messages
from tenants.models import EngineConnection
from tests.support.frappe_server import RECORDINGS, FrappeTestServer


@pytest.fixture
def server():
    srv = FrappeTestServer().start()
    yield srv
    srv.stop()


def client_of(server, **overrides) -> FrappeClient:
    options = {
        "name": "lab",
        "base_url": server.url,
        "api_key": server.api_key,
        "api_secret": server.api_secret,
        "connect_timeout": 2,
        "read_timeout": 5,
    }
    options.update(overrides)
    return FrappeClient(**options)


def assert_no_secret(exc: EngineError, secret: str):
    for text in (str(exc), repr(exc), exc.message, json.dumps(exc.as_step_error())):
        assert secret not in text


def test_it_calls_methods_and_returns_their_message(server):
    # given
    client = client_of(server)
    # when
    pong = client.call("ping")
    settings = client.call("frappe.client.get_value", doctype="System Settings", fieldname=["setup_complete"])
    # then
    assert pong == "pong"
    assert settings == {"setup_complete": "1"}


def test_it_pages_through_every_row_when_limit_is_zero(server):
    # given: the default company's chart has more rows than a page
    client = client_of(server)
    total = client.call("frappe.client.get_count", doctype="Account", filters={"company": "Lab Co"})
    # when
    rows = client.get_list("Account", filters={"company": "Lab Co"}, fields=["name"], page_length=7)
    # then
    assert total > 20
    assert len(rows) == total
    assert len({row["name"] for row in rows}) == total
    pages = [r for r in server.requests if r.method == "GET" and r.path == "/api/resource/Account"]
    assert len(pages) == total // 7 + 1


def test_it_lists_a_limited_ordered_page_with_json_encoded_filters(server):
    # given
    client = client_of(server)
    # when
    rows = client.get_list(
        "Account",
        filters=[["company", "=", "Lab Co"], ["is_group", "=", 1]],
        fields=["name", "is_group"],
        order_by="name desc",
        limit=3,
    )
    # then
    assert len(rows) == 3
    assert [r["name"] for r in rows] == sorted((r["name"] for r in rows), reverse=True)
    assert all(r["is_group"] == 1 for r in rows)


def test_it_inserts_updates_and_deletes(server):
    # given
    client = client_of(server)
    # when
    created = client.insert("Price List", {"price_list_name": "LC Buying", "buying": 1})
    updated = client.update("Price List", "LC Buying", {"currency": "EUR"})
    client.delete("Price List", "LC Buying")
    # then
    assert (created["name"], created["currency"]) == ("LC Buying", "USD")
    assert updated["currency"] == "EUR"
    with pytest.raises(EngineNotFoundError):
        client.get_doc("Price List", "LC Buying")


def test_it_quotes_names_with_slashes_and_spaces(server):
    # given
    client = client_of(server)
    # when
    doc = client.get_doc("Account", "Exchange Gain/Loss - LC")
    # then
    assert doc["name"] == "Exchange Gain/Loss - LC"


def test_it_maps_404_to_not_found(server):
    with pytest.raises(EngineNotFoundError) as info:
        client_of(server).get_doc("Company", "No Such Company")
    assert (info.value.status, info.value.message) == (404, "Company No Such Company not found")


def test_it_keeps_the_exc_type_of_a_409(server):
    # given
    client = client_of(server)
    client.insert("Customer Group", {"customer_group_name": "LC Customers"})
    # when
    with pytest.raises(EngineConflictError) as duplicate:
        client.insert("Customer Group", {"customer_group_name": "LC Customers"})
    with pytest.raises(EngineConflictError) as overlap:
        client.insert(
            "Fiscal Year",
            {
                "year": "Overlap",
                "year_start_date": f"{dt.date.today().year}-07-01",
                "year_end_date": f"{dt.date.today().year + 1}-06-30",
            },
        )
    # then: HTML stripped from the duplicate's message
    assert duplicate.value.is_duplicate and duplicate.value.message == "Customer Group LC Customers already exists"
    assert not overlap.value.is_duplicate and overlap.value.exc_type == "NameError"


def test_it_maps_417_to_validation_with_the_decoded_message(server):
    # given
    server.inject(417, doctype="Warehouse", exc_type="ValidationError", message="<strong>Stores</strong> is frozen")
    # when
    with pytest.raises(EngineValidationError) as info:
        client_of(server).insert("Warehouse", {"warehouse_name": "X", "company": "Lab Co"})
    # then
    assert (info.value.status, info.value.exc_type, info.value.message) == (417, "ValidationError", "Stores is frozen")
    assert not info.value.transient


def test_it_decodes_several_server_messages_and_drops_a_warning_next_to_an_error():
    # given: recorded bodies (a User without first_name; an unknown app)
    users = json.loads((RECORDINGS / "07-users.json").read_text())[11]["response"]["body"]
    app = json.loads((RECORDINGS / "09-errors-misc.json").read_text())[20]["response"]["body"]
    # when / then
    assert server_messages(users) == ["Error: Value missing for User: First Name"]
    assert server_messages(app) == [
        "App no_such_app is not installed",
        "Failed to get method for command no_such_app.api.ping with App no_such_app is not installed",
    ]


def test_it_never_retries_a_deterministic_500(server):
    with pytest.raises(EngineBadRequestError) as info:
        client_of(server).insert("Warehouse", {"company": "Lab Co"})
    assert info.value.exc_type == "AttributeError" and not info.value.transient
    assert "'NoneType' object has no attribute 'endswith'" in info.value.message
    assert "traceback" not in info.value.message


@pytest.mark.parametrize("exc_type", ["QueryDeadlockError", "QueryTimeoutError"])
def test_it_retries_a_database_conflict_500(server, exc_type):
    server.inject(500, exc_type=exc_type, message="Deadlock found when trying to get lock")
    with pytest.raises(EngineTransientError) as info:
        client_of(server).call("ping")
    assert (info.value.status, info.value.exc_type) == (500, exc_type)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_it_retries_a_gateway_error_with_an_html_body(server, status):
    server.inject(status)
    with pytest.raises(EngineTransientError) as info:
        client_of(server).call("ping")
    assert info.value.status == status and "not a JSON response" in info.value.message


def test_it_honours_retry_after_in_seconds_and_as_a_date(server):
    # given
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    server.inject(429, retry_after="7")
    server.inject(429, retry_after=format_datetime(later, usegmt=True))
    client = client_of(server)
    # when
    with pytest.raises(EngineTransientError) as seconds:
        client.call("ping")
    with pytest.raises(EngineTransientError) as date:
        client.call("ping")
    # then
    assert seconds.value.retry_after == 7
    assert 25 <= date.value.retry_after <= 31


def test_it_gives_up_waiting_after_the_read_timeout(server):
    # given
    server.latency = 1.5
    # when
    with pytest.raises(EngineTransientError) as info:
        client_of(server, read_timeout=0.3).call("ping")
    # then
    assert info.value.exc_type == "Timeout" and "0.3 s" in info.value.message


def test_it_reports_a_refused_connection_as_transient(server):
    # given
    client = client_of(server)
    assert client.call("ping") == "pong"  # a pooled connection exists
    server.stop()
    # when
    with pytest.raises(EngineTransientError) as info:
        client.call("ping")
    # then
    assert info.value.exc_type == "ConnectionError" and "unreachable" in info.value.message


def test_it_says_the_credentials_were_refused_without_showing_them(server):
    # given
    wrong = client_of(server, api_secret="wrong-" + server.api_secret)
    # when
    with pytest.raises(EngineAuthError) as info:
        wrong.get_list("Company")
    # then
    assert info.value.message == "engine 'lab' refused the credentials (check the API key and secret of the connection)"
    assert_no_secret(info.value, server.api_secret)
    assert_no_secret(info.value, "wrong-" + server.api_secret)


def test_it_maps_403_to_an_auth_error(server):
    server.inject(403, exc_type="PermissionError", message="Insufficient Permission for Company")
    with pytest.raises(EngineAuthError) as info:
        client_of(server).get_list("Company")
    assert info.value.status == 403 and "Insufficient Permission for Company" in info.value.message


def test_it_never_shows_the_secret_even_when_the_engine_echoes_it(server):
    # given: a server message that repeats the secret
    server.inject(417, message=f"token {server.api_key}:{server.api_secret} is odd")
    client = client_of(server)
    # when
    with pytest.raises(EngineValidationError) as info:
        client.call("ping")
    # then
    assert_no_secret(info.value, server.api_secret)
    assert server.api_secret not in repr(client)


@pytest.mark.django_db
def test_it_is_the_engine_of_an_erpnext_connection(server):
    # given
    connection = EngineConnection.objects.create(
        name="lab", kind="erpnext", base_url=server.url, api_key=server.api_key, api_secret=server.api_secret
    )
    # when
    engine = engine_for(connection)
    # then
    assert (engine.kind, engine.name) == ("erpnext", "lab")
    assert engine.call("frappe.auth.get_logged_user") == "Administrator"
    assert engine_for(connection).client is engine.client  # one pooled session per connection and process
    assert server.api_secret not in repr(engine)


def test_it_filters_on_a_child_table_and_pages_in_a_qualified_name_order(server):
    # given: two years listing Lab Co, one for every company
    client = client_of(server)
    for year in ("2031", "2032"):
        client.insert(
            "Fiscal Year",
            {
                "year": year,
                "year_start_date": f"{year}-01-01",
                "year_end_date": f"{year}-12-31",
                "companies": [{"company": "Lab Co"}],
            },
        )
    # when
    rows = client.get_list("Fiscal Year", filters=[["Fiscal Year Company", "company", "=", "Lab Co"]], page_length=1)
    # then
    assert [row["name"] for row in rows] == ["2031", "2032"]
    sent = [r for r in server.requests if r.path == "/api/resource/Fiscal Year" and r.method == "GET"]
    assert len(sent) == 3


def test_it_says_when_a_url_is_not_a_frappe_site(server):
    # given: the base URL answers with a web page
    server.inject(200, path_contains="/api/method/ping")
    # when
    with pytest.raises(EngineBadRequestError) as info:
        client_of(server).call("ping")
    # then
    assert info.value.message == (
        f"engine 'lab' answered GET /api/method/ping with something that is not Frappe's JSON (HTTP 200): "
        f"is {server.url} an ERPNext site?"
    )


def test_a_404_without_a_message_still_names_its_type(server):
    with pytest.raises(EngineNotFoundError) as info:
        client_of(server).delete("Price List", "No Such Price List")
    assert info.value.message == "DoesNotExistError (HTTP 404)"
