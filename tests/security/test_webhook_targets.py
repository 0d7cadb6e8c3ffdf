"""Webhook targets: internal addresses refused when a URL is saved (API, admin) and again when a call is made (a URL
that slipped in, a global URL, a name that resolves elsewhere by then); the call connects to the address checked."""

from __future__ import annotations

import socket

import pytest
from django.urls import reverse
from django.utils import timezone
from requests import PreparedRequest

from provisioning.models import ProvisioningRun
from provisioning.webhooks.delivery import webhook_delivery_send
from provisioning.webhooks.outbox import onboarding_run_ended
from provisioning.webhooks.targets import (
    PinnedAddressAdapter,
    Target,
    WebhookTargetRefused,
    pinned_url,
    webhook_url_check,
)
from tenants.models import Tenant
from tenants.services import engine_get
from tests.support.factories import make_tenant
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.django_db

PUBLIC = "93.184.216.34"
#: every internal kind of target, as a tenant could type it; "internal.example.test" resolves to 127.0.0.1 (below).
INTERNAL_URLS = [
    "https://127.0.0.1/hook",
    "https://localhost/hook",
    "https://[::1]/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://10.0.0.1/hook",
    "https://192.168.1.1/hook",
    "https://172.16.0.1/hook",
    "https://0.0.0.0/hook",
    "https://internal.example.test/hook",
    "https://[fe80::1]/hook",
    "https://[fc00::1]/hook",
    "https://224.0.0.1/hook",
    "https://240.0.0.1/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://100.64.0.1/hook",
]


@pytest.fixture
def dns(monkeypatch):
    """A resolver the test controls: ``dns["name"] = ["1.2.3.4", ...]`` (a list of answers per lookup, the last one
    repeating, when given as a list of lists). Other names and address literals resolve for real."""
    table: dict[str, list] = {"internal.example.test": ["127.0.0.1"]}
    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in table:
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        answers = table[host]
        if answers and isinstance(answers[0], list):
            answers = answers.pop(0) if len(answers) > 1 else answers[0]
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port or 0))
            for a in answers
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    table["_lookups"] = lookups
    return table


def ended_delivery(tenant):
    run = ProvisioningRun.objects.create(
        onboarding=tenant.onboarding, kind="start", outcome="completed", finished_at=timezone.now()
    )
    return onboarding_run_ended(onboarding=tenant.onboarding, run_id=run.id, status="COMPLETED")


def api_body(**overrides):
    body = {
        "slug": "initech",
        "company_name": "Initech Inc",
        "abbr": "INIT",
        "currency": "USD",
        "country": "United States",
        "admin_email": "admin@initech.test",
        "start": False,
    }
    return {**body, **overrides}


def admin_form(**overrides):
    data = {
        "slug": "acme",
        "company_name": "Acme Ltd",
        "abbr": "ACME",
        "currency": "EUR",
        "country": "Germany",
        "admin_email": "admin@acme.test",
        "extra_cost_centers": "",
        "extra_warehouses": "",
        "engine": engine_get().pk,
        "owner": "",
    }
    return {**data, **overrides}


# --- at creation ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_it_refuses_an_internal_target_at_creation_through_the_api(url, dns, operator, client_for):
    # when
    response = client_for(operator).post("/api/tenants", api_body(webhook_url=url), format="json")
    # then: a 400 naming the field, and no tenant
    assert response.status_code == 400, response.content
    (message,) = response.json()["fields"]["webhook_url"]
    assert "where webhooks may not go" in message
    assert not Tenant.objects.filter(slug="initech").exists()


@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_it_refuses_an_internal_target_at_creation_in_the_admin(url, dns, admin_client):
    # when
    response = admin_client.post(reverse("admin:tenants_tenant_add"), admin_form(webhook_url=url))
    # then
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "where webhooks may not go" in " ".join(errors["webhook_url"])
    assert not Tenant.objects.filter(slug="acme").exists()


def test_it_refuses_an_internal_target_when_a_tenant_is_changed_in_the_admin(dns, admin_client):
    # given
    tenant = make_tenant(webhook_url=f"https://{PUBLIC}/hook")
    url = reverse("admin:tenants_tenant_change", args=[tenant.pk])
    data = admin_form(slug=tenant.slug, company_name=tenant.company_name, abbr=tenant.abbr, name=tenant.name)
    # when
    response = admin_client.post(url, {**data, "webhook_url": "https://169.254.169.254/"})
    # then
    assert "where webhooks may not go" in " ".join(response.context["adminform"].form.errors["webhook_url"])
    tenant.refresh_from_db()
    assert tenant.webhook_url == f"https://{PUBLIC}/hook"


