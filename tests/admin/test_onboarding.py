"""The onboarding console: list, filters, search, query count, detail timeline, and the operator actions."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from provisioning.models import Onboarding, OnboardingStatus, ProvisioningRun, SandboxFault
from provisioning.services import onboarding_start
from tenants.models import EngineConnection
from tests.support.factories import make_tenant
from tests.support.queries import count_queries

pytestmark = pytest.mark.django_db

LIST_URL = reverse("admin:provisioning_onboarding_changelist")


def detail_url(onboarding):
    return reverse("admin:provisioning_onboarding_change", args=[onboarding.pk])


def operate_url(onboarding, operation):
    return reverse("admin:provisioning_onboarding_operate", args=[onboarding.pk, operation])


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


@pytest.fixture
def partial(eager, on_commit):
    """A tenant whose step 4 failed once: PARTIAL 4/10 with the engine's error."""
    tenant = make_tenant(slug="partial-co", company_name="Partial Co", abbr="PCO")
    SandboxFault.objects.create(tenant=tenant, step="step_4_cost_centers", kind=SandboxFault.Kind.PERMANENT)
    on_commit(onboarding_start, onboarding=tenant.onboarding)
    tenant.onboarding.refresh_from_db()
    assert tenant.onboarding.status == OnboardingStatus.PARTIAL
    return tenant.onboarding


@pytest.fixture
def completed(eager, on_commit):
    tenant = make_tenant(slug="done-co", company_name="Done Co", abbr="DCO")
    on_commit(onboarding_start, onboarding=tenant.onboarding)
    tenant.onboarding.refresh_from_db()
    assert tenant.onboarding.status == OnboardingStatus.COMPLETED
    return tenant.onboarding


@pytest.fixture
def viewer(client):
    """A staff member who may look but not operate (view permission only)."""
    user = User.objects.create_user("viewer", password="pw-viewer-1", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_onboarding", "view_tenant", "view_engineconnection"])
    )
    client.force_login(user)
    return client


# --- the list -----------------------------------------------------------------------------------------------------
def test_it_lists_tenants_with_badge_progress_and_last_error(admin_client, partial, completed):
    # when
    response = admin_client.get(LIST_URL)
    # then
    assert response.status_code == 200
    html = response.content.decode()
    assert "partial-co" in html and "done-co" in html
    assert 'data-status="PARTIAL"' in html and 'data-status="COMPLETED"' in html
    assert "4/10 &middot; 40 %" in html and "10/10 &middot; 100 %" in html
    assert "step_4_cost_centers: ValidationError [417]: Sandbox fault injected" in html
    assert 'sandbox <small class="moran-kind">Sandbox</small>' in html
    assert 'id="moran-list-refresh"' in html


def test_it_shows_newest_activity_first(admin_client, partial, completed):
    # given: the partial one was touched last
    Onboarding.objects.filter(pk=partial.pk).update(updated_at=completed.updated_at.replace(year=2099))
    # when
    rows = list(admin_client.get(LIST_URL).context["cl"].result_list)
    # then
    assert [o.tenant.slug for o in rows] == ["partial-co", "done-co"]


def test_it_filters_by_status_and_engine(admin_client, partial, completed):
    other_engine = EngineConnection.objects.create(name="other-sandbox", kind=EngineConnection.Kind.SANDBOX)
    make_tenant(slug="elsewhere", company_name="Elsewhere Ltd", abbr="ELS", engine=other_engine)

    def slugs(query):
        response = admin_client.get(LIST_URL + query)
        assert response.status_code == 200
        return sorted(o.tenant.slug for o in response.context["cl"].result_list)

    assert slugs("?status__exact=PARTIAL") == ["partial-co"]
    assert slugs("?status__exact=COMPLETED") == ["done-co"]
    assert slugs("?status__exact=PENDING") == ["elsewhere"]
    assert slugs(f"?tenant__engine__id__exact={other_engine.pk}") == ["elsewhere"]
    assert slugs(f"?tenant__engine__id__exact={partial.tenant.engine_id}") == ["done-co", "partial-co"]


def test_it_searches_by_name_slug_and_company(admin_client, partial, completed):
    def slugs(query):
        return sorted(o.tenant.slug for o in admin_client.get(LIST_URL, {"q": query}).context["cl"].result_list)

    assert slugs("partial-co") == ["partial-co"]  # slug
    assert slugs("Done Co") == ["done-co"]  # company (and name, which defaults to it)
    assert slugs("co") == ["done-co", "partial-co"]
    assert slugs("nope") == []


