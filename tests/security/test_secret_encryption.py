"""Engine secrets at rest: encrypted with the first of MORAN_SECRET_KEYS, readable with any of them, rotated by a
command, refused by a system check in production without a key; the ciphertext is shown nowhere."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection as db

from moran.encryption import SecretUnreadable
from tenants.models import EngineConnection
from tests.support.workers import ROOT

pytestmark = pytest.mark.django_db

SECRET = "plain-secret-9f8e7d"


def stored_column(pk) -> str:
    with db.cursor() as cursor:
        cursor.execute("SELECT api_secret_encrypted FROM tenants_engineconnection WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def make_engine(**fields):
    return EngineConnection.objects.create(
        name=fields.pop("name", "erp"), kind="erpnext", base_url="http://127.0.0.1:9", api_key="k", **fields
    )


def test_it_stores_the_secret_encrypted_and_reads_it_back(settings):
    # when
    engine = make_engine(api_secret=SECRET)
    # then: the row holds a Fernet token of the first key, not the secret
    raw = stored_column(engine.pk)
    assert SECRET not in raw
    assert Fernet(settings.MORAN_SECRET_KEYS[0]).decrypt(raw.encode()).decode() == SECRET
    assert EngineConnection.objects.get(pk=engine.pk).api_secret == SECRET
    # and the ciphertext is in no string form of the row
    assert raw not in repr(engine) and raw not in str(engine)


def test_it_rotates_keys_with_the_command(settings, capsys):
    # given: a secret under the old key
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.MORAN_SECRET_KEYS = [old]
    engine = make_engine(api_secret=SECRET)
    make_engine(name="no-secret")
    # when: the new key is put first and the command runs
    settings.MORAN_SECRET_KEYS = [new, old]
    call_command("rotate_engine_secrets")
    # then: the row opens with the new key alone
    assert "1 engine secret(s) re-encrypted" in capsys.readouterr().out
    settings.MORAN_SECRET_KEYS = [new]
    assert Fernet(new).decrypt(stored_column(engine.pk).encode()).decode() == SECRET
    assert EngineConnection.objects.get(pk=engine.pk).api_secret == SECRET


def test_a_secret_under_a_dropped_key_is_refused_with_a_message_and_rotation_changes_nothing(settings):
    # given
    old = Fernet.generate_key().decode()
    settings.MORAN_SECRET_KEYS = [old]
    engine = make_engine(api_secret=SECRET)
    before = stored_column(engine.pk)
    # when: the old key was dropped before rotating
    settings.MORAN_SECRET_KEYS = [Fernet.generate_key().decode()]
    # then
    with pytest.raises(SecretUnreadable) as info:
        EngineConnection.objects.get(pk=engine.pk).api_secret  # noqa: B018
    assert before not in info.value.message and "MORAN_SECRET_KEYS" in info.value.message
    with pytest.raises(SystemExit) as exit_info:
        call_command("rotate_engine_secrets")
    assert exit_info.value.code == 2
    assert stored_column(engine.pk) == before


def test_the_admin_page_shows_neither_the_secret_nor_its_ciphertext(admin_client):
    engine = make_engine(api_secret=SECRET)
    raw = stored_column(engine.pk)
    for url in ("/admin/tenants/engineconnection/", f"/admin/tenants/engineconnection/{engine.pk}/change/"):
        page = admin_client.get(url).content.decode()
        assert SECRET not in page and raw not in page and raw[:20] not in page


def run_check(**env_overrides):
    drop = {"SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "MORAN_ENV", "MORAN_SECRET_KEYS"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


PRODUCTION = {
    "MORAN_ENV": "production",
    "SECRET_KEY": "x" * 50,
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/moran",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
}


def test_production_without_a_secret_key_fails_the_check():
    result = run_check(**PRODUCTION)
    assert result.returncode != 0
    assert "moran.E010" in result.stderr


def test_a_key_that_is_not_a_fernet_key_fails_the_check():
    result = run_check(MORAN_SECRET_KEYS="not-a-key")
    assert result.returncode != 0
    assert "moran.E011" in result.stderr
    assert "not-a-key" not in result.stderr


def test_production_with_keys_passes_and_development_needs_none():
    assert run_check(**PRODUCTION, MORAN_SECRET_KEYS=Fernet.generate_key().decode()).returncode == 0
    assert run_check().returncode == 0


@pytest.mark.django_db(transaction=True)
def test_the_migration_encrypts_the_secrets_already_stored():
    from django.db.migrations.executor import MigrationExecutor

    # given: the schema before encryption, with a plain secret in it
    before = [("tenants", "0002_tenant_webhook_url")]
    executor = MigrationExecutor(db)
    executor.migrate(before)
    Legacy = executor.loader.project_state(before).apps.get_model("tenants", "EngineConnection")
    Legacy.objects.create(name="legacy", kind="erpnext", base_url="http://127.0.0.1:9", api_key="k", api_secret=SECRET)
    # when
    executor = MigrationExecutor(db)
    executor.migrate(executor.loader.graph.leaf_nodes())
    # then
    engine = EngineConnection.objects.get(name="legacy")
    assert SECRET not in stored_column(engine.pk)
    assert engine.api_secret == SECRET


def test_test_connection_says_so_when_the_secret_does_not_open(admin_client, settings):
    # given: a secret under a key that is no longer configured
    settings.MORAN_SECRET_KEYS = [Fernet.generate_key().decode()]
    engine = make_engine(api_secret=SECRET)
    settings.MORAN_SECRET_KEYS = [Fernet.generate_key().decode()]
    # when
    response = admin_client.post(f"/admin/tenants/engineconnection/{engine.pk}/test/", follow=True)
    # then: a message, not a 500
    assert response.status_code == 200
    assert "cannot be decrypted with the configured MORAN_SECRET_KEYS" in response.content.decode()
