from django.db import migrations, models


class Migration(migrations.Migration):
    """The index delivery claims through: a connection's due changes in id order, from the last id claimed
    (forwarding/batches.py), so a long backlog's claims never walk the dead rows of the batches sent before."""

    dependencies = [
        ("forwarding", "0007_connection_jobs"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="pendingchange",
            index=models.Index(fields=["connection", "id"], name="pending_change_claim"),
        ),
    ]