def test_it_searches_by_display_name(admin_client, eager):
    make_tenant(slug="zeta", name="Zeta Workspace", company_name="Zeta Holdings", abbr="ZET")
    response = admin_client.get(LIST_URL, {"q": "Workspace"})
    assert [o.tenant.slug for o in response.context["cl"].result_list] == ["zeta"]


def test_it_keeps_the_list_query_count_constant_in_the_number_of_rows(admin_client, partial):
    # given: one tenant (with step errors and logs)
    one = count_queries(admin_client, LIST_URL)
    # when: fifty
    for n in range(49):
        make_tenant(slug=f"bulk-{n}", company_name=f"Bulk {n} Ltd", abbr=f"BK{n}")
    assert Onboarding.objects.count() == 50
    fifty = count_queries(admin_client, LIST_URL)
    # then
    assert one == fifty, f"{one} queries for 1 row, {fifty} for 50"
    print(f"onboarding changelist: {one} queries for 1 row, {fifty} for 50")


# --- the detail page -----------------------------------------------------------------------------------------------
def test_it_shows_the_step_timeline_and_recent_log_lines(admin_client, partial):
    # when
    response = admin_client.get(detail_url(partial))
    # then
    assert response.status_code == 200
    html = response.content.decode()
    timeline = response.context["timeline"]
    assert [s["name"] for s in timeline][:5] == [
        "step_0_engine_check",
        "step_1_company",
        "step_2_fiscal_year",
        "step_3_chart_of_accounts",
        "step_4_cost_centers",
    ]
    failed = timeline[4]
    assert (failed["attempts"], failed["error"]["engine_status"]) == (1, 417)
    assert [(a.number, a.outcome) for a in failed["tries"]] == [(1, "failed")]  # from the attempt rows
    assert "#1 failed" in html
    assert "Sandbox fault injected for step_4_cost_centers" in html
    assert "&quot;company&quot;: &quot;Partial Co&quot;" in html  # step 1's result
    assert "attempt 1 started" in html  # a log line
    assert 'data-operation="continue"' in html and 'data-operation="retry"' in html
    assert 'data-operation="cancel"' not in html  # no run active
    assert "moran-poll" not in html  # nothing to watch
    assert 'name="_save"' not in html  # step JSON is read-only: no save button


def test_it_polls_while_a_run_is_in_progress(admin_client, eager):
    # given: a run started but not yet sent (no on_commit here), so it stays IN_PROGRESS
    tenant = make_tenant(slug="busy")
    onboarding_start(onboarding=tenant.onboarding)
    # when
    response = admin_client.get(detail_url(tenant.onboarding))
    # then
    html = response.content.decode()
    assert 'id="moran-poll"' in html
    assert 'data-operation="cancel"' in html and 'data-operation="continue"' not in html
    status = admin_client.get(reverse("admin:provisioning_onboarding_status", args=[tenant.onboarding.pk])).json()
    assert status["status"] == "IN_PROGRESS" and status["tenant"] == "busy" and status["version"] >= 1


def test_it_refuses_to_save_the_change_form(admin_client, partial):
    # given
    before = Onboarding.objects.get(pk=partial.pk)
    # when: someone POSTs the change form anyway
    response = admin_client.post(detail_url(partial), {"provisioning_steps": "{}", "status": "COMPLETED"})
    # then
    assert response.status_code == 403
    after = Onboarding.objects.get(pk=partial.pk)
    assert (after.provisioning_steps, after.status, after.version) == (
        before.provisioning_steps,
        before.status,
        before.version,
    )


# --- actions on one tenant -----------------------------------------------------------------------------------------
def test_it_continues_one_tenant_from_its_page(admin_client, partial, on_commit):
    # when
    response = on_commit(admin_client.post, operate_url(partial, "continue"), follow=True)
    # then
    assert response.redirect_chain[-1][0] == detail_url(partial)
    assert messages_of(response) == ["Continue started: partial-co"]
    partial.refresh_from_db()
    assert (partial.status, partial.steps_completed) == (OnboardingStatus.COMPLETED, 10)
    run = ProvisioningRun.objects.filter(onboarding=partial).first()
    assert (run.kind, run.start_index, run.requested_by) == ("continue", 4, "admin:admin")


def test_it_says_nothing_to_continue(admin_client, completed, on_commit):
    response = on_commit(admin_client.post, operate_url(completed, "continue"), follow=True)
    assert messages_of(response) == ["Nothing to continue (every step is completed): done-co"]


