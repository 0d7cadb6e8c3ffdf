"""Bad input never answers 500, and every /api/ answer is JSON: surrogates, deep nesting, oversized bodies, unknown
URLs with unsafe methods (not Django's HTML CSRF page), empty filter values, and bad ids in the admin."""

from __future__ import annotations

import pytest
from django.test import Client

from provisioning.models import Onboarding

pytestmark = pytest.mark.django_db

LOGIN = "/api/auth/login"


def post_raw(client, path, body: bytes, **extra):
    return client.generic("POST", path, body, content_type="application/json", **extra)


def test_an_unpaired_surrogate_is_a_400_naming_the_problem(anonymous):
    response = post_raw(anonymous, LOGIN, b'{"email": "\\ud800@x", "password": "x"}')
    assert response.status_code == 400
    assert response.json()["error"] == "parse_error"
    assert "surrogate" in response.json()["detail"]


@pytest.mark.parametrize("depth", [3000, 100_000])
def test_json_nested_thousands_deep_is_a_400(anonymous, depth):
    body = b'{"email": ' + b"[" * depth + b"]" * depth + b', "password": "x"}'
    response = post_raw(anonymous, LOGIN, body)
    assert response.status_code == 400
    assert "nested too deeply" in response.json()["detail"]


def test_a_20_mb_body_is_a_413_before_it_is_parsed(anonymous, operator, client_for):
    body = b'{"email": "' + b"a" * (20 * 1024 * 1024) + b'", "password": "x"}'
    for client, path in ((anonymous, LOGIN), (client_for(operator), "/api/tenants")):
        response = post_raw(client, path, body)
        assert response.status_code == 413
        assert response.json()["error"] == "too_large"
        assert "MORAN_MAX_JSON_BODY" in response.json()["detail"]


def test_the_limit_is_the_setting(anonymous, settings):
    settings.MORAN_MAX_JSON_BODY = 1000
    over = post_raw(anonymous, LOGIN, b'{"email": "' + b"a" * 1000 + b'", "password": "x"}')
    under = post_raw(anonymous, LOGIN, b'{"email": "' + b"a" * 900 + b'@x.test", "password": "x"}')
    assert over.status_code == 413
    assert under.status_code == 400  # too long for an email: read, parsed, refused by validation


@pytest.mark.parametrize("charset", ["rot13", "zlib", "utf-16", "no-such-charset"])
def test_an_odd_charset_is_never_a_500(anonymous, charset):
    response = anonymous.generic(
        "POST", LOGIN, b'{"email": "a@b.c", "password": "x"}', content_type=f"application/json; charset={charset}"
    )
    assert response.status_code in (400, 401)


def test_nan_is_not_json(anonymous):
    response = post_raw(anonymous, LOGIN, b'{"email": NaN, "password": "x"}')
    assert response.status_code == 400


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "GET"])
@pytest.mark.parametrize(
    "path", ["/api/tenants/", "/api/auth/login/", "/api/nope", "/api/provisioning/tenants/x/", "/api/", "/api"]
)
def test_unknown_api_urls_are_a_json_404_whatever_the_method(method, path):
    # given: a browser-like client that enforces CSRF, as the live server does
    client = Client(enforce_csrf_checks=True)
    # when
    response = client.generic(method, path, b"{}", content_type="application/json")
    # then
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == "not_found"


@pytest.mark.parametrize("path", ["abc/change/", "abc/status.json", "abc/", "1x/change/", "abc/status.json/change/"])
def test_the_admin_answers_404_for_a_bad_onboarding_id(admin_client, acme, path):
    response = admin_client.get(f"/admin/provisioning/onboarding/{path}", follow=True)
    assert response.status_code == 404


def test_the_admin_still_opens_a_real_onboarding(admin_client, acme):
    pk = Onboarding.objects.get(tenant=acme).pk
    assert admin_client.get(f"/admin/provisioning/onboarding/{pk}/change/").status_code == 200
    assert admin_client.get(f"/admin/provisioning/onboarding/{pk}/status.json").status_code == 200


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/api/tenants?status=", "status"),
        ("/api/tenants?search=", "search"),
        ("/api/provisioning/tenants/acme/logs?step=", "step"),
        ("/api/provisioning/tenants/acme/logs?run=", "run"),
        ("/api/provisioning/tenants/acme/logs?run=%20", "run"),
    ],
)
def test_an_empty_filter_value_is_a_400_naming_the_parameter(operator, acme, client_for, path, parameter):
    response = client_for(operator).get(path)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid"
    assert list(body["fields"]) == [parameter]
    assert parameter in body["detail"]


@pytest.mark.parametrize("query", ["page=x", "page=0", "page=1&page=2", "page_size=-1", "page_size=1.5", "page=last"])
def test_a_bad_page_or_page_size_is_a_400_naming_it(operator, acme, client_for, query):
    response = client_for(operator).get(f"/api/tenants?{query}")
    assert response.status_code == 400
    assert list(response.json()["fields"]) == [query.split("=")[0]]
