"""/api/provisioning/tenants/<tenant_id>/{status,logs,continue,retry,cancel} with the fixed cast; errors as JSON
under /api/; the schema and the docs page. (The real-worker path is in test_api_realpath.py.)"""

import uuid

import pytest
from django.test import RequestFactory
from drf_spectacular.validation import validate_schema

from moran.api.exception_handlers import handler500
from provisioning.models import OnboardingStatus, ProvisioningRun, SandboxFault, StepLog
from provisioning.selectors import onboarding_status
from provisioning.services import onboarding_start

pytestmark = pytest.mark.django_db

BASE = "/api/provisioning/tenants"
ACTIONS = {"continue": 202, "retry": 202}


def url(tenant, what):
    return f"{BASE}/{tenant if isinstance(tenant, str) else tenant.slug}/{what}"


# --- status -------------------------------------------------------------------------------------------------------
def test_it_answers_the_status_body_exactly(operator, acme, client_for):
    # when
    response = client_for(operator).get(url(acme, "status"))
    # then
    assert response.status_code == 200
    assert response.json() == onboarding_status(onboarding=acme.onboarding)
    body = response.json()
    assert {"tenant_id", "status", "steps_completed", "total_steps", "progress", "current_step", "errors"} <= set(body)
    assert [s["name"] for s in body["steps"]][:2] == ["step_0_engine_check", "step_1_company"]


def test_it_finds_the_tenant_by_id_too(operator, acme, client_for):
    response = client_for(operator).get(f"{BASE}/{acme.id}/status")
    assert response.json()["tenant_id"] == str(acme.id)


def test_it_shows_an_owner_the_status_of_their_tenant(owner, acme, client_for):
    assert client_for(owner).get(url(acme, "status")).status_code == 200


@pytest.mark.parametrize("what", ["status", "logs"])
def test_it_hides_other_tenants_status_and_logs(owner, outsider, acme, globex, client_for, what):
    # the owner asks about globex, the outsider about acme, both by slug and by id
    for user, other in ((owner, globex), (outsider, acme)):
        client = client_for(user)
        for ident in (other.slug, str(other.id)):
            response = client.get(f"{BASE}/{ident}/{what}")
            assert response.status_code == 404
            assert response.json() == {"error": "not_found", "detail": f"Unknown tenant '{ident}'"}


@pytest.mark.parametrize("what", ["status", "logs"])
def test_it_answers_anonymous_with_401(acme, anonymous, what):
    response = anonymous.get(url(acme, what))
    assert response.status_code == 401
    assert response.json()["error"] == "not_authenticated"


@pytest.mark.parametrize("ident", ["nobody", str(uuid.uuid4()), "%00", "a%20b", "-x", "x" * 101, "ä"])
def test_it_answers_an_unknown_tenant_with_404(operator, client_for, ident):
    response = client_for(operator).get(f"{BASE}/{ident}/status")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


# --- logs ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def acme_logs(acme):
    run_a, run_b = uuid.uuid4(), uuid.uuid4()
    for run, step, message in [
        (run_a, "step_0_engine_check", "first"),
        (run_a, "step_1_company", "second"),
        (run_b, "step_0_engine_check", "third"),
        (run_b, "", "fourth"),
    ]:
        StepLog.objects.create(onboarding=acme.onboarding, run_id=run, step=step, message=message)
    return run_a, run_b


def test_it_answers_the_logs_newest_last(owner, acme, acme_logs, client_for):
    # when
    response = client_for(owner).get(url(acme, "logs"))
    # then
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 4
    assert [line["message"] for line in body["results"]] == ["first", "second", "third", "fourth"]
    assert set(body["results"][0]) == {"id", "at", "run_id", "step", "attempt", "level", "message"}


def test_it_filters_the_logs_by_step_and_run(operator, acme, acme_logs, client_for):
    # given
    run_a, run_b = acme_logs
    client = client_for(operator)
    # when
    by_step = client.get(url(acme, "logs") + "?step=step_0_engine_check").json()["results"]
    by_run = client.get(url(acme, "logs") + f"?run={run_b}").json()["results"]
    both = client.get(url(acme, "logs") + f"?run={run_a}&step=step_1_company").json()["results"]
    # then
    assert [line["message"] for line in by_step] == ["first", "third"]
    assert [line["message"] for line in by_run] == ["third", "fourth"]
    assert [line["message"] for line in both] == ["second"]


