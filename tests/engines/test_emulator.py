"""The ERPNext emulator behind the sandbox engine reproduces the recorded server's rules."""

import datetime as dt

import pytest

from provisioning.engines.emulator import ERPNextEmulator
from provisioning.engines.errors import (
    EngineBadRequestError,
    EngineConflictError,
    EngineNotFoundError,
    EngineValidationError,
)
from tests.support.memory_store import MemoryStore


@pytest.fixture
def site():
    return ERPNextEmulator(MemoryStore(), today=dt.date(2026, 11, 22))


@pytest.fixture
def company(site):
    site.insert(
        "Company", {"company_name": "Rec Tenant Ltd", "abbr": "RTL", "default_currency": "EUR", "country": "Germany"}
    )
    return "Rec Tenant Ltd"


def test_a_company_comes_with_its_chart_cost_centers_and_warehouses(site, company):
    assert site.get_doc("Cost Center", "Main - RTL")["company"] == company
    assert site.get_doc("Cost Center", "Rec Tenant Ltd - RTL")["is_group"] == 1
    warehouses = {w["name"] for w in site.get_list("Warehouse", filters={"company": company})}
    assert warehouses == {
        f"{w} - RTL" for w in ("All Warehouses", "Stores", "Work In Progress", "Finished Goods", "Goods In Transit")
    }
    roots = site.get_list(
        "Account", filters={"company": company, "parent_account": ["is", "not set"]}, fields=["root_type"]
    )
    assert {r["root_type"] for r in roots} == {"Asset", "Liability", "Equity", "Income", "Expense"}


def test_duplicates_and_abbreviations_are_refused_like_erpnext(site, company):
    with pytest.raises(EngineConflictError) as dup:
        site.insert("Company", {"company_name": company, "abbr": "RTL", "default_currency": "EUR"})
    assert (dup.value.status, dup.value.exc_type) == (409, "DuplicateEntryError")
    with pytest.raises(EngineValidationError, match="Abbreviation already used"):
        site.insert("Company", {"company_name": "Other Ltd", "abbr": "RTL", "default_currency": "EUR"})


def test_names_get_the_abbreviation_suffix(site, company):
    created = site.insert(
        "Cost Center", {"cost_center_name": "Ops", "parent_cost_center": "Rec Tenant Ltd - RTL", "company": company}
    )
    assert created["name"] == "Ops - RTL"
    assert (
        site.insert(
            "Cost Center",
            {"cost_center_name": "QA - RTL", "parent_cost_center": "Rec Tenant Ltd - RTL", "company": company},
        )["name"]
        == "QA - RTL - RTL"
    )
    assert (
        site.insert("Warehouse", {"warehouse_name": "Dispatch - RTL", "company": company})["name"] == "Dispatch - RTL"
    )
    with pytest.raises(EngineValidationError, match="not a group node"):
        site.insert("Cost Center", {"cost_center_name": "X", "parent_cost_center": "Main - RTL", "company": company})


def test_a_missing_company_is_filled_from_the_default_company(site, company):
    created = site.insert("Warehouse", {"warehouse_name": "Returns", "parent_warehouse": "All Warehouses - RTL"})
    assert (
        created["name"] == "Returns - MS"
    )  # the sandbox's default company, as ERPNext would do: hence "always send company"
    with pytest.raises(EngineValidationError) as exc:
        site.insert("Warehouse", {"warehouse_name": "Returns", "company": ""})
    assert exc.value.exc_type == "MandatoryError"
    with pytest.raises(EngineBadRequestError) as exc:
        site.insert("Warehouse", {"company": company})
    assert (exc.value.status, exc.value.exc_type) == (500, "AttributeError")


def test_fiscal_year_labels_are_global_and_overlaps_are_409(site, company):
    site.insert(
        "Fiscal Year",
        {
            "year": "2027",
            "year_start_date": "2027-01-01",
            "year_end_date": "2027-12-31",
            "companies": [{"company": company}],
        },
    )
    with pytest.raises(EngineConflictError) as exc:
        site.insert(
            "Fiscal Year",
            {
                "year": "2027-28",
                "year_start_date": "2027-07-01",
                "year_end_date": "2028-06-30",
                "companies": [{"company": company}],
            },
        )
    assert exc.value.exc_type == "NameError" and not exc.value.is_duplicate
    with pytest.raises(EngineValidationError, match="already set in Fiscal Year 2027"):
        site.insert(
            "Fiscal Year",
            {
                "year": "2027 X",
                "year_start_date": "2027-01-01",
                "year_end_date": "2027-12-31",
                "companies": [{"company": "Moran Sandbox"}],
            },
        )
    assert site.call("erpnext.accounts.utils.get_fiscal_year", date="2027-06-01", company=company)[0] == "2027"
    assert (
        site.call("erpnext.accounts.utils.get_fiscal_year", date="2027-06-01", company="Moran Sandbox", boolean=1)
        is False
    )
    with pytest.raises(EngineValidationError) as exc:
        site.call("erpnext.accounts.utils.get_fiscal_year", date="2027-06-01", company="Moran Sandbox")
    assert exc.value.exc_type == "FiscalYearError"


def test_identical_user_permissions_are_refused_but_lookalikes_accepted(site, company):
    site.insert("User", {"email": "Admin@Rec.test", "first_name": "Rec", "roles": [{"role": "Accounts User"}]})
    assert site.get_doc("User", "admin@rec.test")["roles"][0]["role"] == "Accounts User"
    doc = {"user": "admin@rec.test", "allow": "Company", "for_value": company, "apply_to_all_doctypes": 1}
    site.insert("User Permission", doc)
    with pytest.raises(EngineConflictError, match="User permission already exists"):
        site.insert("User Permission", doc)
    site.insert("User Permission", {**doc, "apply_to_all_doctypes": 0})
    assert len(site.get_list("User Permission", filters={"user": "admin@rec.test"})) == 2


def test_lists_filter_page_and_refuse_unknown_fields(site, company):
    names = [r["name"] for r in site.get_list("Account", filters={"company": company}, order_by="name asc")]
    assert names == sorted(names) and len(names) > 5
    assert [
        r["name"] for r in site.get_list("Account", filters={"company": company}, order_by="name asc", limit=3, start=3)
    ] == names[3:6]
    with pytest.raises(EngineValidationError) as exc:
        site.get_list("Company", filters={"no_such_field": "x"})
    assert exc.value.exc_type == "DataError"
    with pytest.raises(EngineNotFoundError):
        site.get_list("No Such Doctype")
    with pytest.raises(EngineNotFoundError):
        site.get_doc("Company", "Nope Ltd")
