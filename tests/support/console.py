"""The admin console started the README's way (`make console`) on the embedded default, in a subprocess.

No DATABASE_URL, no broker, no DEBUG, no MORAN_ENV: exactly what a fresh clone has. The SQLite file lives in a
folder of the test's own (MORAN_VAR_DIR) and the server listens on a free loopback port (never 4000 in tests).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.workers import ROOT

UNSET = {"DATABASE_URL", "CELERY_BROKER_URL", "DEBUG", "MORAN_ENV", "DJANGO_SETTINGS_MODULE", "MORAN_ADMIN_PASSWORD"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def embedded_env(var_dir: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in UNSET and not k.startswith("MAKE")}
    env.update({"MORAN_VAR_DIR": str(var_dir), "PYTHONUNBUFFERED": "1", **extra})
    return env


@dataclass
class Console:
    url: str
    proc: subprocess.Popen
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def password(self) -> str:
        match = re.search(r"operator admin: password (\S+) \(shown once\)", self.output)
        assert match, self.output
        return match[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_console(var_dir: Path, *, timeout: float = 120) -> Console:
    """`make console PORT=…`, waited for until the server answers."""
    port = free_port()
    log = var_dir / "console.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "console", f"PORT={port}"],
            cwd=ROOT,
            env=embedded_env(var_dir),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    console = Console(url=f"http://127.0.0.1:{port}", proc=proc, log=log)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{console.url}/healthz", timeout=5):
                return console
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                console.stop()
                raise AssertionError(f"`make console` did not answer on {console.url}:\n{console.output}") from None
            time.sleep(0.3)
