"""Real worker processes and the helpers the real-path tests share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]


def realpath_available() -> bool:
    return settings.DATABASES["default"]["ENGINE"].endswith("postgresql") and bool(settings.CELERY_BROKER_URL)


def worker_database_url() -> str:
    db = settings.DATABASES["default"]
    user = db.get("USER") or "postgres"
    auth = f"{user}:{db['PASSWORD']}@" if db.get("PASSWORD") else f"{user}@"
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


class WorkerProcess:
    """A real Celery worker process; ``restart()`` and ``kill()`` serve the fault tests."""

    def __init__(
        self,
        queue: str,
        *,
        concurrency: int = 2,
        env: dict | None = None,
        log_path: Path | None = None,
        prefix: list[str] | None = None,
    ):
        self.queue = queue
        self.prefix = prefix or []  # e.g. `ip netns exec <ns>`: the worker runs inside a network namespace
        self.concurrency = concurrency
        self.extra_env = env or {}
        self.log_path = log_path or ROOT / "var" / "test-logs" / f"worker-{queue}.log"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict:
        env = {
            **os.environ,
            "DATABASE_URL": worker_database_url(),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "MORAN_PROVISIONING_QUEUE": self.queue,
            "PYTHONUNBUFFERED": "1",
            "MORAN_STEP_RETRY_BACKOFF": os.environ.get("MORAN_STEP_RETRY_BACKOFF", "0.2"),
            "MORAN_STEP_RETRY_BACKOFF_MAX": os.environ.get("MORAN_STEP_RETRY_BACKOFF_MAX", "1"),
        }
        env.update(self.extra_env)
        return env

    def start(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                *self.prefix,
                sys.executable,
                "-m",
                "celery",
                "-A",
                "celery_app",
                "worker",
                "-Q",
                self.queue,
                "-c",
                str(self.concurrency),
                "--pool",
                "prefork",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "-n",
                f"{self.queue}@%h",
            ],
            cwd=ROOT,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; see {self.log_path}")
            if b"ready." in self.log_path.read_bytes()[-20000:]:
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout} s; see {self.log_path}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def terminate(self):
        """SIGTERM to the main process only, as a container stop or a deploy sends it (a warm shutdown)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self):
        """SIGKILL the whole worker (main process and pool children)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def wait_for_status(onboarding, statuses, timeout: float = 60):
    """Poll the onboarding row until its status is one of ``statuses``; return it."""
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        onboarding.refresh_from_db()
        if onboarding.status in statuses:
            return onboarding
        time.sleep(0.1)
    raise AssertionError(
        f"onboarding stayed {onboarding.status} (wanted {statuses}) for {timeout} s: {onboarding.provisioning_steps}"
    )


class BeatProcess:
    """A real ``celery beat`` process with the production schedule (the sweeper every ``MORAN_SWEEP_INTERVAL``
    seconds), sending to the test's queue."""

    def __init__(self, queue: str, *, env: dict | None = None, log_path: Path | None = None):
        self.queue = queue
        self.worker = WorkerProcess(queue, env=env)
        self.log_path = log_path or ROOT / "var" / "test-logs" / f"beat-{queue}.log"
        self.proc: subprocess.Popen | None = None
        self.dir: str | None = None

    def start(self):
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="moran-beat-")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_app", "beat", "--loglevel", "INFO"]
            + ["--schedule", f"{self.dir}/schedule"],
            cwd=ROOT,
            env=self.worker.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def kill(self):
        import shutil

        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
