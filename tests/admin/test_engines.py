"""Engine connections in the admin: the secret is write-only and never rendered; "test connection" runs the check."""

from __future__ import annotations

import sys

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from provisioning.models import ProvisioningRun
from provisioning.services import onboarding_start
from tenants.models import EngineConnection
from tests.support.factories import make_tenant

pytestmark = pytest.mark.django_db

SECRET = "S3CRET-do-not-render-7f3a9c"
NEW_SECRET = "N3W-SECRET-never-shown-41b2"


@pytest.fixture
def erp():
    return EngineConnection.objects.create(
        name="erp-prod",
        kind=EngineConnection.Kind.ERPNEXT,
        base_url="http://127.0.0.1:9",
        api_key="key-123",
        api_secret=SECRET,
        connect_timeout=0.5,
        read_timeout=0.5,
    )


def change_data(connection, **overrides):
    data = {
        "name": connection.name,
        "kind": connection.kind,
        "base_url": connection.base_url,
        "api_key": connection.api_key,
        "verify_tls": "on" if connection.verify_tls else "",
        "connect_timeout": connection.connect_timeout,
        "read_timeout": connection.read_timeout,
        "new_api_secret": "",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v != "" or k == "new_api_secret"}


def test_it_keeps_the_secret_when_the_field_is_left_blank(admin_client, erp):
    # when
    response = admin_client.post(
        reverse("admin:tenants_engineconnection_change", args=[erp.pk]), change_data(erp, api_key="key-456")
    )
    # then
    assert response.status_code == 302
    erp.refresh_from_db()
    assert (erp.api_key, erp.api_secret) == ("key-456", SECRET)


def test_it_sets_and_clears_the_secret(admin_client, erp):
    url = reverse("admin:tenants_engineconnection_change", args=[erp.pk])
    assert admin_client.post(url, change_data(erp, new_api_secret=NEW_SECRET)).status_code == 302
    erp.refresh_from_db()
    assert erp.api_secret == NEW_SECRET
    assert admin_client.post(url, change_data(erp, clear_api_secret="on")).status_code == 302
    erp.refresh_from_db()
    assert erp.api_secret == ""


def test_it_never_renders_the_secret_on_any_page(admin_client, erp, eager, on_commit):
    # given: a tenant on the connection, with a run, log lines and history on every admin object
    tenant = make_tenant(slug="secretive", engine=erp)
    onboarding_start(onboarding=tenant.onboarding)  # no commit: stays IN_PROGRESS, with a run and a log line
    change_url = reverse("admin:tenants_engineconnection_change", args=[erp.pk])
    # a change that sets a new secret (its history entry must not hold it either), with a form error first
    invalid = admin_client.post(change_url, change_data(erp, new_api_secret=NEW_SECRET, connect_timeout="x"))
    assert invalid.status_code == 200 and "connect_timeout" in invalid.context["adminform"].form.errors
    assert admin_client.post(change_url, change_data(erp, new_api_secret=NEW_SECRET)).status_code == 302
    erp.refresh_from_db()
    assert erp.api_secret == NEW_SECRET
    run = ProvisioningRun.objects.get(onboarding=tenant.onboarding)
    onboarding = tenant.onboarding
    pages = [
        reverse("admin:index"),
        reverse("admin:app_list", args=["tenants"]),
        reverse("admin:tenants_engineconnection_changelist"),
        reverse("admin:tenants_engineconnection_changelist") + "?q=erp",
        reverse("admin:tenants_engineconnection_add"),
        change_url,
        reverse("admin:tenants_engineconnection_history", args=[erp.pk]),
        reverse("admin:tenants_engineconnection_delete", args=[erp.pk]),
        reverse("admin:tenants_tenant_changelist"),
        reverse("admin:tenants_tenant_add"),
        reverse("admin:tenants_tenant_change", args=[tenant.pk]),
        reverse("admin:tenants_tenant_history", args=[tenant.pk]),
        reverse("admin:provisioning_onboarding_changelist"),
        reverse("admin:provisioning_onboarding_change", args=[onboarding.pk]),
        reverse("admin:provisioning_onboarding_history", args=[onboarding.pk]),
        reverse("admin:provisioning_onboarding_status", args=[onboarding.pk]),
        reverse("admin:provisioning_provisioningrun_changelist"),
        reverse("admin:provisioning_provisioningrun_change", args=[run.pk]),
        reverse("admin:provisioning_steplog_changelist"),
    ]
    rendered = [invalid]
    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        rendered.append(response)
    # the test-connection message too (the erpnext client fails to connect, or is not installed yet)
    rendered.append(admin_client.post(reverse("admin:tenants_engineconnection_test", args=[erp.pk]), follow=True))
    # then
    for response in rendered:
        body = response.content.decode()
        assert SECRET not in body and NEW_SECRET not in body, response.request["PATH_INFO"]
    assert 'name="new_api_secret"' in admin_client.get(change_url).content.decode()
    assert all(NEW_SECRET not in entry.change_message for entry in LogEntry.objects.all())
    assert ">set<" in admin_client.get(change_url).content.decode()


