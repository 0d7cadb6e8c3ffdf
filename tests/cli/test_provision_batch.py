"""``manage.py provision_batch`` in the embedded mode (tasks in-process): validation first, re-runs, exit codes and
the plain progress lines. The real worker's path is in ``tests/realpath/test_batches.py``; the terminal's progress
bar in ``tests/cli/test_provision_batch_tty.py``."""

from __future__ import annotations

import uuid

import pytest

from provisioning.models import (
    BatchItem,
    Onboarding,
    OnboardingStatus,
    ProvisioningBatch,
    ProvisioningRun,
    SandboxFault,
)
from tenants.models import Tenant
from tests.support.commands import run
from tests.support.factories import make_tenant

pytestmark = pytest.mark.django_db(transaction=True)

HEADER = "slug,company,abbr,currency,country,admin_email"


def rows_csv(n: int, *, prefix: str = "bt") -> str:
    lines = [HEADER + ",cost_centers,warehouses"]
    lines += [
        f"{prefix}-{i},{prefix.title()} {i} Ltd,{prefix.upper()}{i},EUR,Germany,admin@{prefix}-{i}.test,Operations,Returns"
        for i in range(1, n + 1)
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def csv_file(tmp_path):
    def write(text: str, name: str = "batch.csv"):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    return write


def statuses() -> dict[str, str]:
    return dict(Tenant.objects.values_list("slug", "onboarding__status"))


def test_it_refuses_a_file_with_a_bad_currency_and_a_duplicate_slug_and_creates_nothing(eager, csv_file):
    # given: line 3 has a bad currency, line 4 repeats line 2's slug
    path = csv_file(
        f"{HEADER}\n"
        "dup-1,Dup One Ltd,DUP1,EUR,Germany,a@dup.test\n"
        "bad-cur,Bad Currency Ltd,BADC,XYZ,Germany,b@dup.test\n"
        "dup-1,Dup Again Ltd,DUP3,EUR,Germany,c@dup.test\n"
    )
    # when
    code, out, err = run("provision_batch", path)
    # then
    assert code == 2
    assert "line 3: currency: 'XYZ' is not an ISO 4217 currency code" in err
    assert "line 4: slug: slug 'dup-1' is also on line 2" in err
    assert "line 2" not in err.replace("also on line 2", "")
    assert Tenant.objects.count() == 0
    assert ProvisioningBatch.objects.count() == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "line 1: the file is empty"),
        (f"{HEADER}\n", "line 2: the file has a header but no rows"),
        (f"{HEADER},colour\nx-1,X Ltd,XX,EUR,Germany,a@x.test,red\n", "line 1: unknown column(s) colour"),
        ("slug,company\nx-1,X Ltd\n", "line 1: missing column(s) abbr, currency, country, admin_email"),
        (f"{HEADER}\nx-1,X Ltd,XX,EUR,,a@x.test\n", "line 2: missing country"),
        (f"{HEADER}\nx-1,X Ltd,XX,EUR,Germany,a@x.test,extra\n", "line 2: 7 fields but the header has 6"),
    ],
)
def test_it_names_the_line_of_every_kind_of_bad_input(eager, csv_file, text, expected):
    code, _, err = run("provision_batch", csv_file(text))
    assert code == 2
    assert expected in err
    assert Tenant.objects.count() == 0


def test_it_refuses_an_abbreviation_taken_in_the_database_or_a_slug_reused_with_other_data(eager, csv_file):
    # given: a tenant from an earlier batch
    assert run("provision_batch", csv_file(rows_csv(1)))[0] == 0
    path = csv_file(
        f"{HEADER}\n"
        "other,Other Ltd,BT1,EUR,Germany,a@other.test\n"  # BT1 is bt-1's abbreviation
        "bt-1,Renamed Ltd,BT1,EUR,Germany,admin@bt-1.test\n"  # bt-1 with another company
    )
    # when
    code, _, err = run("provision_batch", path)
    # then
    assert code == 2
    assert "line 2: abbr: abbreviation 'BT1' already belongs to tenant 'bt-1'" in err
    assert "line 3: slug: a tenant 'bt-1' already exists with a different" in err
    assert set(statuses()) == {"bt-1"}


def test_it_provisions_every_row_and_a_second_run_starts_no_new_run(eager, csv_file):
    # given
    path = csv_file(rows_csv(5))
    # when
    code, out, err = run("provision_batch", path, "--concurrency", "2")
    # then
    assert code == 0, out + err
    assert set(statuses().values()) == {OnboardingStatus.COMPLETED}
    assert len(statuses()) == 5
    runs = ProvisioningRun.objects.count()
    assert runs == 5
    # when: the same file again
    code, out, _ = run("provision_batch", path)
    # then: every tenant left alone
    assert code == 0
    assert ProvisioningRun.objects.count() == runs
    latest = ProvisioningBatch.objects.first()
    assert set(latest.items.values_list("action", flat=True)) == {BatchItem.Action.LEAVE}


