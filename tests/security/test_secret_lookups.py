"""No admin changelist filter reaches a secret: a view-only staff user cannot read an engine's API secret (or a
token's hash) one character at a time from the row counts, and cannot call the engine with its credentials."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from accounts.services import token_issue
from tenants.models import EngineConnection
from tests.support.api_cast import PASSWORD
from tests.support.factories import make_tenant

pytestmark = pytest.mark.django_db

SECRET = "SEKRET-c0ffee-4242"
ENGINES = "/admin/tenants/engineconnection/"
TENANTS = "/admin/tenants/tenant/"
TOKENS = "/admin/accounts/apitoken/"


@pytest.fixture
def erp():
    return EngineConnection.objects.create(
        name="erp-prod", kind="erpnext", base_url="http://127.0.0.1:9", api_key="key-1", api_secret=SECRET
    )


@pytest.fixture
def viewer():
    """A staff user who may only view engine connections, tenants and API tokens."""
    user = get_user_model().objects.create_user("viewer", email="viewer@moran.test", password=PASSWORD, is_staff=True)
    codenames = ["view_engineconnection", "view_tenant", "view_apitoken"]
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def probe(client, base, lookup, value):
    response = client.get(base, {lookup: value})
    return response.status_code, response.content


@pytest.mark.parametrize(
    "lookup",
    [
        "api_secret",
        "api_secret__startswith",
        "api_secret__contains",
        "api_secret__regex",
        "api_secret__iexact",
        "api_secret_encrypted__startswith",
        "api_secret_encrypted__regex",
    ],
)
def test_it_answers_a_right_and_a_wrong_guess_the_same_on_the_engine_list(viewer, erp, lookup):
    # given: a right guess (a prefix, the whole secret, a pattern) and a wrong one
    right = {"api_secret": SECRET, "api_secret__iexact": SECRET, "api_secret__regex": "^SEK"}.get(lookup, "SEK")
    if lookup.startswith("api_secret_encrypted"):
        right = erp.api_secret_encrypted[:6] if "startswith" in lookup else "^" + erp.api_secret_encrypted[:6]
    # when
    right_answer = probe(viewer, ENGINES, lookup, right)
    wrong_answer = probe(viewer, ENGINES, lookup, "zzz-wrong")
    # then: refused, identically
    assert right_answer[0] == 400
    assert right_answer == wrong_answer
    assert SECRET.encode() not in right_answer[1]


@pytest.mark.parametrize(
    ("base", "lookup"),
    [
        (TENANTS, "engine__api_secret__startswith"),
        (TENANTS, "engine__api_secret_encrypted__startswith"),
        (TENANTS, "engine__api_secret"),
        (TOKENS, "key_hash__startswith"),
        (TOKENS, "user__password__startswith"),
    ],
)
def test_it_refuses_lookups_on_secrets_through_relations_and_on_token_hashes(viewer, erp, operator, base, lookup):
    # given: a tenant on the engine and a token, so a "right" guess would show one row
    make_tenant(engine=erp)
    token_issue(email=operator.email, password=PASSWORD)
    # when
    right_answer = probe(viewer, base, lookup, "S")
    wrong_answer = probe(viewer, base, lookup, "zzz")
    # then
    assert right_answer[0] == 400
    assert right_answer == wrong_answer


def test_it_still_filters_on_ordinary_fields(viewer, erp):
    response = viewer.get(ENGINES, {"kind": "erpnext", "name__startswith": "erp"})
    assert response.status_code == 200
    assert b"erp-prod" in response.content


def test_a_view_only_user_cannot_press_test_connection(viewer, erp, monkeypatch):
    # given: the engine check would be called with the stored credentials
    calls = []
    monkeypatch.setattr("tenants.admin.engine_connection_test", lambda **kw: calls.append(kw) or (True, "ok"))
    # when: the page, the button's URL and the changelist action
    page = viewer.get(f"{ENGINES}{erp.pk}/change/")
    button = viewer.post(f"{ENGINES}{erp.pk}/test/")
    action = viewer.post(ENGINES, {"action": "test_connection_action", "_selected_action": [erp.pk]})
    # then
    assert page.status_code == 200
    assert b"Test connection" not in page.content
    assert button.status_code in (302, 403)
    assert action.status_code in (200, 302, 403)
    assert calls == []


def test_a_user_who_may_change_the_connection_can_test_it(admin_client, erp, monkeypatch):
    calls = []
    monkeypatch.setattr("tenants.admin.engine_connection_test", lambda **kw: calls.append(kw) or (True, "ok"))
    assert b"Test connection" in admin_client.get(f"{ENGINES}{erp.pk}/change/").content
    admin_client.post(f"{ENGINES}{erp.pk}/test/")
    assert [c["connection"].pk for c in calls] == [erp.pk]