def test_it_retries_all_steps(admin_client, completed, on_commit):
    response = on_commit(admin_client.post, operate_url(completed, "retry"), follow=True)
    assert messages_of(response) == ["Retry of all steps started: done-co"]
    completed.refresh_from_db()
    assert completed.status == OnboardingStatus.COMPLETED
    assert all(entry["attempts"] == 2 for entry in completed.provisioning_steps.values())


def test_it_cancels_a_run_and_reports_already_running(admin_client, eager):
    # given: a run in charge
    tenant = make_tenant(slug="busy")
    onboarding_start(onboarding=tenant.onboarding)
    # when: continue while it runs, then cancel, then cancel again
    running = admin_client.post(operate_url(tenant.onboarding, "continue"), follow=True)
    cancelled = admin_client.post(operate_url(tenant.onboarding, "cancel"), follow=True)
    again = admin_client.post(operate_url(tenant.onboarding, "cancel"), follow=True)
    # then
    assert messages_of(running) == ["Already running: busy"]
    assert messages_of(cancelled) == ["Run cancelled: busy"]
    assert messages_of(again) == ["No run is active (nothing to cancel): busy"]
    tenant.onboarding.refresh_from_db()
    assert tenant.onboarding.status == OnboardingStatus.CANCELLED


def test_it_only_accepts_post_for_actions(admin_client, partial):
    response = admin_client.get(operate_url(partial, "continue"))
    assert response.status_code == 405
    assert ProvisioningRun.objects.filter(onboarding=partial).count() == 1


def test_it_does_not_let_a_viewer_operate(viewer, partial):
    # when
    page = viewer.get(detail_url(partial))
    response = viewer.post(operate_url(partial, "continue"), follow=True)
    # then
    assert page.status_code == 200 and 'data-operation="continue"' not in page.content.decode()
    assert messages_of(response) == ["You may not do that."]
    assert ProvisioningRun.objects.filter(onboarding=partial).count() == 1
    listing = viewer.get(LIST_URL)
    assert not set(listing.context["cl"].model_admin.get_actions(listing.wsgi_request)) & {
        "continue_action",
        "retry_action",
        "cancel_action",
    }


# --- bulk actions --------------------------------------------------------------------------------------------------
def test_it_reports_per_tenant_on_a_bulk_continue(admin_client, partial, completed, on_commit, eager):
    # given: one partial, one completed, one with a run in charge
    busy = make_tenant(slug="busy")
    onboarding_start(onboarding=busy.onboarding)
    ids = [partial.pk, completed.pk, busy.onboarding.pk]
    # when
    response = on_commit(
        admin_client.post,
        LIST_URL,
        {"action": "continue_action", "_selected_action": ids, "index": 0},
        follow=True,
    )
    # then
    assert sorted(messages_of(response)) == [
        "Already running: busy",
        "Continue started: partial-co",
        "Nothing to continue (every step is completed): done-co",
    ]
    partial.refresh_from_db()
    assert partial.status == OnboardingStatus.COMPLETED


def test_it_cancels_in_bulk(admin_client, eager):
    tenants = [make_tenant(slug=f"run-{n}") for n in range(3)]
    for tenant in tenants:
        onboarding_start(onboarding=tenant.onboarding)
    response = admin_client.post(
        LIST_URL,
        {"action": "cancel_action", "_selected_action": [t.onboarding.pk for t in tenants], "index": 0},
        follow=True,
    )
    assert messages_of(response) == ["Run cancelled: run-0, run-1, run-2"]
    assert set(Onboarding.objects.values_list("status", flat=True)) == {OnboardingStatus.CANCELLED}


# --- runs and logs -------------------------------------------------------------------------------------------------
def test_it_lists_runs_and_log_lines_read_only(admin_client, partial):
    runs = admin_client.get(reverse("admin:provisioning_provisioningrun_changelist"))
    logs = admin_client.get(reverse("admin:provisioning_steplog_changelist") + f"?onboarding__id__exact={partial.pk}")
    run = ProvisioningRun.objects.get(onboarding=partial)
    run_page = admin_client.get(reverse("admin:provisioning_provisioningrun_change", args=[run.pk]))
    assert runs.status_code == logs.status_code == run_page.status_code == 200
    assert "partial-co" in runs.content.decode()
    assert "Sandbox fault injected" in logs.content.decode()
    assert 'name="_save"' not in run_page.content.decode()
    assert admin_client.get(reverse("admin:provisioning_steplog_add")).status_code == 403