def test_it_refuses_a_name_with_one_internal_address_among_public_ones(dns):
    dns["mixed.example.test"] = [PUBLIC, "10.1.2.3"]
    with pytest.raises(WebhookTargetRefused, match="resolves to 10.1.2.3, a private address"):
        webhook_url_check("https://mixed.example.test/hook")


def test_it_takes_https_only_unless_http_is_allowed(settings):
    with pytest.raises(WebhookTargetRefused, match="only https"):
        webhook_url_check(f"http://{PUBLIC}/hook")
    with pytest.raises(WebhookTargetRefused, match="only https"):
        webhook_url_check(f"ftp://{PUBLIC}/hook")
    webhook_url_check(f"https://{PUBLIC}/hook")
    settings.WEBHOOK_ALLOW_HTTP = True
    webhook_url_check(f"http://{PUBLIC}/hook")


def test_the_allow_list_opens_only_what_it_names(settings):
    # given
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32", "10.20.0.0/16"]
    # then
    webhook_url_check("https://127.0.0.1/hook")
    webhook_url_check("https://10.20.3.4/hook")
    for url in ("https://127.0.0.2/hook", "https://10.21.0.1/hook", "https://169.254.169.254/"):
        with pytest.raises(WebhookTargetRefused):
            webhook_url_check(url)


# --- at send time --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_it_refuses_an_internal_target_at_send_time(url, dns):
    # given: a URL written behind validation's back
    tenant = make_tenant()
    Tenant.objects.filter(pk=tenant.pk).update(webhook_url=url)
    delivery = ended_delivery(tenant)
    # when
    after = webhook_delivery_send(delivery_id=delivery.pk)
    # then: failed at once, with a clear error, and not tried again
    assert (after.state, after.attempts, after.last_status_code) == ("failed", 1, None)
    assert after.last_error.startswith("target not allowed:")
    (attempt,) = after.tries.all()
    assert attempt.outcome == "blocked"
    assert webhook_delivery_send(delivery_id=delivery.pk) is None


def test_it_refuses_the_global_url_when_it_is_internal(settings):
    # given
    settings.WEBHOOK_URL = "https://169.254.169.254/latest/meta-data/"
    delivery = ended_delivery(make_tenant())
    # when
    after = webhook_delivery_send(delivery_id=delivery.pk)
    # then
    assert after.state == "failed"
    assert "169.254.169.254 is a link-local address" in after.last_error


def test_it_refuses_a_name_that_resolves_elsewhere_at_send_time(dns, settings):
    # given: a name public when saved, then rebound to a loopback receiver that would take the call
    settings.WEBHOOK_ALLOW_HTTP = True
    with WebhookReceiver() as receiver:
        dns["rebind.example.test"] = [[PUBLIC], ["127.0.0.1"]]
        tenant = make_tenant(webhook_url=f"http://rebind.example.test:{receiver.server.server_port}/hook")
        delivery = ended_delivery(tenant)
        # when
        after = webhook_delivery_send(delivery_id=delivery.pk)
        # then
        assert receiver.calls == []
    assert after.state == "failed"
    assert "rebind.example.test resolves to 127.0.0.1, a loopback address" in after.last_error


def test_it_connects_to_the_address_it_checked(dns, settings):
    # given: a name that resolves to the (allowed) receiver once, and to another address at every later lookup
    settings.WEBHOOK_ALLOW_HTTP = True
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    with WebhookReceiver() as receiver:
        port = receiver.server.server_port
        dns["pinned.example.test"] = [["127.0.0.1"]]
        tenant = make_tenant(webhook_url=f"http://pinned.example.test:{port}/hook")
        dns["pinned.example.test"] = [["127.0.0.1"], ["10.255.255.1"]]
        dns["_lookups"].clear()
        delivery = ended_delivery(tenant)
        # when
        after = webhook_delivery_send(delivery_id=delivery.pk)
        # then: the call reached the checked address, under the name, after one lookup
        (call,) = receiver.calls_to("/hook")
    assert after.state == "delivered"
    assert call.headers["Host"] == f"pinned.example.test:{port}"
    assert dns["_lookups"] == ["pinned.example.test"]


def test_tls_is_verified_against_the_name_not_the_address():
    # given
    target = Target(scheme="https", hostname="hooks.example.com", port=443, address=PUBLIC)
    request = PreparedRequest()
    request.prepare(method="POST", url=pinned_url("https://hooks.example.com/in?x=1", target))
    # when
    host_params, pool_kwargs = PinnedAddressAdapter(target).build_connection_pool_key_attributes(request, True)
    # then: the connection goes to the address; SNI and the certificate check use the name
    assert (host_params["host"], host_params["port"]) == (PUBLIC, 443)
    assert pool_kwargs["server_hostname"] == pool_kwargs["assert_hostname"] == "hooks.example.com"
    assert pool_kwargs["cert_reqs"] == "CERT_REQUIRED"
