import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    """The outbox's foreign key to its connection loses its own index: the unique (connection, identity type,
    value), (connection, next attempt) and the claim's (connection, id) all lead with the connection, and
    every change planned (a connect's backfill, each event's membership change) paid for one index more."""

    dependencies = [
        ("connections", "0005_connection_upload_criteria"),
        ("forwarding", "0008_pendingchange_claim_index"),
    ]

    operations = [
        migrations.AlterField(
            model_name="pendingchange",
            name="connection",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="pending_changes",
                to="connections.connection",
            ),
        ),
    ]
