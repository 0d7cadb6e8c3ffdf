"""The CLI's progress display: a table redrawn in place in a terminal, plain lines when piped or under CI."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from provisioning.management.progress import LiveTable, interactive
from tests.support.console import embedded_env
from tests.support.workers import ROOT

CREATE = "--create --company Acme-Ltd --abbr ACME --currency EUR --country Germany --admin-email admin@acme.test"
# Cursor up, erase line, hide/show cursor: what a redraw in place is made of (and what plain output never holds).
REDRAW = re.compile(r"\x1b\[(\d*A|2K|\?25[lh])")


def run_in_terminal(args: list[str], env: dict) -> str:
    """Run ``manage.py args`` with a pseudo-terminal as its stdout and stderr, 120 columns wide; return all it wrote."""
    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, stdin=secondary, stdout=secondary, stderr=secondary
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the terminal's other end closed, the command is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    assert proc.wait(timeout=300) in (0, 1)
    return b"".join(chunks).decode("utf-8", errors="replace")


@pytest.fixture
def embedded(tmp_path):
    env = embedded_env(tmp_path, TERM="xterm-256color", MORAN_STEP_RETRY_BACKOFF="0.01")
    env.pop("CI", None)  # a person at a terminal, even when the suite runs under CI
    migrated = subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=env)
    assert migrated.returncode == 0
    return env


def test_it_redraws_a_table_in_a_terminal_and_ends_with_the_final_state(embedded):
    # when: a tenant is provisioned (a little engine latency, so the run lasts several redraws) in a terminal
    args = ["provision_tenant", "acme", *CREATE.split(), "--sandbox-latency", "20"]
    output = run_in_terminal(args, embedded)
    # then: the table was drawn more than once, each time moving the cursor back up over the last one
    assert output.count("step_9_finalize") >= 2 and "│" in output, "a table with every step, redrawn"
    assert re.search(r"\x1b\[\d*A", output), "cursor up: redrawn in place, not printed below"
    assert not re.search(r"^\[ 1/10\] step_0_engine_check", output, re.M), "no plain progress lines in a terminal"
    # and the last thing on the screen is the final state line
    last = [line for line in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output).splitlines() if line.strip()][-1]
    assert last.strip() == "acme: COMPLETED 10/10 steps, 100 %"


def test_it_prints_plain_lines_under_ci_even_in_a_terminal(embedded):
    # when: the same in a terminal, but with CI=true
    output = run_in_terminal(["provision_tenant", "acme", *CREATE.split()], {**embedded, "CI": "true"})
    # then: one plain line per transition and no control sequence
    assert not REDRAW.search(output), output
    assert re.search(r"^\[10/10\] step_9_finalize\s+completed attempt 1\r?$", output, re.M), output
    assert output.rstrip().endswith("acme: COMPLETED 10/10 steps, 100 %")


def test_it_is_interactive_only_on_a_terminal_outside_ci(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert interactive(Tty()) and not interactive(io.StringIO())
    monkeypatch.setenv("CI", "true")
    assert not interactive(Tty())


def test_a_piped_table_prints_only_the_lines_it_is_given():
    # given
    out = io.StringIO()
    table = LiveTable(out, columns=("step", "status"), terminal=False)
    # when
    with table:
        table.update("a", ("a", "pending"))  # a row with no line: shown on a terminal only
        table.update("a", ("a", "completed"), line="a completed")
    # then
    assert out.getvalue() == "a completed\n"