def pending_tenant_of_row(i: int, prefix: str) -> Tenant:
    """The tenant line ``i + 1`` of ``rows_csv`` describes, made (PENDING) before the batch runs."""
    return make_tenant(
        slug=f"{prefix}-{i}",
        company_name=f"{prefix.title()} {i} Ltd",
        abbr=f"{prefix.upper()}{i}",
        currency="EUR",
        country="Germany",
        admin_email=f"admin@{prefix}-{i}.test",
        extra_cost_centers=["Operations"],
        extra_warehouses=["Returns"],
    )


def test_it_exits_1_with_a_table_of_what_did_not_complete_and_a_rerun_continues_only_that(eager, csv_file):
    # given: the second row's tenant exists already, and its cost centers will fail once
    path = csv_file(rows_csv(3, prefix="pf"))
    tenant = pending_tenant_of_row(2, "pf")
    SandboxFault.objects.create(tenant=tenant, step="step_4_cost_centers", kind=SandboxFault.Kind.PERMANENT)
    # when
    code, out, _ = run("provision_batch", path)
    # then: exit 1, and the table names pf-2 only, with its step and error
    assert code == 1, out
    table = out[out.index("slug ") :]
    assert "pf-2" in table and "PARTIAL" in table and "step_4_cost_centers" in table and "ValidationError" in table
    assert "pf-1" not in table and "pf-3" not in table
    assert statuses() == {"pf-1": "COMPLETED", "pf-2": "PARTIAL", "pf-3": "COMPLETED"}
    runs = dict(Tenant.objects.values_list("slug", "onboarding__runs__id"))
    # when: the same file again
    code, out, _ = run("provision_batch", path)
    # then: pf-2 continued (the fault was used up), the others left alone
    assert code == 0, out
    actions = dict(ProvisioningBatch.objects.first().items.values_list("tenant__slug", "action"))
    assert actions == {"pf-1": "leave", "pf-2": "continue", "pf-3": "leave"}
    assert set(statuses().values()) == {OnboardingStatus.COMPLETED}
    assert ProvisioningRun.objects.filter(onboarding__tenant__slug="pf-2").count() == 2
    for slug in ("pf-1", "pf-3"):
        assert list(ProvisioningRun.objects.filter(onboarding__tenant__slug=slug).values_list("id", flat=True)) == [
            runs[slug]
        ]


def test_plan_says_what_it_would_do_and_writes_nothing(eager, csv_file):
    # given: one tenant of the file is COMPLETED already
    path = csv_file(rows_csv(2, prefix="pn"))
    assert run("provision_batch", csv_file(rows_csv(1, prefix="pn"), "first.csv"))[0] == 0
    batches, runs = ProvisioningBatch.objects.count(), ProvisioningRun.objects.count()
    # when
    code, out, _ = run("provision_batch", path, "--plan")
    # then
    assert code == 0
    assert "pn-1                           leave     (COMPLETED)" in out
    assert "pn-2                           create    (new)" in out
    assert "plan only: nothing was written" in out
    assert (ProvisioningBatch.objects.count(), ProvisioningRun.objects.count()) == (batches, runs)
    assert set(statuses()) == {"pn-1"}


def test_a_tenant_in_progress_is_waited_for_and_not_started_again(eager, csv_file):
    # given: the first row's tenant has a run active elsewhere (an operator's, another batch's)
    path = csv_file(rows_csv(2, prefix="wt"))
    tenant = pending_tenant_of_row(1, "wt")
    Onboarding.objects.filter(tenant=tenant).update(status=OnboardingStatus.IN_PROGRESS, run_id=uuid.uuid4())
    # when
    code, out, _ = run("provision_batch", path, "--plan")
    # then
    assert "wt-1                           wait      (IN_PROGRESS)" in out
    # when
    code, out, _ = run("provision_batch", path, "--no-wait")
    # then: the other one ran; wt-1 got no run from the batch, which waits for it
    assert code == 0
    assert statuses() == {"wt-1": "IN_PROGRESS", "wt-2": "COMPLETED"}
    assert not ProvisioningRun.objects.filter(onboarding__tenant=tenant).exists()
    batch = ProvisioningBatch.objects.get()
    assert dict(batch.items.values_list("tenant__slug", "action")) == {"wt-1": "wait", "wt-2": "create"}
    assert batch.finished_at is None


def test_it_prints_plain_progress_lines_when_not_in_a_terminal(eager, csv_file):
    code, out, _ = run("provision_batch", csv_file(rows_csv(3, prefix="pl")), "--concurrency", "1")
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert lines[-1].startswith("[3/3] 100 % COMPLETED 3")
    assert "\x1b[" not in out  # no terminal escapes in a pipe
