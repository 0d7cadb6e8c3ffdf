"""The steps against the sandbox engine: look is read-only, act converges, a second run creates nothing."""

import datetime as dt

import pytest

from provisioning.engines.emulator import ERPNextEmulator
from provisioning.steps import STEPS, StepContext, StepFailed, TenantSpec, execute
from tests.support.memory_store import MemoryStore

TODAY = dt.date(2026, 11, 22)


class MemoryEngine:
    """The emulator as an Engine, counting writes."""

    kind, name = "sandbox", "memory"

    def __init__(self):
        self.site = ERPNextEmulator(MemoryStore(), today=TODAY)
        self.writes = 0

    def call(self, method, **params):
        return self.site.call(method, **params)

    def get_doc(self, doctype, name):
        return self.site.get_doc(doctype, name)

    def get_list(self, doctype, **kw):
        return self.site.get_list(doctype, **kw)

    def insert(self, doctype, doc):
        self.writes += 1
        return self.site.insert(doctype, doc)

    def update(self, doctype, name, changes):
        self.writes += 1
        return self.site.update(doctype, name, changes)

    def delete(self, doctype, name):
        self.writes += 1
        return self.site.delete(doctype, name)

    def docs(self):
        return self.site.store.names()


def spec(**overrides):
    fields = dict(
        company="Acme Ltd",
        abbr="ACME",
        currency="EUR",
        country="Germany",
        admin_email="admin@acme.test",
        admin_first_name="Acme",
        cost_centers=("Operations",),
        warehouses=("Returns",),
        # The admin is a user Moran made (step 7 records that); step 8 may restrict it again after a repair.
        admin_created_by_moran=True,
    )
    fields.update(overrides)
    return TenantSpec(**fields)


def run_all(engine, tenant_spec):
    ctx = StepContext(engine=engine, spec=tenant_spec, today=TODAY)
    return [execute(step, ctx) for step in STEPS]


def test_a_full_run_creates_everything_and_a_second_run_creates_nothing():
    engine = MemoryEngine()
    results = run_all(engine, spec())
    docs_after_first, writes_after_first = engine.docs(), engine.writes
    assert ("Cost Center", "Operations - ACME") in docs_after_first
    assert ("Warehouse", "Returns - ACME") in docs_after_first
    assert ("Price List", "ACME Selling") in docs_after_first
    assert results[-1][0]["resources"]["step_1_company"] == {"company": "Acme Ltd", "abbr": "ACME"}

    run_all(engine, spec())

    assert engine.writes == writes_after_first
    assert engine.docs() == docs_after_first


def test_look_is_read_only_and_plans_what_a_run_would_create():
    engine = MemoryEngine()
    before = engine.docs()
    ctx = StepContext(engine=engine, spec=spec(), today=TODAY)
    plans = {step.name: step.look(ctx) for step in STEPS[:-1]}
    assert engine.docs() == before and engine.writes == 0
    assert [c.doctype for c in plans["step_1_company"].changes] == ["Company"]
    assert plans["step_2_fiscal_year"].changes[0].name == "2026"
    assert [c.name for c in plans["step_4_cost_centers"].changes] == ["Operations - ACME"]
    assert plans["step_3_chart_of_accounts"].notes  # made by ERPNext with the company


def test_a_second_tenant_joins_the_fiscal_year_that_covers_today():
    engine = MemoryEngine()
    run_all(engine, spec())
    run_all(engine, spec(company="Beta GmbH", abbr="BETA", admin_email="admin@beta.test"))
    year = engine.get_doc("Fiscal Year", "2026")
    assert [row["company"] for row in year["companies"]] == ["Acme Ltd", "Beta GmbH"]
    assert len(engine.get_list("Fiscal Year")) == 1


def test_an_abbreviation_owned_by_another_company_fails_clearly():
    engine = MemoryEngine()
    run_all(engine, spec())
    ctx = StepContext(engine=engine, spec=spec(company="Other Ltd", admin_email="o@other.test"), today=TODAY)
    with pytest.raises(StepFailed, match="Abbreviation 'ACME' is already used by company 'Acme Ltd'") as exc:
        execute(STEPS[1], ctx)
    assert exc.value.type == "AbbreviationTaken"


def test_a_company_of_the_same_name_with_another_abbreviation_is_not_ours():
    engine = MemoryEngine()
    run_all(engine, spec())
    ctx = StepContext(engine=engine, spec=spec(abbr="ACM2"), today=TODAY)
    with pytest.raises(StepFailed, match="abbreviation 'ACME', not 'ACM2'"):
        execute(STEPS[1], ctx)


def test_the_engine_check_refuses_an_incomplete_setup_wizard():
    engine = MemoryEngine()
    engine.site.set_setup_complete(False)
    with pytest.raises(StepFailed, match="setup wizard") as exc:
        execute(STEPS[0], StepContext(engine=engine, spec=spec(), today=TODAY))
    assert exc.value.type == "SetupIncomplete"


def test_steps_repair_what_was_deleted_and_reconcile_roles():
    engine = MemoryEngine()
    run_all(engine, spec())
    engine.delete("Warehouse", "Stores - ACME")
    engine.update("User", "admin@acme.test", {"roles": [{"role": "Accounts User"}]})
    engine.update("Price List", "ACME Selling", {"currency": "USD"})
    ctx = StepContext(engine=engine, spec=spec(), today=TODAY)
    with pytest.raises(StepFailed, match="Stores - ACME"):
        execute(STEPS[-1], ctx)  # finalize verifies and reports the drift

    for step in STEPS:
        execute(step, ctx)

    assert engine.get_doc("Warehouse", "Stores - ACME")["parent_warehouse"] == "All Warehouses - ACME"
    assert {r["role"] for r in engine.get_doc("User", "admin@acme.test")["roles"]} >= {"Accounts User", "Stock Manager"}
    assert engine.get_doc("Price List", "ACME Selling")["currency"] == "EUR"


def test_duplicate_user_permissions_left_by_a_race_are_removed():
    engine = MemoryEngine()
    run_all(engine, spec())
    existing = engine.get_list("User Permission", filters={"user": "admin@acme.test"})[0]["name"]
    # ERPNext's duplicate check races: write a second identical row behind its back.
    row = engine.site.get_doc("User Permission", existing)
    engine.site.store.add("User Permission", "zzduplicate", {**row, "name": "zzduplicate", "creation": "9999"})
    execute(STEPS[8], StepContext(engine=engine, spec=spec(), today=TODAY))
    assert [r["name"] for r in engine.get_list("User Permission", filters={"user": "admin@acme.test"})] == [existing]
