"""The sandbox's database store: its batched writes and reads keep the emulator's rules (409 on a taken name, nothing
of a refused company saved, the duplicate seen across sessions) in a few statements."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from provisioning.engines import engine_for
from provisioning.engines.emulator import DuplicateName, ERPNextEmulator
from provisioning.engines.emulator.tables import STANDARD_CHART
from provisioning.engines.errors import EngineAuthError, EngineConflictError
from provisioning.engines.sandbox import DatabaseStore, sandbox_faults_set
from provisioning.models import SandboxDocument
from provisioning.services import onboarding_start
from provisioning.steps import STEP_NAMES
from tenants.models import EngineConnection
from tests.support.factories import make_tenant
from tests.support.memory_store import MemoryStore

COMPANY = {"company_name": "Store Co", "abbr": "STC", "default_currency": "EUR", "country": "Germany"}


@pytest.fixture
def sandbox(db):
    return EngineConnection.objects.create(name="store-test", kind=EngineConnection.Kind.SANDBOX)


def sandbox_sql(queries) -> list[str]:
    return [q["sql"] for q in queries if "provisioning_sandbox" in q["sql"]]


def test_a_company_and_everything_it_brings_are_one_insert(sandbox):
    # given a bootstrapped site
    engine = engine_for(sandbox)
    # when
    with CaptureQueriesContext(connection) as captured:
        engine.insert("Company", COMPANY)
    # then one insert of the company, its chart, cost centers, departments and warehouses; no savepoint per document
    # (the test's own transaction makes the create's atomic() one savepoint)
    sql = [q["sql"] for q in captured.captured_queries]
    assert len([s for s in sql if s.startswith("INSERT")]) == 1
    assert len([s for s in sql if s.startswith("SAVEPOINT")]) <= 1
    assert len(sql) <= 8
    docs = SandboxDocument.objects.filter(site=sandbox.name, data__company="Store Co")
    assert docs.filter(doctype="Account").count() == len(STANDARD_CHART)
    assert set(docs.values_list("doctype", flat=True)) == {"Account", "Cost Center", "Department", "Warehouse"}
    assert engine.get_doc("Cost Center", "Main - STC")["parent_cost_center"] == "Store Co - STC"


def test_a_taken_default_name_refuses_the_company_with_409_and_saves_nothing_of_it(sandbox):
    # given an account already named as one of the new company's would be
    engine = engine_for(sandbox)
    DatabaseStore(sandbox.name).add("Account", "Cash - STC", {"name": "Cash - STC", "account_name": "Cash"})
    # when
    with pytest.raises(EngineConflictError) as refused:
        engine.insert("Company", COMPANY)
    # then the 409 names it, as one insert at a time would have, and the batch left nothing
    assert (refused.value.status, refused.value.exc_type) == (409, "DuplicateEntryError")
    assert refused.value.message == "Account Cash - STC already exists"
    assert (
        not SandboxDocument.objects.filter(site=sandbox.name, name__endswith=" - STC")
        .exclude(name="Cash - STC")
        .exists()
    )
    assert not SandboxDocument.objects.filter(site=sandbox.name, doctype="Company", name="Store Co").exists()


def test_the_memory_store_names_the_taken_document_too():
    # given the emulator on a store without batched writes
    store = MemoryStore()
    site = ERPNextEmulator(store)
    store.add("Warehouse", "Stores - STC", {"name": "Stores - STC"})
    # when / then
    with pytest.raises(EngineConflictError, match="^Warehouse Stores - STC already exists$"):
        site.insert("Company", COMPANY)


def test_a_duplicate_inside_a_transaction_leaves_the_transaction_usable(sandbox):
    store = DatabaseStore(sandbox.name)
    store.add("Role", "Auditor", {"name": "Auditor"})
    with transaction.atomic():
        with pytest.raises(DuplicateName):
            store.add("Role", "Auditor", {"name": "Auditor"})
        store.add("Role", "Reviewer", {"name": "Reviewer"})  # no "current transaction is aborted"
    assert store.get("Role", "Reviewer") == {"name": "Reviewer"}


def test_a_batch_naming_a_document_twice_is_refused_whole(sandbox):
    store = DatabaseStore(sandbox.name)
    with pytest.raises(DuplicateName) as dup, transaction.atomic():
        store.add_many([("Role", "A", {"name": "A"}), ("Role", "B", {"name": "B"}), ("Role", "A", {"name": "A"})])
    assert dup.value.args == ("Role", "A")
    assert store.get("Role", "A") is None and store.get("Role", "B") is None


def test_reads_batched_and_pushed_down_answer_as_one_by_one(sandbox):
    store = DatabaseStore(sandbox.name)
    store.add("Price List", "P1", {"name": "P1", "currency": "EUR", "buying": 1})
    store.add("Price List", "P2", {"name": "P2", "currency": "USD", "buying": 1})
    store.put("Price List", "P2", {"name": "P2", "currency": "EUR", "buying": 0})
    assert store.get_many([("Price List", "P1"), ("Price List", "P3"), ("Price List", "P2")]) == {
        ("Price List", "P1"): {"name": "P1", "currency": "EUR", "buying": 1},
        ("Price List", "P2"): {"name": "P2", "currency": "EUR", "buying": 0},
    }
    assert [r["name"] for r in store.rows("Price List", {"currency": "EUR"})] == ["P1", "P2"]
    assert store.rows("Price List", {"currency": "GBP"}) == []
    assert store.field_values("Price List", "currency") == {"P1": "EUR", "P2": "EUR"}
    assert store.remove("Price List", "P1") and not store.remove("Price List", "P1")


@pytest.mark.django_db(transaction=True)
def test_two_sessions_creating_the_same_document_one_gets_the_409():
    # given one session that inserted a document and has not committed yet
    store = DatabaseStore("two-sessions")
    inserted, release, outcome = threading.Event(), threading.Event(), {}

    def first():
        try:
            with transaction.atomic():
                store.add("Role", "Shared", {"name": "Shared", "by": "first"})
                inserted.set()
                release.wait(10)
        finally:
            connection.close()

    def second():
        inserted.wait(10)
        try:
            store.add("Role", "Shared", {"name": "Shared", "by": "second"})
            outcome["second"] = "created"
        except DuplicateName:
            outcome["second"] = "duplicate"
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    # when the second one's insert waits on the first's row, and the first commits
    inserted.wait(10)
    threading.Event().wait(0.3)
    assert "second" not in outcome  # still waiting on the uncommitted row
    release.set()
    for thread in threads:
        thread.join(10)
    # then the second is told the name is taken, and the first's document stands
    assert outcome == {"second": "duplicate"}
    assert store.get("Role", "Shared")["by"] == "first"


def test_the_engine_reads_the_site_and_the_tenants_faults_in_one_statement(sandbox, settings):
    engine_for(sandbox)  # the site exists
    tenant = make_tenant(engine=sandbox)
    sandbox_faults_set(tenant=tenant, steps=STEP_NAMES, fail_step="step_3_chart_of_accounts", latency_ms=5)
    with CaptureQueriesContext(connection) as captured:
        engine = engine_for(sandbox, tenant=tenant, step="step_3_chart_of_accounts")
    assert len(captured.captured_queries) == 1
    assert {f["kind"] for f in engine._faults} == {"permanent", "latency"}
    assert engine._latency == 5


def test_an_engine_on_a_new_site_still_bootstraps_it(db):
    fresh = EngineConnection.objects.create(name="fresh-site", kind=EngineConnection.Kind.SANDBOX)
    assert engine_for(fresh).call("frappe.client.get_value", doctype="System Settings", fieldname="setup_complete") == {
        "setup_complete": "1"
    }
    assert SandboxDocument.objects.filter(site="fresh-site", doctype="Company").count() == 1


def test_user_permissions_still_restrict_reads_and_refuse_duplicates(sandbox):
    engine = engine_for(sandbox)
    engine.insert("Company", COMPANY)
    engine.insert("User", {"email": "u@store.test", "first_name": "U", "roles": [{"role": "Accounts User"}]})
    permission = {"user": "u@store.test", "allow": "Company", "for_value": "Store Co", "apply_to_all_doctypes": 1}
    engine.insert("User Permission", permission)
    with pytest.raises(EngineConflictError, match="User permission already exists"):
        engine.insert("User Permission", permission)
    restricted = engine.site.acting_as("u@store.test")
    assert [c["name"] for c in restricted.get_list("Company")] == ["Store Co"]
    with pytest.raises(EngineAuthError):
        restricted.get_doc("Company", "Moran Sandbox")


def test_a_tenant_costs_the_sandbox_a_bounded_number_of_statements(sandbox, eager, on_commit):
    # given a site with another tenant on it already
    first, second = make_tenant(engine=sandbox), make_tenant(engine=sandbox)
    on_commit(onboarding_start, onboarding=first.onboarding)
    # when the next tenant runs
    with CaptureQueriesContext(connection) as captured:
        on_commit(onboarding_start, onboarding=second.onboarding)
    # then its ten steps cost the sandbox about ten statements each (they took over forty before the batched store)
    second.onboarding.refresh_from_db()
    assert second.onboarding.status == "COMPLETED"
    assert len(sandbox_sql(captured.captured_queries)) <= 130
