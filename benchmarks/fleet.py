"""Provision N tenants at once into a Frappe-compatible engine with the recorded latencies and the concurrent company
race, through two real workers, with engine capacity and without; print the figures (lines starting ``FLEET``).

    DATABASE_URL=postgres://… CELERY_BROKER_URL=redis://… .venv/bin/python benchmarks/fleet.py 50 [SCALE]

SCALE (default 1: the recorded latencies, a company create 2.5 s alone) shrinks every latency for a quick rehearsal.
The scenario is ``tests/fleet/bench_fleet.py``.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tenants", nargs="?", type=int, default=50, help="tenants started at once (default 50)")
    parser.add_argument("scale", nargs="?", type=float, default=1.0, help="latency scale (default 1: as recorded)")
    args = parser.parse_args()
    if args.tenants < 1 or not 0 < args.scale <= 1:
        parser.error("tenants must be at least 1, and scale in (0, 1]")
    tenants, scale = str(args.tenants), str(args.scale)
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:logging", "-p", "no:cacheprovider"]
    command += ["-o", "timeout=3600", "tests/fleet/bench_fleet.py"]
    env = {**os.environ, "MORAN_FLEET_TENANTS": tenants, "MORAN_FLEET_SCALE": scale}
    sys.exit(subprocess.call(command, cwd=ROOT, env=env))
