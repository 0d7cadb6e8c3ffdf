"""The operators' terminal tool on the embedded default: a subprocess with no DATABASE_URL and no broker, on a fresh
SQLite file, exactly as a newcomer runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CREATE = [
    "--create",
    "--company",
    "Acme Ltd",
    "--abbr",
    "ACME",
    "--currency",
    "EUR",
    "--country",
    "Germany",
    "--admin-email",
    "admin@acme.test",
    "--cost-center",
    "Operations",
    "--warehouse",
    "Returns",
]


@pytest.fixture(scope="module")
def manage(tmp_path_factory):
    var = tmp_path_factory.mktemp("embedded")
    env = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update({"MORAN_VAR_DIR": str(var), "MORAN_STEP_RETRY_BACKOFF": "0.01"})

    def run(*args):
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )

    migrated = run("migrate", "--verbosity", "0")
    assert migrated.returncode == 0, migrated.stderr
    assert (var / "moran.sqlite3").exists()  # the embedded default really is SQLite in MORAN_VAR_DIR
    return run


def status_json(manage, slug):
    result = manage("provisioning_status", slug, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_it_provisions_a_demo_tenant_to_completed_with_progress(manage):
    result = manage("provision_tenant", "acme", *CREATE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "COMPLETED 10/10 steps, 100 %" in result.stdout
    progress = [line.split("]", 1)[1].split() for line in result.stdout.splitlines() if line.startswith("[")]
    assert [words[0] for words in progress if words[1] == "completed"] == [
        "step_0_engine_check",
        "step_1_company",
        "step_2_fiscal_year",
        "step_3_chart_of_accounts",
        "step_4_cost_centers",
        "step_5_warehouses",
        "step_6_master_data",
        "step_7_admin_user",
        "step_8_user_permissions",
        "step_9_finalize",
    ]
    status = status_json(manage, "acme")
    assert (status["status"], status["steps_completed"], status["progress"], status["errors"]) == (
        "COMPLETED",
        10,
        100,
        [],
    )


def test_a_failing_step_ends_partial_then_continue_completes_without_rerunning(manage):
    failed = manage(
        "provision_tenant",
        "beta",
        *[a.replace("Acme", "Beta").replace("ACME", "BETA").replace("acme", "beta") for a in CREATE],
        "--fail-step",
        "step_4_cost_centers",
    )
    assert failed.returncode == 1
    assert "PARTIAL 4/10 steps, 40 %, current step step_4_cost_centers" in failed.stdout
    assert "error in step_4_cost_centers: ValidationError" in failed.stdout
    before = {s["name"]: s["attempts"] for s in status_json(manage, "beta")["steps"]}

    resumed = manage("provision_tenant", "beta", "--continue")

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "COMPLETED 10/10 steps, 100 %" in resumed.stdout
    after = {s["name"]: s["attempts"] for s in status_json(manage, "beta")["steps"]}
    assert [after[f] for f in list(after)[:4]] == [before[f] for f in list(before)[:4]] == [1, 1, 1, 1]
    assert after["step_4_cost_centers"] == 2
    assert "step_0_engine_check" not in resumed.stdout  # nothing before step 4 ran again


def test_retry_on_a_completed_tenant_runs_all_ten_steps_again(manage):
    result = manage("provision_tenant", "acme", "--retry")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {s["attempts"] for s in status_json(manage, "acme")["steps"]} == {2}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["provision_tenant", "nobody", "--continue"], "Unknown tenant 'nobody'"),
        (
            ["provision_tenant", "new1", "--create", "--company", "X"],
            "--create needs --abbr, --currency, --country, --admin-email",
        ),
        (
            [
                "provision_tenant",
                "new2",
                "--create",
                "--company",
                "X Ltd",
                "--abbr",
                "x",
                "--currency",
                "EURO",
                "--country",
                "DE",
                "--admin-email",
                "nope",
            ],
            "abbr: Use 2-10 uppercase letters or digits.",
        ),
        (
            [
                "provision_tenant",
                "new3",
                "--create",
                "--company",
                "X Ltd",
                "--abbr",
                "XL",
                "--currency",
                "ABC",
                "--country",
                "DE",
                "--admin-email",
                "a@x.test",
            ],
            "'ABC' is not an ISO 4217 currency code",
        ),
        (
            [
                "provision_tenant",
                "new4",
                "--create",
                "--company",
                "Y Ltd",
                "--abbr",
                "YL",
                "--currency",
                "EUR",
                "--country",
                "DE",
                "--admin-email",
                "a@y.test",
                "--fail-step",
                "step_42",
            ],
            "unknown step 'step_42'",
        ),
        (
            [
                "provision_tenant",
                "new5",
                "--create",
                "--company",
                "Acme Ltd",
                "--abbr",
                "ACME",
                "--currency",
                "EUR",
                "--country",
                "DE",
                "--admin-email",
                "a@y.test",
            ],
            "already belongs to a tenant of this engine",
        ),
        (["provisioning_status", "nobody"], "Unknown tenant 'nobody'"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(manage, args, message):
    result = manage(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_nothing_to_continue_on_a_completed_tenant_is_refused(manage):
    result = manage("provision_tenant", "acme", "--continue")
    assert result.returncode == 2
    assert "nothing to continue" in result.stderr
