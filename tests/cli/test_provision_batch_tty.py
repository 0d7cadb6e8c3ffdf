"""``provision_batch`` in a real pseudo-terminal shows a live progress bar (rich); with CI=true, or in a pipe, plain
lines. A subprocess on the embedded default (SQLite in a temporary directory, tasks in-process)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import pytest

from tests.support.workers import ROOT

ROWS = (
    "slug,company,abbr,currency,country,admin_email\n"
    "tty-1,Tty One Ltd,TTY1,EUR,Germany,a@tty.test\n"
    "tty-2,Tty Two Ltd,TTY2,EUR,Germany,b@tty.test\n"
    "tty-3,Tty Three Ltd,TTY3,EUR,Germany,c@tty.test\n"
)


@pytest.fixture
def embedded(tmp_path):
    env = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update({"MORAN_VAR_DIR": str(tmp_path), "TERM": "xterm-256color", "COLUMNS": "140"})
    env.pop("CI", None)
    migrated = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert migrated.returncode == 0, migrated.stderr
    path = tmp_path / "tty.csv"
    path.write_text(ROWS)
    return env, str(path)


def run_in_pty(args: list[str], env: dict) -> tuple[int, str]:
    """Run a command with a pseudo-terminal as its stdin, stdout and stderr; return its exit code and output."""
    parent, child = pty.openpty()
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdin=child, stdout=child, stderr=child, close_fds=True)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(parent, 4096)
        except OSError:  # EIO: the child side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(parent)
    return proc.wait(timeout=300), b"".join(chunks).decode("utf-8", "replace")


def test_it_shows_a_progress_bar_in_a_terminal(embedded):
    env, path = embedded
    # when
    code, out = run_in_pty([sys.executable, "manage.py", "provision_batch", path, "--concurrency", "1"], env)
    # then: rich's bar (its bar glyphs and terminal escapes), done/total, counts per status and the ETA column
    assert code == 0, out
    assert "\x1b[" in out
    assert "━" in out
    assert "3/3" in out
    assert "COMPLETED 3" in out
    assert "ETA" in out
    assert "[3/3] 100 %" not in out  # not the plain lines


def test_it_prints_plain_lines_under_ci_even_in_a_terminal(embedded):
    env, path = embedded
    code, out = run_in_pty([sys.executable, "manage.py", "provision_batch", path], {**env, "CI": "true"})
    assert code == 0, out
    assert "[3/3] 100 % COMPLETED 3" in out
    assert "━" not in out
