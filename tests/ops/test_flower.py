"""Flower, as `celery -A celery_app flower` runs it, sees the ten step tasks of a run with the tenant in them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode

import pytest
from django.conf import settings

from provisioning.models import OnboardingStatus
from provisioning.services import onboarding_start
from provisioning.steps import STEP_NAMES
from tests.support import workers
from tests.support.factories import make_tenant
from tests.support.workers import ROOT, wait_for_status

pytestmark = [pytest.mark.realpath, pytest.mark.django_db(transaction=True)]

AUTH = "flower-test:not-a-real-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FlowerProcess:
    def __init__(self, port: int):
        self.port = port
        self.log_path = ROOT / "var" / "test-logs" / f"flower-{port}.log"
        self.proc = None

    def start(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "DATABASE_URL": workers.worker_database_url(),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "FLOWER_BASIC_AUTH": AUTH,
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "celery_app",
                "flower",
                "--address=127.0.0.1",
                f"--port={self.port}",
            ],
            cwd=ROOT,
            env=env,
            stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flower exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if self.get("/healthcheck", auth=False) == b"OK":
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"flower not up after 60 s; see {self.log_path}")

    def get(self, path: str, *, auth: bool = True) -> bytes:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if auth:
            request.add_header("Authorization", "Basic " + b64encode(AUTH.encode()).decode())
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def api(self, path: str):
        return json.loads(self.get(path))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def flower(worker):
    proc = FlowerProcess(free_port()).start()
    # Flower builds its task list from the events it receives; wait until it hears the worker before provisioning.
    deadline = time.monotonic() + 30
    while worker.queue not in json.dumps(proc.api("/api/workers?refresh=1")):
        assert time.monotonic() < deadline, "flower never saw the worker"
        time.sleep(0.5)
    yield proc
    proc.stop()


def test_it_shows_the_ten_step_tasks_of_a_run_with_the_tenant(flower, worker):
    # given
    tenant = make_tenant()
    # when
    run = onboarding_start(onboarding=tenant.onboarding)
    wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED)
    # then: Flower's HTTP API lists the ten steps, each with the tenant's slug and the run id in its arguments
    deadline = time.monotonic() + 30
    while True:
        tasks = flower.api("/api/tasks?limit=1000")
        ours = {
            t["name"]: t
            for t in tasks.values()
            if (t.get("name") or "").startswith("provisioning.step_")
            and f"'tenant': '{tenant.slug}'" in (t.get("kwargs") or "")
            and str(run.id) in (t.get("args") or "")
        }
        if len(ours) == len(STEP_NAMES) and all(t["state"] == "SUCCESS" for t in ours.values()):
            break
        assert time.monotonic() < deadline, f"flower shows {sorted(ours)} of the run's steps"
        time.sleep(0.5)
    assert sorted(ours) == sorted(f"provisioning.{name}" for name in STEP_NAMES)
    # ... run by the session's worker (its node name is the queue's)
    assert all(t["worker"].startswith(f"{worker.queue}@") for t in ours.values())


def test_its_api_needs_the_password(flower):
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        flower.get("/api/tasks", auth=False)
    assert excinfo.value.code == 401
