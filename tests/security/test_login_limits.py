"""The log-in limits hold: counted atomically, per client address (X-Forwarded-For trusted only through our own
proxies), per email in one canonical form — and a look-alike address is not another user's."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import requests
from django.test import override_settings

from accounts.models import ApiToken
from tests.support.api_cast import PASSWORD, make_user

LOGIN = "/api/auth/login"


@pytest.fixture
def ops(db):
    return make_user("ops", email="ops@example.com", is_staff=True)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("backend", ["locmem", "redis"])
def test_it_answers_at_most_five_of_thirty_parallel_wrong_passwords(live_server, ops, settings, backend):
    # given: the per-email limit (5/min) in a cache shared by every request thread
    if backend == "redis":
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": settings.CELERY_BROKER_URL or "redis://127.0.0.1:6379/3",
                "KEY_PREFIX": f"test-{uuid.uuid4().hex}",
            }
        }
        if not settings.CELERY_BROKER_URL.startswith("redis://"):
            pytest.skip("needs Redis")
    statuses: list[int] = []
    start = threading.Barrier(30)

    def attempt(n):
        start.wait()
        for _ in range(20):
            try:
                response = requests.post(
                    live_server.url + LOGIN, json={"email": "ops@example.com", "password": f"wrong-{n}"}, timeout=60
                )
                break
            except requests.ConnectionError:
                # The test server's listen queue is short: a refused connection is sent again. (Were it counted
                # already, that could only add a 429, never a 401.)
                time.sleep(0.05)
        statuses.append(response.status_code)

    # when: thirty wrong passwords at once, from real threads over HTTP
    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then
    assert len(statuses) == 30
    assert statuses.count(401) <= 5
    assert statuses.count(429) == 30 - statuses.count(401)


@pytest.mark.django_db
def test_a_rotating_x_forwarded_for_does_not_escape_the_address_limit(anonymous):
    # given: ten wrong attempts, each claiming another client address and another email
    for n in range(10):
        response = anonymous.post(
            LOGIN, {"email": f"guess{n}@x.test", "password": "x"}, format="json", HTTP_X_FORWARDED_FOR=f"10.9.8.{n}"
        )
        assert response.status_code == 401
    # when
    response = anonymous.post(
        LOGIN, {"email": "guess99@x.test", "password": "x"}, format="json", HTTP_X_FORWARDED_FOR="10.9.8.99"
    )
    # then: they all came from one connection
    assert response.status_code == 429


@pytest.mark.django_db
def test_with_one_proxy_configured_it_counts_the_address_the_proxy_saw(anonymous):
    with override_settings(REST_FRAMEWORK={**_rest_framework(), "NUM_PROXIES": 1}):
        for n in range(10):
            response = anonymous.post(
                LOGIN,
                {"email": f"guess{n}@x.test", "password": "x"},
                format="json",
                HTTP_X_FORWARDED_FOR=f"spoofed-{n}, 10.1.1.1",
            )
            assert response.status_code == 401
        other_client = anonymous.post(
            LOGIN, {"email": "guess@x.test", "password": "x"}, format="json", HTTP_X_FORWARDED_FOR="10.2.2.2"
        )
        same_client = anonymous.post(
            LOGIN, {"email": "guess@x.test", "password": "x"}, format="json", HTTP_X_FORWARDED_FOR="x, 10.1.1.1"
        )
    assert other_client.status_code == 401
    assert same_client.status_code == 429


def _rest_framework():
    from django.conf import settings

    return dict(settings.REST_FRAMEWORK)


def test_num_proxies_of_zero_stays_zero(settings):
    # DRF reads None as "trust the whole header": 0 must reach it as 0.
    assert settings.REST_FRAMEWORK["NUM_PROXIES"] == 0


@pytest.mark.django_db
@pytest.mark.parametrize("lookalike", ["opſ@example.com", "ops@examplе.com", "ｏps@example.com", "OPſ@EXAMPLE.COM"])
def test_a_look_alike_address_does_not_log_in_as_another_user(anonymous, ops, lookalike):
    # when: the right password with a look-alike spelling (long s, Cyrillic e, full-width o)
    response = anonymous.post(LOGIN, {"email": lookalike, "password": PASSWORD}, format="json")
    # then
    assert response.status_code == 401
    assert not ApiToken.objects.exists()


@pytest.mark.django_db
def test_a_look_alike_address_counts_on_the_real_address(anonymous, ops):
    # given: five wrong guesses spelled with a long s (NFKC makes it "ops@example.com")
    for n in range(5):
        response = anonymous.post(
            LOGIN, {"email": "opſ@example.com", "password": "x"}, format="json", REMOTE_ADDR=f"10.0.0.{n}"
        )
        assert response.status_code == 401
    # when: the real address, from yet another address
    response = anonymous.post(
        LOGIN, {"email": "OPS@example.com", "password": PASSWORD}, format="json", REMOTE_ADDR="10.0.0.99"
    )
    # then: the same counter
    assert response.status_code == 429


@pytest.mark.django_db
def test_the_canonical_address_in_any_case_still_logs_in(anonymous, ops):
    response = anonymous.post(LOGIN, {"email": " OPS@Example.COM ", "password": PASSWORD}, format="json")
    assert response.status_code == 200
