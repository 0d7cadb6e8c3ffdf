"""A GIN index on the sandbox documents' data (PostgreSQL only): the sandbox store pushes a list's string equalities
down as one ``data @> {...}`` containment (an account list by company), which without it scans every document of
the doctype (16,000 accounts at 200 tenants: 11 ms, growing with every tenant). SQLite has no such index, and its
sandbox stays small: nothing is made there, and the migration state is unchanged either way."""

from django.db import migrations

INDEX = "sandbox_doc_data_gin"


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {INDEX} ON provisioning_sandboxdocument USING gin (data jsonb_path_ops)"
        )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    dependencies = [
        ("provisioning", "0006_core_step_attempts"),
    ]

    operations = [migrations.RunPython(create, drop, elidable=False)]
