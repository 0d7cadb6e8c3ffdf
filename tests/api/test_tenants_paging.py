"""GET /api/tenants at size: query counts flat in the page size, deep pages that match the plain ordering, the
step states left unread, the search on name, slug and company."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from moran.paging import KeysFirstPaginator
from tests.support.factories import make_tenant

pytestmark = pytest.mark.django_db


@pytest.fixture
def many():
    return [make_tenant(slug=f"bulk-{n:02d}", company_name=f"Bulk {n} Ltd", abbr=f"BK{n}") for n in range(12)]


def queries(client, url):
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200, response.content
    return ctx.captured_queries, response.json()


def test_it_lists_with_the_same_queries_whatever_the_page_size(operator, client_for, many):
    client = client_for(operator)
    small, _ = queries(client, "/api/tenants?page_size=2")
    large, body = queries(client, "/api/tenants?page_size=10")
    assert len(body["results"]) == 10
    assert len(small) == len(large)


def test_it_does_not_read_the_step_states_it_does_not_send(operator, client_for, many):
    captured, body = queries(client_for(operator), "/api/tenants")
    assert body["results"][0]["onboarding"]["status"] == "PENDING"
    assert not [q["sql"] for q in captured if "provisioning_steps" in q["sql"]]


def test_a_deep_page_holds_what_the_plain_ordering_puts_there(operator, client_for, many, monkeypatch):
    # given every page read keys first
    monkeypatch.setattr(KeysFirstPaginator, "deep_offset", 0)
    client = client_for(operator)
    # when
    pages = [queries(client, f"/api/tenants?page_size=5&page={page}") for page in (1, 2, 3)]
    # then: the slugs in order, none twice, none missing; as many queries on page 3 as on page 1
    assert [t["slug"] for _, body in pages for t in body["results"]] == sorted(t.slug for t in many)
    assert len(pages[0][0]) == len(pages[2][0])
    assert pages[2][1]["count"] == 12


@pytest.mark.parametrize(
    "term, expected",
    [("needle", ["needle-co"]), ("haystack", ["needle-co"]), ("PINS AND", ["needle-co"]), ("le-c", ["needle-co"])],
)
def test_it_searches_name_slug_and_company_in_any_case(operator, client_for, term, expected):
    make_tenant(slug="needle-co", name="Pins and Needles", company_name="Haystack GmbH", abbr="NDL")
    make_tenant(slug="other", name="Other", company_name="Other GmbH", abbr="OTH")
    _, body = queries(client_for(operator), f"/api/tenants?search={term}")
    assert [t["slug"] for t in body["results"]] == expected