def test_it_paginates_the_logs(operator, acme, acme_logs, client_for):
    body = client_for(operator).get(url(acme, "logs") + "?page_size=3&page=2").json()
    assert (body["count"], [line["message"] for line in body["results"]]) == (4, ["fourth"])


@pytest.mark.parametrize(
    ("query", "status", "error"),
    [("step=step_99_nothing", 400, "invalid"), ("run=not-a-uuid", 400, "invalid"), ("page=x", 400, "invalid")],
)
def test_it_refuses_bad_log_filters(operator, acme, client_for, query, status, error):
    response = client_for(operator).get(url(acme, "logs") + "?" + query)
    assert (response.status_code, response.json()["error"]) == (status, error)


def test_it_keeps_other_tenants_log_lines_out(operator, acme, globex, acme_logs, client_for):
    StepLog.objects.create(onboarding=globex.onboarding, step="step_0_engine_check", message="globex only")
    messages = [line["message"] for line in client_for(operator).get(url(acme, "logs")).json()["results"]]
    assert "globex only" not in messages


# --- continue / retry / cancel: who may ---------------------------------------------------------------------------
@pytest.mark.parametrize("action", ["continue", "retry"])
def test_it_lets_an_operator_start_a_run_with_202_and_the_status_body(operator, acme, client_for, action):
    # when
    response = client_for(operator).post(url(acme, action))
    # then: the run is in charge (never enqueued: this test's transaction does not commit)
    assert response.status_code == 202
    body = response.json()
    run = ProvisioningRun.objects.get(onboarding=acme.onboarding)
    assert (run.kind, run.requested_by) == (action, "operator@moran.test")
    assert body["status"] == OnboardingStatus.IN_PROGRESS
    assert body["run_id"] == str(run.id)
    acme.onboarding.refresh_from_db()
    assert body == onboarding_status(onboarding=acme.onboarding)


def test_it_lets_an_operator_cancel_the_active_run(operator, acme, client_for):
    # given
    onboarding_start(onboarding=acme.onboarding)
    # when
    response = client_for(operator).post(url(acme, "cancel"))
    # then
    assert response.status_code == 200
    assert response.json()["status"] == OnboardingStatus.CANCELLED
    assert response.json()["run_id"] is None
    assert ProvisioningRun.objects.get(onboarding=acme.onboarding).outcome == "cancelled"


@pytest.mark.parametrize("action", ["continue", "retry", "cancel"])
def test_it_forbids_owners_to_act_on_their_own_tenant(owner, acme, client_for, action):
    # when
    response = client_for(owner).post(url(acme, action))
    # then
    assert response.status_code == 403
    assert response.json() == {"error": "permission_denied", "detail": "Only operators (staff users) may do this"}
    assert not ProvisioningRun.objects.exists()


@pytest.mark.parametrize("action", ["continue", "retry", "cancel"])
def test_it_hides_other_tenants_from_actions(outsider, acme, client_for, action):
    response = client_for(outsider).post(url(acme, action))
    assert response.status_code == 404
    assert not ProvisioningRun.objects.exists()


@pytest.mark.parametrize("action", ["continue", "retry", "cancel"])
def test_it_answers_anonymous_actions_with_401(acme, anonymous, action):
    assert anonymous.post(url(acme, action)).status_code == 401
    assert not ProvisioningRun.objects.exists()


@pytest.mark.parametrize("action", ["continue", "retry", "cancel"])
def test_it_answers_an_action_on_an_unknown_tenant_with_404(operator, client_for, action):
    assert client_for(operator).post(url("nobody", action)).status_code == 404


@pytest.mark.parametrize("action", ["continue", "retry", "cancel"])
def test_it_answers_get_on_an_action_with_405(operator, acme, client_for, action):
    response = client_for(operator).get(url(acme, action))
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"


