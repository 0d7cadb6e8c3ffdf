"""The front door: `make console` on a fresh clone's embedded default (no DEBUG) gives a styled admin, a working log-in,
demo tenants, and an API docs page that needs no other host."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from tests.support.console import embedded_env, start_console
from tests.support.workers import ROOT


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    console = start_console(tmp_path_factory.mktemp("console"))
    yield console
    console.stop()


class References(HTMLParser):
    """Every URL an HTML page points at: src and href attributes, and quoted `url: "…"` values in inline scripts."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self._script = False

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in {"src", "href", "action", "srcset"} and value]
        self._script = tag == "script"

    def handle_endtag(self, tag):
        self._script = False

    def handle_data(self, data):
        if self._script:
            self.urls += re.findall(r"""\burl\s*[:=]\s*["']([^"']+)["']""", data)
            self.urls += re.findall(r"""["'](https?://[^"']+)["']""", data)


def test_it_serves_the_admin_stylesheet_without_debug(console):
    # when: the admin's and our own stylesheets are asked for, as the log-in page's browser does
    login = requests.get(f"{console.url}/admin/login/", timeout=10)
    base = requests.get(f"{console.url}/static/admin/css/base.css", timeout=10)
    ours = requests.get(f"{console.url}/static/provisioning/admin.css", timeout=10)
    # then
    assert login.status_code == 200 and "/static/admin/css/base.css" in login.text
    assert base.status_code == 200, base.text[:200]
    assert base.headers["Content-Type"].startswith("text/css")
    assert "--body-bg" in base.text, "the admin's real stylesheet"
    assert ours.status_code == 200 and ours.headers["Content-Type"].startswith("text/css")
    assert "moran" in ours.text


def test_it_creates_an_operator_and_a_completed_and_a_partial_demo_tenant(console):
    # then: the output says who can log in and what there is to look at
    output = console.output
    assert "tenant demo-northwind: COMPLETED 10/10 steps" in output, output
    assert "tenant demo-acme: PARTIAL 4/10 steps" in output, output
    assert "execute in this process" in output, "on the embedded default a Continue runs in-process"
    # and the printed password logs in
    session = requests.Session()
    session.get(f"{console.url}/admin/login/", timeout=10)
    answer = session.post(
        f"{console.url}/admin/login/?next=/admin/",
        data={"username": "admin", "password": console.password, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        timeout=10,
    )
    assert answer.status_code == 200 and answer.url == f"{console.url}/admin/", answer.text[:500]
    listing = session.get(f"{console.url}/admin/provisioning/onboarding/", timeout=10)
    assert "Acme Demo Ltd" in listing.text and "Northwind Demo Ltd" in listing.text


def test_the_api_docs_page_references_no_other_host(console):
    # when
    page = requests.get(f"{console.url}/api/docs/", timeout=10)
    assert page.status_code == 200
    parser = References()
    parser.feed(page.text)
    # then: every reference is relative or to this server, and answers
    assert len(parser.urls) >= 4, parser.urls  # the favicon, the stylesheet, two scripts, the schema
    here = urlsplit(console.url).netloc
    for url in parser.urls:
        assert urlsplit(url).netloc in ("", here), f"{url} is on another host"
        answer = requests.get(urljoin(page.url, url), timeout=10)
        assert answer.status_code == 200, url
    assert any(url.endswith("swagger-ui-bundle.js") for url in parser.urls)
    assert '"validatorUrl": null' in page.text, "Swagger UI's validator badge would load from validator.swagger.io"


def test_it_refuses_to_make_demo_data_in_production(tmp_path):
    # when
    result = subprocess.run(
        [sys.executable, "manage.py", "console_demo", "--skip-checks"],
        cwd=ROOT,
        env=embedded_env(tmp_path, MORAN_ENV="production"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    # then
    assert result.returncode != 0
    assert "console_demo is for development" in result.stderr
    assert not (tmp_path / "moran.sqlite3").exists(), "it stopped before touching a database"


def test_production_keeps_collectstatic_and_hashed_names(tmp_path):
    # given: the settings as production and as the embedded default load them
    probe = (
        "import django, json; django.setup(); from django.conf import settings as s; print(json.dumps("
        "{'storage': s.STORAGES['staticfiles']['BACKEND'], 'finders': getattr(s, 'WHITENOISE_USE_FINDERS', False),"
        " 'nostatic': 'whitenoise.runserver_nostatic' in s.INSTALLED_APPS}))"
    )

    def loaded(**extra):
        env = embedded_env(tmp_path, DJANGO_SETTINGS_MODULE="moran.settings", **extra)
        result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    # then: only development serves from the apps' folders
    assert loaded(MORAN_ENV="production") == {
        "storage": "whitenoise.storage.CompressedManifestStaticFilesStorage",
        "finders": False,
        "nostatic": False,
    }
    assert loaded() == {"storage": "whitenoise.storage.CompressedStaticFilesStorage", "finders": True, "nostatic": True}
