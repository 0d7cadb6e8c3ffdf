"""Run the soak (tests/faults/test_soak.py) with a number of tenants and print its figures.

    DATABASE_URL=postgres://… CELERY_BROKER_URL=redis://… .venv/bin/python benchmarks/soak.py 200
    DATABASE_URL=postgres://… CELERY_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/<vhost> … benchmarks/soak.py 200

The figures are on the line starting ``SOAK`` (also appended to ``artifacts/soak.txt``), among them the longest time
any step stood running without a live worker. Needs PostgreSQL and a broker URL: with Redis the soak starts a Redis
of its own for the workers (``redis-server`` on the PATH); with RabbitMQ it uses the one given, on queues of its own.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tenants", nargs="?", type=int, default=200, help="tenants provisioned (default 200)")
    args = parser.parse_args()
    if args.tenants < 1:
        parser.error("tenants must be at least 1")
    tenants = str(args.tenants)
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
