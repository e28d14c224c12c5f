"""Who may do what: the custom permissions, and the four ready groups (roles).

One vocabulary for the admin and the REST API: Django's model permissions (`app.view_model`,
`add_`, `change_`, `delete_`) plus the custom ones below for the actions that are not a plain
write of a row. The admin's pages, buttons and actions and the API's endpoints
(config/api_permissions.py) check the same names, so a user can do the same things in both.

The groups are kept as declared: every `migrate` (post_migrate, see forwarding/apps.py) creates the
custom permissions and sets each group's permissions to exactly its declaration, so a changed
declaration reaches every installation and a hand-edited ready group is put back. Make your own
groups for variations.
"""

from __future__ import annotations

from typing import Any

from django.db import DEFAULT_DB_ALIAS

# --- the custom permissions (app_label.codename -> model, name) --------------------------------

DOWNLOAD_AUDIENCE = "audiences.download_audience"
PAUSE_CONNECTION = "connections.pause_connection"
TEST_CONNECTION = "connections.test_connection"
ERASE_PROFILE = "audiences.erase_profile"
MERGE_PROFILE = "audiences.merge_profile"

CUSTOM_PERMISSIONS: dict[str, tuple[str, str]] = {
    DOWNLOAD_AUDIENCE: ("audience", "Can download the members of an audience (with their identities)"),
    PAUSE_CONNECTION: ("connection", "Can pause and resume a connection"),
    TEST_CONNECTION: ("connection", "Can test a connection (asks the partner)"),
    ERASE_PROFILE: ("profile", "Can erase a profile (a data subject's request to be forgotten)"),
    MERGE_PROFILE: ("profile", "Can merge two profiles (resolves identity conflicts; partners are updated)"),
}


class AnyOf(tuple):
    """In a declaration of needed permissions: any one of these will do."""

    def __new__(cls, *names: str) -> AnyOf:
        return super().__new__(cls, names)


def holds(user: Any, needed: tuple[str | AnyOf, ...]) -> bool:
    """Whether `user` holds every permission of `needed` (one of each AnyOf)."""
    return all(
        any(user.has_perm(name) for name in need) if isinstance(need, AnyOf) else user.has_perm(need) for need in needed
    )


# The criteria builder's reads (the live estimate, the names seen): for who may create or change
# audiences, since the builder serves the add and the change page alike. Admin and REST API check this.
BUILD_AUDIENCES = (AnyOf("audiences.add_audience", "audiences.change_audience"),)

# --- the roles ---------------------------------------------------------------------------------

# Configuration and figures, no personal data.
VIEWER = frozenset(
    {
        "audiences.view_audience",
        "outputs.view_output",
        "connections.view_connection",
        "forwarding.view_deliveryattempt",
    }
)
# Profiles, their identities and their audience history: personal data.
PROFILES = frozenset({"audiences.view_profile", "audiences.view_identity", "audiences.view_membershipchange"})
# Builds audiences and decides where they go; uses partners' credentials but never sees or sets them.
MARKETER = (
    VIEWER
    | PROFILES
    | {
        "audiences.add_audience",
        "audiences.change_audience",
        DOWNLOAD_AUDIENCE,
        "connections.add_connection",
        # Editing a connection's settings (e.g. moving it to another Mailchimp list), resync and reconcile.
        "connections.change_connection",
        "connections.delete_connection",
        TEST_CONNECTION,
    }
)
# Keeps data flowing in and out: outputs and their credentials, inputs and their keys, the status
# switch, the outbox and rejections, identity conflicts, profile upserts from integrations.
OPERATOR = (
    VIEWER
    | PROFILES
    | {
        "outputs.add_output",
        "outputs.change_output",
        "outputs.delete_output",
        "connections.change_connection",
        "connections.delete_connection",
        PAUSE_CONNECTION,
        TEST_CONNECTION,
        "connections.view_connectionmember",
        "forwarding.view_pendingchange",
        "forwarding.view_connectionalert",
        "audiences.view_input",
        "audiences.add_input",
        "audiences.change_input",
        "audiences.view_identityconflict",
        MERGE_PROFILE,
        "audiences.add_profile",
        "audiences.change_profile",
        # Data-subject erasure (audiences/erasure.py), and its records, which hold no personal data.
        ERASE_PROFILE,
        "audiences.view_profileerasure",
    }
)
# "admin" holds every permission of these apps (users, groups and tokens included).
ADMIN_APPS = ("audiences", "outputs", "connections", "forwarding", "auth", "authtoken", "django_celery_beat")

ROLES: dict[str, frozenset[str] | None] = {
    "viewer": VIEWER,
    "marketer": MARKETER,
    "operator": OPERATOR,
    "admin": None,  # every permission of ADMIN_APPS
}


def roles_sync(*, apps: Any = None, using: str = DEFAULT_DB_ALIAS) -> None:
    """Create the custom permissions and the groups, each with exactly its role's permissions.

    Idempotent. `apps` is the migration state's registry when called from post_migrate.
    """
    from django.apps import apps as global_apps
    from django.contrib.auth.management import create_permissions
    from django.contrib.contenttypes.management import create_contenttypes

    apps = apps or global_apps
    # Every app's content types and default permissions first, whatever order post_migrate runs in.
    for label in ADMIN_APPS:
        app_config = global_apps.get_app_config(label)
        create_contenttypes(app_config, verbosity=0, using=using, apps=apps)
        create_permissions(app_config, verbosity=0, using=using, apps=apps)

    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    for name, (model, label) in CUSTOM_PERMISSIONS.items():
        app_label, codename = name.split(".")
        content_type = ContentType.objects.db_manager(using).get_by_natural_key(app_label, model)
        permission, _ = Permission.objects.db_manager(using).get_or_create(
            content_type=content_type, codename=codename, defaults={"name": label}
        )
        if permission.name != label:
            Permission.objects.db_manager(using).filter(pk=permission.pk).update(name=label)

    every = list(
        Permission.objects.db_manager(using)
        .filter(content_type__app_label__in=ADMIN_APPS)
        .select_related("content_type")
    )
    for group_name, declared in ROLES.items():
        if declared is None:
            wanted = every
        else:
            wanted = [p for p in every if f"{p.content_type.app_label}.{p.codename}" in declared]
            missing = declared - {f"{p.content_type.app_label}.{p.codename}" for p in wanted}
            if missing:
                raise LookupError(f"Role {group_name!r} names unknown permissions: {sorted(missing)}")
        group, _ = Group.objects.db_manager(using).get_or_create(name=group_name)
        group.permissions.set(wanted)


def roles_sync_after_migrate(sender: Any, *, apps: Any = None, using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    """post_migrate receiver (connected by forwarding.apps)."""
    roles_sync(apps=apps, using=using)
