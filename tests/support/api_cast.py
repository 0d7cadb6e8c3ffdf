"""The fixed cast of the API tests: a staff operator, a tenant owner, an outsider (who owns a tenant of their own)
and anonymous callers; and clients that log in the way operators do. It is a pytest plugin (see
``tests/conftest.py``): its fixtures are there for every test."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from accounts.services import token_issue
from tests.support.factories import make_tenant

PASSWORD = "correct horse battery staple"

__all__ = [
    "PASSWORD",
    "api_cache",
    "operator",
    "owner",
    "outsider",
    "acme",
    "globex",
    "client_for",
    "anonymous",
    "make_user",
]


@pytest.fixture(autouse=True)
def api_cache(settings):
    """A fresh, private cache per test, so the log-in throttles count only this test's attempts (the real cache may
    be the shared Redis; clearing that would clear the broker's database too)."""
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": uuid.uuid4().hex}
    }
    # A fast hasher: production's PBKDF2 costs seconds per password on a busy CI machine, and proves nothing here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def make_user(username: str, *, email: str, is_staff: bool = False, password: str = PASSWORD):
    return get_user_model().objects.create_user(username=username, email=email, password=password, is_staff=is_staff)


@pytest.fixture
def operator(db):
    return make_user("operator", email="operator@moran.test", is_staff=True)


@pytest.fixture
def owner(db):
    return make_user("owner", email="owner@acme.test")


@pytest.fixture
def outsider(db):
    return make_user("outsider", email="someone@globex.test")


@pytest.fixture
def acme(owner):
    return make_tenant(slug="acme", company_name="Acme Ltd", abbr="ACME", owner=owner)


@pytest.fixture
def globex(outsider):
    return make_tenant(slug="globex", company_name="Globex GmbH", abbr="GLBX", owner=outsider)


@pytest.fixture
def client_for():
    """``client_for(user)``: an API client holding a token of that user, issued by the log-in service."""

    def make(user):
        client = APIClient()
        issued = token_issue(email=user.email, password=PASSWORD)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.token}")
        client.token = issued.token
        return client

    return make


@pytest.fixture
def anonymous():
    return APIClient()
