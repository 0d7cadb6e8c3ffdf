"""The operators' scripts against a live server on port 4000 (``manage.py runserver``, the dev server the scripts
expect), on the test database, with the session's real worker."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests
from django.conf import global_settings, settings

from provisioning.models import OnboardingStatus, SandboxFault
from provisioning.services import onboarding_start
from tests.support.api_cast import make_user
from tests.support.workers import ROOT, wait_for_status
from tests.support.workers import worker_database_url as database_url

pytestmark = [pytest.mark.realpath, pytest.mark.django_db(transaction=True)]

PORT = 4000
SECRET = "operator-password-4000"


def port_free() -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", PORT)) != 0


@pytest.fixture
def server_on_port_4000(worker, worker_queue, tmp_path):
    # Port 4000 is the operators' dev port: wait a while if someone else's server holds it.
    deadline = time.monotonic() + 120
    while not port_free():
        assert time.monotonic() < deadline, "port 4000 stayed busy"
        time.sleep(1)
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "MORAN_PROVISIONING_QUEUE": worker_queue,
        "LOG_LEVEL": "WARNING",
        # The scripts log in once per run; reruns of the suite within a minute must not be throttled.
        "MORAN_LOGIN_RATE_PER_ADDRESS": "1000/min",
        "MORAN_LOGIN_RATE_PER_EMAIL": "1000/min",
    }
    log = open(tmp_path / "runserver.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{PORT}", "--noreload"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "runserver.log").read_text()
            try:
                if requests.get(f"http://127.0.0.1:{PORT}/api/schema/", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "runserver did not answer"
            time.sleep(0.3)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


@pytest.fixture
def script_operator(settings):
    # The server checks passwords with the production hashers, so this user is made with them too.
    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS
    return make_user("ops", email="ops@moran.test", is_staff=True, password=SECRET)


def run_script(name, *args, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MORAN_")}
    environment.update(env)
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / name), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def login_and_continue(tenant) -> str:
    """Log in as the script operator and press continue on ``tenant`` over HTTP; returns the token."""
    ops = requests.post(
        "http://127.0.0.1:4000/api/auth/login", json={"email": "ops@moran.test", "password": SECRET}, timeout=10
    ).json()["access_token"]
    continued = requests.post(
        f"http://127.0.0.1:4000/api/provisioning/tenants/{tenant.id}/continue",
        headers={"Authorization": f"Bearer {ops}"},
        timeout=30,
    )
    assert continued.status_code == 202
    return ops


def test_it_shows_a_partial_tenant_then_follows_continue_to_completed(
    server_on_port_4000, script_operator, acme, globex
):
    # given: acme fails at step 4 (PARTIAL); globex was never started (PENDING)
    SandboxFault.objects.create(tenant=acme, step="step_4_cost_centers", kind=SandboxFault.Kind.PERMANENT)
    onboarding_start(onboarding=acme.onboarding)
    wait_for_status(acme.onboarding, OnboardingStatus.PARTIAL)

    # when: the status check, against the default http://localhost:4000
    check = run_script("check_provisioning_status.sh", "ops@moran.test", SECRET, "acme")
    # then
    assert check.returncode == 1, check.stderr
    out = check.stdout
    assert f"Tenant:          acme ({acme.id})" in out
    assert "Status:          PARTIAL" in out
    assert "Steps completed: 4/10" in out
    assert "Progress:        40 %" in out
    assert "Current step:    step_4_cost_centers" in out
    assert "  - step_4_cost_centers: " in out
    assert "  [ 5/10] step_4_cost_centers        failed    attempts 1" in out
    assert "  [ 7/10] step_6_master_data         pending   attempts 0 (optional)" in out
    assert "Last log lines:" in out and "ERROR step_4_cost_centers: failed" in out, out
    assert "http://localhost:4000/api/provisioning/tenants/acme/continue" in out
    assert SECRET not in out + check.stderr

    # when: continue on a slow engine, watched by the monitor until it settles
    SandboxFault.objects.create(tenant=acme, kind=SandboxFault.Kind.LATENCY, latency_ms=250)
    ops = login_and_continue(acme)
    monitor = run_script("monitor_provisioning.sh", "acme", MORAN_TOKEN=ops, MORAN_INTERVAL="0.5")
    # then: it saw the run and stopped once it was COMPLETED
    assert monitor.returncode == 0, monitor.stdout + monitor.stderr
    lines = monitor.stdout.splitlines()
    assert lines[0] == "Watching acme on http://localhost:4000 (every 0.5 s, Ctrl-C to stop)"
    assert "IN_PROGRESS" in lines[1]  # the run was still going when the monitor first looked
    assert any(" acme " in line and " IN_PROGRESS " in line for line in lines)
    assert " COMPLETED " in lines[-2] and "10/10" in lines[-2] and "100 %" in lines[-2]
    assert lines[-1] == "Settled: 1 tenant(s), 0 needing attention (PARTIAL, FAILED or CANCELLED)."

    # when: every tenant, logging in, with MORAN_URL
    every = run_script(
        "monitor_provisioning.sh",
        MORAN_EMAIL="ops@moran.test",
        MORAN_PASSWORD=SECRET,
        MORAN_URL="http://127.0.0.1:4000",
    )
    # then
    assert every.returncode == 0, every.stderr
    assert [line.split()[1:3] for line in every.stdout.splitlines()[1:-1]] == [
        ["acme", "COMPLETED"],
        ["globex", "PENDING"],
    ]
    assert every.stdout.splitlines()[-1] == "Settled: 2 tenant(s), 0 needing attention (PARTIAL, FAILED or CANCELLED)."

    # and the status check agrees
    done = run_script("check_provisioning_status.sh", "ops@moran.test", SECRET, str(acme.id))
    assert done.returncode == 0
    assert "Status:          COMPLETED" in done.stdout and "  nothing: every step is done." in done.stdout


def test_it_shows_a_tenant_that_never_started(server_on_port_4000, script_operator, acme):
    check = run_script("check_provisioning_status.sh", "ops@moran.test", SECRET, "acme")
    assert check.returncode == 0, check.stderr
    assert "Status:          PENDING" in check.stdout
    assert "Last log lines:\nWhat to do:\n  provisioning has not started" in check.stdout


def test_it_says_what_went_wrong(server_on_port_4000, script_operator, acme):
    # a wrong password
    wrong = run_script("check_provisioning_status.sh", "ops@moran.test", "not-it", "acme")
    assert (wrong.returncode, wrong.stderr.strip()) == (2, "error: Invalid email or password")
    assert "not-it" not in wrong.stdout + wrong.stderr
    # an unknown tenant
    unknown = run_script("check_provisioning_status.sh", "ops@moran.test", SECRET, "nobody")
    assert (unknown.returncode, unknown.stderr.strip()) == (2, "error: Unknown tenant 'nobody'")
    missing = run_script("monitor_provisioning.sh", "nobody", MORAN_EMAIL="ops@moran.test", MORAN_PASSWORD=SECRET)
    assert (missing.returncode, missing.stderr.strip()) == (2, "error: Unknown tenant 'nobody'")
    # no server there
    away = run_script("check_provisioning_status.sh", "a@b.test", "x", "acme", MORAN_URL="http://127.0.0.1:9")
    assert away.returncode == 2 and "cannot reach http://127.0.0.1:9" in away.stderr
    # usage
    assert run_script("check_provisioning_status.sh", "only-one-argument").returncode == 2
    assert run_script("monitor_provisioning.sh").returncode == 2  # no credentials