def test_it_tests_a_sandbox_connection(admin_client):
    # given
    sandbox = EngineConnection.objects.create(name="sandbox-2", kind=EngineConnection.Kind.SANDBOX)
    # when
    response = admin_client.post(reverse("admin:tenants_engineconnection_test", args=[sandbox.pk]), follow=True)
    # then
    [message] = list(response.context["messages"])
    assert message.level_tag == "success"
    assert str(message).startswith("sandbox-2: reachable as Administrator; frappe 15") and "erpnext 15" in str(message)


def test_it_reports_an_unreachable_or_missing_erpnext_client_as_an_error(admin_client, erp):
    # when: from the list, as a bulk action
    response = admin_client.post(
        reverse("admin:tenants_engineconnection_changelist"),
        {"action": "test_connection_action", "_selected_action": [erp.pk], "index": 0},
        follow=True,
    )
    # then: an error message, never an exception (the ERPNext client may not be installed yet)
    [message] = list(response.context["messages"])
    assert message.level_tag == "error"
    assert str(message).startswith("erp-prod: ")
    assert SECRET not in str(message)


def test_it_keeps_the_engine_list_query_count_constant(admin_client):
    from tests.support.queries import count_queries

    EngineConnection.objects.create(name="one", kind=EngineConnection.Kind.SANDBOX)
    one = count_queries(admin_client, reverse("admin:tenants_engineconnection_changelist"))
    for n in range(20):
        EngineConnection.objects.create(name=f"more-{n}", kind=EngineConnection.Kind.SANDBOX)
    assert count_queries(admin_client, reverse("admin:tenants_engineconnection_changelist")) == one


def test_it_says_so_when_the_erpnext_client_is_not_installed(admin_client, erp, monkeypatch):
    # given: the module cannot be imported (None in sys.modules makes the import raise ImportError)
    monkeypatch.setitem(sys.modules, "provisioning.engines.erpnext", None)
    # when
    response = admin_client.post(reverse("admin:tenants_engineconnection_test", args=[erp.pk]), follow=True)
    # then
    assert [str(m) for m in response.context["messages"]] == [
        "erp-prod: the ERPNext engine client is not available in this installation"
    ]


def test_it_reports_a_crashing_check_without_its_message(admin_client, monkeypatch):
    # given: a check that crashes with a message that must not reach the page
    sandbox = EngineConnection.objects.create(name="sandbox-3", kind=EngineConnection.Kind.SANDBOX)

    def crash(self, ctx):
        raise RuntimeError(f"boom {SECRET}")

    monkeypatch.setattr("provisioning.steps.EngineCheck.look", crash)
    # when
    response = admin_client.post(reverse("admin:tenants_engineconnection_test", args=[sandbox.pk]), follow=True)
    # then
    [message] = list(response.context["messages"])
    assert message.level_tag == "error"
    assert str(message) == "sandbox-3: the engine check failed unexpectedly (RuntimeError); see the logs"
    assert SECRET not in response.content.decode()
