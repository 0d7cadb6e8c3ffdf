"""`make dev`: web, worker and beat from Procfile.dev on PostgreSQL and Redis in one command; Ctrl-C stops all of it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from tests.support.console import free_port
from tests.support.workers import ROOT, realpath_available, worker_database_url

HONCHO = ROOT / ".venv" / "bin" / "honcho"


def test_the_procfile_is_valid_and_names_web_worker_and_beat():
    result = subprocess.run(
        [str(HONCHO), "--env", "/dev/null", "-f", "Procfile.dev", "check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "Valid procfile detected (web, worker, beat)" in result.stderr + result.stdout


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (read from /proc, so it finds children in sessions of their own too)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, (
            f"{what} not seen in {timeout} s:\n{log.read_text(errors='replace')[-4000:]}"
        )
        time.sleep(0.3)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.realpath
@pytest.mark.django_db(transaction=True)
def test_make_dev_runs_web_worker_and_beat_and_ctrl_c_stops_them_all(django_db_setup, tmp_path):
    if not realpath_available():
        pytest.skip("`make dev` runs on PostgreSQL and a broker")
    # given: `make dev` on the test database and broker, a queue of its own, a free port
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MAKE")},
        "DATABASE_URL": worker_database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "MORAN_PROVISIONING_QUEUE": f"test-dev-{uuid.uuid4().hex[:8]}",
        "MORAN_VAR_DIR": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "dev.log"
    with open(log, "wb") as out:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "dev", f"PORT={port}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal of its own: Ctrl-C goes to its foreground group
        )
    try:
        # when: it is up
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/healthz"), 120, "web answering /healthz", log)
        wait_for(lambda: "ready." in log.read_text(errors="replace"), 120, "the worker's 'ready.'", log)
        wait_for(lambda: "beat: Starting" in log.read_text(errors="replace"), 60, "beat starting", log)
        processes = descendants(make.pid)
        assert len(processes) >= 5, "make, honcho, the web server, the worker (and its pool), beat"

        # and Ctrl-C is pressed
        os.killpg(make.pid, signal.SIGINT)
        make.wait(timeout=60)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()

    # then: every process it started is gone
    wait_for(lambda: not any(running(pid) for pid in processes), 30, "every child gone", log)
    assert not answers(f"http://127.0.0.1:{port}/healthz")
    text = log.read_text(errors="replace")
    assert "web.1" in text and "worker.1" in text and "beat.1" in text, text[-2000:]
