"""``manage.py add_engine``: the secret from the environment (or a prompt), the engine check before saving."""

from __future__ import annotations

import pytest

from provisioning.models import OnboardingStatus
from tenants.models import EngineConnection, Tenant
from tests.support.commands import run

pytestmark = pytest.mark.django_db


@pytest.fixture
def secret_env(monkeypatch, frappe):
    monkeypatch.setenv("MORAN_ENGINE_API_SECRET", frappe.api_secret)
    return frappe.api_secret


def test_it_checks_the_engine_and_saves_the_connection(frappe, secret_env):
    # when
    code, out, err = run("add_engine", "lab", "--url", frappe.url, "--api-key", frappe.api_key)
    # then
    assert (code, err) == (0, "")
    assert out.strip() == (
        f"engine lab added: {frappe.url} (ERPNext 15.71.1, Frappe 15.75.0, API user Administrator, max concurrency 4)"
    )
    connection = EngineConnection.objects.get(name="lab")
    assert (connection.kind, connection.base_url, connection.api_key, connection.verify_tls) == (
        "erpnext",
        frappe.url,
        frappe.api_key,
        True,
    )
    assert connection.api_secret == frappe.api_secret
    assert secret_env not in out


def test_it_updates_an_existing_connection(frappe, secret_env):
    # given
    run("add_engine", "lab", "--url", frappe.url + "/", "--api-key", frappe.api_key)
    # when
    code, out, _ = run(
        "add_engine", "lab", "--url", frappe.url, "--api-key", frappe.api_key, "--no-verify-tls", "--read-timeout", "20"
    )
    # then
    assert code == 0 and out.startswith("engine lab updated")
    connection = EngineConnection.objects.get(name="lab")
    assert (connection.verify_tls, connection.read_timeout) == (False, 20)
    assert EngineConnection.objects.filter(name="lab").count() == 1


def test_it_refuses_credentials_the_engine_refuses_and_saves_nothing(frappe, monkeypatch):
    # given
    monkeypatch.setenv("MORAN_ENGINE_API_SECRET", "not-the-" + frappe.api_secret)
    # when
    code, out, err = run("add_engine", "lab", "--url", frappe.url, "--api-key", frappe.api_key)
    # then
    assert code == 2 and out == ""
    assert err.strip() == (
        "error: engine check of 'lab' failed: engine 'lab' refused the credentials "
        "(check the API key and secret of the connection)"
    )
    assert frappe.api_secret not in err
    assert not EngineConnection.objects.filter(name="lab").exists()


def test_it_refuses_a_site_whose_setup_wizard_is_not_completed(frappe, secret_env):
    # given
    frappe.emulator.set_setup_complete(False)
    # when
    code, _, err = run("add_engine", "lab", "--url", frappe.url, "--api-key", frappe.api_key)
    # then
    assert code == 2 and "setup wizard of engine 'lab' is not completed" in err
    assert len(err.strip().splitlines()) == 1
    assert not EngineConnection.objects.exists()


def test_it_refuses_an_unreachable_engine(frappe, secret_env):
    # given
    url = frappe.url
    frappe.stop()
    # when
    code, _, err = run("add_engine", "lab", "--url", url, "--api-key", frappe.api_key)
    # then
    assert code == 2 and f"engine 'lab' is unreachable at {url}" in err


def test_it_refuses_bad_input(frappe, secret_env):
    code, _, err = run("add_engine", "lab", "--url", "ftp://erp", "--api-key", " ")
    assert code == 2
    assert err.strip() == (
        "error: Invalid engine: base_url: An http:// or https:// URL, e.g. https://erp.example.com; "
        "api_key: The API key of a System Manager user is required"
    )


