"""Production configuration checks: a broken production config fails loudly (ids are stable)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_check(**env_overrides):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "MORAN_ENV", "MORAN_SECRET_KEYS"}
    }
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_production_without_secret_key_database_or_broker_fails_the_checks():
    result = run_check(MORAN_ENV="production")
    assert result.returncode != 0
    for check_id in ("moran.E001", "moran.E002", "moran.E003"):
        assert check_id in result.stderr
    assert "SECRET_KEY is not set" in result.stderr


def test_a_complete_production_configuration_passes():
    result = run_check(
        MORAN_ENV="production",
        SECRET_KEY="x" * 50,
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/moran",
        CELERY_BROKER_URL="redis://127.0.0.1:6379/0",
        MORAN_SECRET_KEYS="kzN6dZ0bF5aGSmR8Cw9mYJ2o3Yk3bJ7O2y0m2Yw7Jb8=",
    )
    assert result.returncode == 0, result.stderr


def test_the_embedded_default_needs_no_configuration():
    assert run_check().returncode == 0
