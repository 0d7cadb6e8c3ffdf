"""POST /api/auth/login, Bearer tokens, log-out and the log-in throttles."""

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import ApiToken
from tests.support.api_cast import PASSWORD
from tests.support.workers import ROOT

pytestmark = pytest.mark.django_db

LOGIN = "/api/auth/login"


def test_it_logs_in_with_email_and_password(operator, anonymous, settings):
    # when
    response = anonymous.post(LOGIN, {"email": "operator@moran.test", "password": PASSWORD}, format="json")
    # then
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.MORAN_API_TOKEN_TTL
    assert response["Cache-Control"] == "no-store"
    # and the token opens the API
    listing = anonymous.get("/api/tenants", HTTP_AUTHORIZATION=f"Bearer {body['access_token']}")
    assert listing.status_code == 200


def test_it_matches_the_email_case_insensitively(operator, anonymous):
    response = anonymous.post(LOGIN, {"email": "  Operator@MORAN.test", "password": PASSWORD}, format="json")
    assert response.status_code == 200


def test_it_stores_only_a_hash_of_the_token(operator, anonymous):
    # when
    token = anonymous.post(LOGIN, {"email": operator.email, "password": PASSWORD}, format="json").json()["access_token"]
    # then
    row = ApiToken.objects.get(user=operator)
    assert row.key_hash != token and token not in row.key_hash
    assert token.startswith(row.prefix)


@pytest.mark.parametrize(
    "credentials",
    [
        {"email": "operator@moran.test", "password": "wrong"},
        {"email": "nobody@moran.test", "password": PASSWORD},
    ],
    ids=["wrong-password", "unknown-email"],
)
def test_it_refuses_bad_credentials_without_saying_which_part(operator, anonymous, credentials):
    # when
    response = anonymous.post(LOGIN, credentials, format="json")
    # then
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_credentials", "detail": "Invalid email or password"}
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert not ApiToken.objects.exists()


def test_it_refuses_an_inactive_user(operator, anonymous):
    # given
    operator.is_active = False
    operator.save()
    # when
    response = anonymous.post(LOGIN, {"email": operator.email, "password": PASSWORD}, format="json")
    # then
    assert response.status_code == 401


def test_it_answers_missing_fields_with_field_errors(anonymous):
    response = anonymous.post(LOGIN, {}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid"
    assert set(body["fields"]) == {"email", "password"}


def test_it_never_echoes_the_password(anonymous):
    response = anonymous.post(LOGIN, {"email": "x" * 300, "password": "hunter2-secret"}, format="json")
    assert response.status_code == 400
    assert "hunter2-secret" not in response.content.decode()


@pytest.mark.parametrize(
    "header",
    [None, "Bearer not-a-token", "Bearer", "Bearer a b", "Token abc", "Basic b3BlcmF0b3I6eA=="],
    ids=["none", "unknown", "empty", "three-parts", "other-keyword", "basic"],
)
def test_it_answers_401_without_a_valid_token(operator, anonymous, header):
    # when
    kwargs = {"HTTP_AUTHORIZATION": header} if header else {}
    response = anonymous.get("/api/tenants", **kwargs)
    # then
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert response.json()["error"] in {"not_authenticated", "authentication_failed"}


def test_it_answers_401_once_the_token_expired(operator, client_for):
    # given
    client = client_for(operator)
    assert client.get("/api/tenants").status_code == 200
    # when
    ApiToken.objects.filter(user=operator).update(expires_at=timezone.now() - timedelta(seconds=1))
    # then
    response = client.get("/api/tenants")
    assert response.status_code == 401
    assert response.json() == {"error": "authentication_failed", "detail": "Invalid or expired token: log in again"}


def test_it_answers_401_once_the_user_is_deactivated(operator, client_for):
    client = client_for(operator)
    operator.is_active = False
    operator.save()
    assert client.get("/api/tenants").status_code == 401


def test_it_revokes_the_token_at_logout(operator, client_for):
    # given
    client = client_for(operator)
    # when
    response = client.post("/api/auth/logout")
    # then
    assert response.status_code == 204
    assert client.get("/api/tenants").status_code == 401


def test_it_throttles_log_ins_per_address(anonymous, operator, settings):
    # given: ten attempts with different emails, so that only the per-address count applies
    for n in range(10):
        assert anonymous.post(LOGIN, {"email": f"guess{n}@x.test", "password": "x"}, format="json").status_code == 401
    # when
    response = anonymous.post(LOGIN, {"email": operator.email, "password": PASSWORD}, format="json")
    # then: even the right password waits
    assert response.status_code == 429
    assert response.json()["error"] == "throttled"
    assert int(response["Retry-After"]) > 0


def test_it_throttles_log_ins_per_email(anonymous, operator):
    # given: five wrong guesses for one account, each from another address
    for n in range(5):
        response = anonymous.post(
            LOGIN, {"email": operator.email, "password": "x"}, format="json", REMOTE_ADDR=f"10.0.0.{n}"
        )
        assert response.status_code == 401
    # when
    response = anonymous.post(
        LOGIN, {"email": operator.email.upper(), "password": PASSWORD}, format="json", REMOTE_ADDR="10.0.0.99"
    )
    # then
    assert response.status_code == 429


@pytest.mark.parametrize(
    ("environment", "backend"),
    [
        ({"CELERY_BROKER_URL": "redis://127.0.0.1:6379/5"}, "django.core.cache.backends.redis.RedisCache"),
        ({"REDIS_URL": "redis://127.0.0.1:6379/6"}, "django.core.cache.backends.redis.RedisCache"),
        ({"CELERY_BROKER_URL": "amqp://guest@127.0.0.1//"}, "django.core.cache.backends.locmem.LocMemCache"),
        ({}, "django.core.cache.backends.locmem.LocMemCache"),
    ],
    ids=["redis-broker", "redis-url", "amqp-broker", "embedded"],
)
def test_it_counts_log_ins_in_redis_when_there_is_one(environment, backend):
    # given: the settings as a fresh process reads them from this environment
    env = {
        k: v for k, v in os.environ.items() if k not in {"CELERY_BROKER_URL", "REDIS_URL", "CACHE_URL", "DATABASE_URL"}
    }
    env.update(environment, DJANGO_SETTINGS_MODULE="moran.settings")
    # when
    out = subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.CACHES['default']['BACKEND'])"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    # then
    assert out.stdout.strip() == backend