def test_it_wants_the_secret_from_the_environment_when_not_interactive(frappe, monkeypatch):
    # given
    monkeypatch.delenv("MORAN_ENGINE_API_SECRET", raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    # when
    code, _, err = run("add_engine", "lab", "--url", frappe.url, "--api-key", frappe.api_key)
    # then
    assert code == 2 and "set MORAN_ENGINE_API_SECRET" in err


def test_it_prompts_for_the_secret_on_a_terminal(frappe, monkeypatch):
    # given
    monkeypatch.delenv("MORAN_ENGINE_API_SECRET", raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    prompts = []
    monkeypatch.setattr("getpass.getpass", lambda prompt: prompts.append(prompt) or frappe.api_secret)
    # when
    code, _, _ = run("add_engine", "lab", "--url", frappe.url, "--api-key", frappe.api_key)
    # then
    assert code == 0 and prompts == ["API secret for lab: "]
    assert EngineConnection.objects.get(name="lab").api_secret == frappe.api_secret


def test_it_registers_a_sandbox_engine_with_its_capacity():
    # when
    code, out, err = run("add_engine", "rehearsal", "--kind", "sandbox", "--max-concurrency", "2")
    # then
    assert (code, err, out.strip()) == (0, "", "engine rehearsal added: sandbox (max concurrency 2)")
    connection = EngineConnection.objects.get(name="rehearsal")
    assert (connection.kind, connection.max_concurrency, connection.base_url, connection.api_secret) == (
        "sandbox",
        2,
        "",
        "",
    )


def test_it_updates_a_sandbox_engine_and_keeps_its_capacity_unless_told():
    # given
    run("add_engine", "rehearsal", "--kind", "sandbox", "--max-concurrency", "2")
    # when
    code, out, _ = run("add_engine", "rehearsal", "--kind", "sandbox")
    # then
    assert (code, out.strip()) == (0, "engine rehearsal updated: sandbox (max concurrency 2)")
    assert EngineConnection.objects.filter(name="rehearsal").count() == 1


def test_it_sets_the_capacity_of_an_erpnext_engine(frappe, secret_env):
    # when
    code, out, _ = run("add_engine", "lab", "--url", frappe.url, "--api-key", frappe.api_key, "--max-concurrency", "8")
    # then
    assert code == 0 and out.strip().endswith("max concurrency 8)")
    assert EngineConnection.objects.get(name="lab").max_concurrency == 8


@pytest.mark.parametrize(
    "args, message",
    [
        (["--kind", "sandbox", "--max-concurrency", "0"], "error: Invalid engine: max_concurrency: A whole number"),
        (["--kind", "sandbox", "--url", "http://127.0.0.1:1"], "error: a sandbox engine takes no --url"),
        (["--api-key", "k"], "error: an erpnext engine needs --url"),
        ([], "error: an erpnext engine needs --url and --api-key"),
    ],
)
def test_it_refuses_what_the_kind_does_not_take(args, message):
    # when
    code, out, err = run("add_engine", "rehearsal", *args)
    # then
    assert (code, out) == (2, "")
    assert err.startswith(message)
    assert not EngineConnection.objects.exists()


def test_it_will_not_turn_an_erpnext_engine_into_a_sandbox(frappe, secret_env):
    # given
    run("add_engine", "lab", "--url", frappe.url, "--api-key", frappe.api_key)
    # when
    code, _, err = run("add_engine", "lab", "--kind", "sandbox")
    # then
    assert code == 2 and "Engine 'lab' is a erpnext engine" in err
    assert EngineConnection.objects.get(name="lab").kind == "erpnext"


@pytest.mark.realpath
@pytest.mark.django_db(transaction=True)
def test_a_registered_engine_provisions_a_tenant(worker, frappe, secret_env):
    # given
    assert run("add_engine", "lab", "--url", frappe.url, "--api-key", frappe.api_key)[0] == 0
    # when
    code, out, err = run(
        "provision_tenant",
        "rec",
        "--create",
        "--company",
        "Rec Tenant Ltd",
        "--abbr",
        "RTL",
        "--currency",
        "EUR",
        "--country",
        "Germany",
        "--admin-email",
        "admin@rec-tenant.test",
        "--engine",
        "lab",
        "--timeout",
        "60",
    )
    # then
    assert (code, err) == (0, ""), out
    assert out.strip().splitlines()[-1] == "rec: COMPLETED 10/10 steps, 100 %"
    assert Tenant.objects.get(slug="rec").onboarding.status == OnboardingStatus.COMPLETED
    assert frappe.emulator.get_doc("Company", "Rec Tenant Ltd")["abbr"] == "RTL"
