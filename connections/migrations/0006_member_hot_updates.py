import django.db.models.deletion
from django.db import migrations, models

# Each member is written twice by delivery: inserted "maybe held" before its batch is sent, then updated
# with the partner's answer. The update is HOT (heap-only: no index entry written, the old version pruned
# from its page) when it changes no indexed column and its new version fits on the same page: so no index
# covers `state`, `reason`, `fingerprint` or `updated_at`, and inserts fill pages to 40% only, which leaves
# each row room for its answer beside it: the answer's version is larger than the row written ahead (its
# 32-character fingerprint), and at 50% one update in seven found its page full (README "Delivery speed").
FILLFACTOR = 40


def set_fillfactor(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        table = schema_editor.quote_name(apps.get_model("connections", "ConnectionMember")._meta.db_table)
        schema_editor.execute(f"ALTER TABLE {table} SET (fillfactor = {FILLFACTOR})", params=None)


def reset_fillfactor(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        table = schema_editor.quote_name(apps.get_model("connections", "ConnectionMember")._meta.db_table)
        schema_editor.execute(f"ALTER TABLE {table} RESET (fillfactor)", params=None)


class Migration(migrations.Migration):
    """ConnectionMember keeps two indexes, its primary key and the unique (connection, identity type, value):
    the index on (connection, state) made every recorded answer a full update (a new index entry in each of
    four indexes), and the foreign key's own index repeated the unique index's first column."""

    dependencies = [
        ("connections", "0005_connection_upload_criteria"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="connectionmember",
            name="connections_connect_0f8e9e_idx",
        ),
        migrations.AlterField(
            model_name="connectionmember",
            name="connection",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="members",
                to="connections.connection",
            ),
        ),
        migrations.RunPython(set_fillfactor, reset_fillfactor, elidable=False),
    ]
