"""Concurrent Company creates, as ``14-concurrent-company-creates.json`` recorded them: the emulator (and so the test
server and the sandbox) makes a create that overlaps another one fail with ERPNext's 417, unless they are serialized;
the Frappe client and the sandbox engine classify that 417 as transient."""

from __future__ import annotations

import json
import threading

import pytest
import requests

from provisioning.engines.emulator import FLIGHT_DOCTYPE, ERPNextEmulator
from provisioning.engines.errors import EngineTransientError, EngineValidationError
from provisioning.engines.frappe import FrappeClient
from tests.support.frappe_server import FrappeTestServer
from tests.support.memory_store import MemoryStore

#: the keys of the 417 in 14-concurrent-company-creates.json (recorded on a second lab, so not replayed with the
#: others): "Could not find Row #12: Default Account: Cash - R8808Z3", LinkValidationError, from erpnext (app).
RECORDED_417_KEYS = {"exception", "exc_type", "_exc_source", "exc", "_server_messages"}


def company(n: int) -> dict:
    return {"company_name": f"Race {n}", "abbr": f"RC{n}", "default_currency": "EUR", "country": "Germany"}


def create_at_once(create, docs) -> list:
    """Every create sent at the same moment (a barrier, one thread each); what each got, in order."""
    barrier = threading.Barrier(len(docs))
    outcomes: list = [None] * len(docs)

    def send(i, doc):
        barrier.wait()
        try:
            outcomes[i] = create(doc)
        except Exception as exc:  # the outcome under test
            outcomes[i] = exc

    threads = [threading.Thread(target=send, args=(i, doc)) for i, doc in enumerate(docs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_it_fails_a_create_that_overlaps_another_as_erpnext_does():
    # given a site where a company create takes a while
    site = ERPNextEmulator(MemoryStore(), company_latency=0.2)
    # when three creates are sent at the same moment
    outcomes = create_at_once(lambda doc: site.insert("Company", doc), [company(n) for n in (1, 2, 3)])
    # then the first to commit wins, and the ones that overlapped it fail with ERPNext's error, saving nothing
    failures = [o for o in outcomes if isinstance(o, Exception)]
    created = [o for o in outcomes if isinstance(o, dict)]
    assert failures and created
    for failure in failures:
        assert isinstance(failure, EngineValidationError)
        assert (failure.status, failure.exc_type) == (417, "LinkValidationError")
        assert failure.message.startswith("Could not find Row #")
        assert any(failure.message.endswith(f": Default Account: Cash - {c['abbr']}") for c in created)
    names = {c["name"] for c in site.store.rows("Company")}
    assert {c["name"] for c in created} <= names
    assert not any(
        site.store.get("Account", f"Cash - {company(n)['abbr']}") for n in (1, 2, 3) if f"Race {n}" not in names
    )
    assert site.store.rows(FLIGHT_DOCTYPE) == []


def test_it_creates_every_company_when_the_creates_are_serialized():
    # given
    site = ERPNextEmulator(MemoryStore(), company_latency=0.05)
    one_at_a_time = threading.Lock()

    def create(doc):
        with one_at_a_time:
            return site.insert("Company", doc)

    # when
    outcomes = create_at_once(create, [company(n) for n in range(1, 6)])
    # then
    assert [o["name"] for o in outcomes] == [f"Race {n}" for n in range(1, 6)]


def test_it_counts_the_creates_in_flight_while_they_run():
    # given a create that takes long enough to be seen running
    site = ERPNextEmulator(MemoryStore(), company_latency=0.3)
    seen = []
    thread = threading.Thread(target=lambda: site.insert("Company", company(1)))
    # when
    thread.start()
    while thread.is_alive() and not seen:
        if site.companies_in_flight():
            seen.append(site.companies_in_flight())
    thread.join()
    # then it was in flight, and is no longer
    assert seen == [1]
    assert site.companies_in_flight() == 0


def test_it_refuses_a_duplicate_company_at_once_with_409():
    # given
    site = ERPNextEmulator(MemoryStore(), company_latency=0.01)
    site.insert("Company", company(1))
    # when / then: the duplicate check comes before the slow part, as in ERPNext
    with pytest.raises(Exception) as caught:
        site.insert("Company", company(1))
    assert caught.value.status == 409


@pytest.fixture
def racy_server():
    server = FrappeTestServer(company_latency=0.2).start()
    yield server
    server.stop()


def test_the_test_server_answers_the_race_as_the_recorded_site_did(racy_server):
    # given
    session = requests.Session()
    session.headers["Authorization"] = f"token {racy_server.api_key}:{racy_server.api_secret}"
    # when three creates are sent to the test server at once
    responses = create_at_once(
        lambda doc: session.post(f"{racy_server.url}/api/resource/Company", json=doc, timeout=10),
        [company(n) for n in (1, 2, 3)],
    )
    # then some fail, with a body shaped like the recorded one
    refused = [r for r in responses if r.status_code == 417]
    assert refused and any(r.status_code == 200 for r in responses)
    body = refused[0].json()
    assert set(body) == RECORDED_417_KEYS
    assert (body["exc_type"], body["_exc_source"]) == ("LinkValidationError", "erpnext (app)")
    message = json.loads(json.loads(body["_server_messages"])[0])["message"]
    assert message.startswith("Could not find Row #") and ": Default Account: Cash - RC" in message
    # and the server's log says when each create ran
    creates = racy_server.writes("POST", "Company", status=None)
    assert len(creates) == 3 and all(c.started < c.ended for c in creates)


def test_the_frappe_client_classifies_the_race_as_transient(racy_server):
    # given
    client = FrappeClient(
        name="lab", base_url=racy_server.url, api_key=racy_server.api_key, api_secret=racy_server.api_secret
    )
    # when
    outcomes = create_at_once(lambda doc: client.insert("Company", doc), [company(n) for n in (1, 2, 3)])
    # then the loser is worth another try, never a permanent failure
    failures = [o for o in outcomes if isinstance(o, Exception)]
    assert failures
    assert all(
        isinstance(f, EngineTransientError) and (f.status, f.exc_type) == (417, "LinkValidationError") for f in failures
    )
    # and another try succeeds
    for n, outcome in zip((1, 2, 3), outcomes, strict=True):
        if isinstance(outcome, Exception):
            assert client.insert("Company", company(n))["name"] == f"Race {n}"


def test_the_frappe_client_keeps_other_link_errors_permanent(frappe):
    # given
    client = FrappeClient(name="lab", base_url=frappe.url, api_key=frappe.api_key, api_secret=frappe.api_secret)
    # when a company names a currency that does not exist (a LinkValidationError that no retry fixes)
    with pytest.raises(EngineValidationError) as caught:
        client.insert("Company", {**company(1), "default_currency": "ZZZ"})
    # then
    assert not caught.value.transient


@pytest.mark.django_db(transaction=True)
def test_the_sandbox_engine_models_the_race_and_classifies_it_as_transient(settings):
    # given a sandbox whose company creates take a while, shared by every worker through the database
    from django.db import connection

    from provisioning.engines import engine_for
    from tenants.models import EngineConnection

    settings.SANDBOX_COMPANY_LATENCY = 0.3
    engine_row = EngineConnection.objects.create(name="rehearsal", kind=EngineConnection.Kind.SANDBOX)
    engine_for(engine_row).get_doc("System Settings", "System Settings")  # the site exists before the race

    def create(doc):
        try:
            return engine_for(engine_row).insert("Company", doc)
        finally:
            connection.close()  # each thread has its own database session

    # when
    outcomes = create_at_once(create, [company(n) for n in (1, 2, 3)])
    # then
    failures = [o for o in outcomes if isinstance(o, Exception)]
    assert failures and len(failures) < 3
    assert all(isinstance(f, EngineTransientError) and f.exc_type == "LinkValidationError" for f in failures)
