"""Run the soak (tests/faults/test_soak.py) with a number of tenants and print its figures.

    DATABASE_URL=postgres://… CELERY_BROKER_URL=redis://… .venv/bin/python benchmarks/soak.py 100

The figures are on the line starting ``SOAK``. Needs PostgreSQL, a broker URL (the soak starts its own Redis for the
workers) and ``redis-server`` on the PATH.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    tenants = sys.argv[1] if len(sys.argv) > 1 else "200"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-s",
        "-p",
        "no:logging",
        "-m",
        "soak",
        "tests/faults/test_soak.py",
    ]
    sys.exit(subprocess.call(command, cwd=ROOT, env={**os.environ, "MORAN_SOAK_TENANTS": tenants}))
