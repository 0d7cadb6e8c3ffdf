"""Engine secrets encrypted at rest (the plain column is encrypted row by row, then dropped); a tenant may allow step 8
to restrict an admin user that existed before Moran."""

from django.db import migrations, models


def encrypt_secrets(apps, schema_editor):
    from moran.encryption import secret_encrypt

    EngineConnection = apps.get_model("tenants", "EngineConnection")
    for connection in EngineConnection.objects.exclude(api_secret=""):
        connection.api_secret_encrypted = secret_encrypt(connection.api_secret)
        connection.save(update_fields=["api_secret_encrypted"])


def decrypt_secrets(apps, schema_editor):
    from moran.encryption import secret_decrypt

    EngineConnection = apps.get_model("tenants", "EngineConnection")
    for connection in EngineConnection.objects.exclude(api_secret_encrypted=""):
        connection.api_secret = secret_decrypt(connection.api_secret_encrypted)
        connection.save(update_fields=["api_secret"])


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0002_tenant_webhook_url"),
    ]

    operations = [
        migrations.AddField(
            model_name="engineconnection",
            name="api_secret_encrypted",
            field=models.TextField(blank=True, default="", editable=False),
        ),
        migrations.RunPython(encrypt_secrets, decrypt_secrets, elidable=False),
        migrations.RemoveField(model_name="engineconnection", name="api_secret"),
        migrations.AddField(
            model_name="tenant",
            name="allow_restricting_existing_admin",
            field=models.BooleanField(
                default=False,
                help_text="Let provisioning restrict an admin user that already existed in the engine (and could see "
                "every company) to this tenant's company.",
            ),
        ),
    ]