# --- continue / retry / cancel: conflicts -------------------------------------------------------------------------
@pytest.mark.parametrize("action", ["continue", "retry"])
def test_it_refuses_a_second_run_while_one_is_active(operator, acme, client_for, action):
    # given
    client = client_for(operator)
    assert client.post(url(acme, "continue")).status_code == 202
    # when
    response = client.post(url(acme, action))
    # then
    assert response.status_code == 409
    assert response.json()["error"] == "run_active"
    assert ProvisioningRun.objects.filter(onboarding=acme.onboarding).count() == 1


def test_it_refuses_to_cancel_when_no_run_is_active(operator, acme, client_for):
    response = client_for(operator).post(url(acme, "cancel"))
    assert response.status_code == 409
    assert response.json()["error"] == "no_active_run"


def test_it_refuses_to_continue_a_completed_tenant(operator, acme, client_for, eager, on_commit):
    # given: provisioned in-process
    on_commit(onboarding_start, onboarding=acme.onboarding)
    acme.onboarding.refresh_from_db()
    assert acme.onboarding.status == OnboardingStatus.COMPLETED
    # when
    response = client_for(operator).post(url(acme, "continue"))
    # then
    assert response.status_code == 409
    assert response.json()["error"] == "nothing_to_continue"


def test_it_continues_a_partial_tenant_to_completed_in_process(operator, acme, client_for, eager, on_commit):
    # given: step 4 fails once, so the tenant is PARTIAL
    SandboxFault.objects.create(tenant=acme, step="step_4_cost_centers", kind=SandboxFault.Kind.PERMANENT)
    on_commit(onboarding_start, onboarding=acme.onboarding)
    client = client_for(operator)
    partial = client.get(url(acme, "status")).json()
    assert (partial["status"], partial["steps_completed"], partial["current_step"]) == (
        "PARTIAL",
        4,
        "step_4_cost_centers",
    )
    assert [e["step"] for e in partial["errors"]] == ["step_4_cost_centers"]
    # when: continue runs in-process here (the embedded mode)
    response = on_commit(client.post, url(acme, "continue"))
    # then
    assert response.status_code == 202
    assert client.get(url(acme, "status")).json()["status"] == "COMPLETED"


# --- errors as JSON under /api/ -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/nope", "/api/", "/api/tenants/acme/extra", "/api/provisioning/tenants/acme"])
def test_it_answers_unknown_api_urls_with_json_404(operator, acme, client_for, path):
    for method in ("get", "post", "delete"):
        response = getattr(client_for(operator), method)(path)
        assert response.status_code == 404
        assert response["Content-Type"] == "application/json"
        assert response.json()["error"] == "not_found"


def test_it_answers_a_server_error_under_api_as_json():
    response = handler500(RequestFactory().get("/api/tenants"))
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert b"Traceback" not in response.content


def test_it_keeps_html_error_pages_outside_api():
    response = handler500(RequestFactory().get("/admin/"))
    assert response["Content-Type"].startswith("text/html")


def test_it_sends_the_bare_api_path_to_a_json_404(anonymous):
    response = anonymous.get("/api", follow=True)
    assert response.redirect_chain == []
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert anonymous.get("/not-api").status_code == 404


def test_it_answers_malformed_json_with_400(operator, client_for):
    response = client_for(operator).post("/api/tenants", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"] == "parse_error"


def test_it_answers_a_form_body_with_415(operator, client_for):
    response = client_for(operator).post("/api/tenants", "slug=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"


# --- the schema and the docs page ---------------------------------------------------------------------------------
def test_it_serves_a_valid_openapi_3_schema(anonymous):
    # when
    response = anonymous.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    # then
    assert response.status_code == 200
    schema = response.json()
    validate_schema(schema)  # raises on an invalid OpenAPI 3 document
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) == {
        "/api/auth/login",
        "/api/auth/logout",
        "/api/tenants",
        "/api/tenants/{tenant_id}",
        "/api/tenants/batch",
        "/api/tenants/batch/{batch_id}",
        *(
            f"/api/provisioning/tenants/{{tenant_id}}/{what}"
            for what in ("status", "logs", "continue", "retry", "cancel")
        ),
    }
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert set(schema["paths"]["/api/provisioning/tenants/{tenant_id}/continue"]["post"]["responses"]) == {
        "202",
        "401",
        "403",
        "404",
        "409",
    }


def test_it_serves_the_docs_page(anonymous):
    response = anonymous.get("/api/docs/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b"/api/schema/" in response.content
