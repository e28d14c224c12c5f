"""The partner directory: every partner class, by key.

Kept in code, never in the database schema: Output.partner_key is a plain string checked against this
registry (Output.clean(), outputs.services, the API's serializer), so adding a partner needs no migration.
"""

from __future__ import annotations

from outputs.partners.base import Capability, Partner
from outputs.partners.braze import Braze
from outputs.partners.mailchimp import Mailchimp
from outputs.partners.meta import Meta

PARTNERS: dict[str, type[Partner]] = {}


def register_partner(cls: type[Partner]) -> type[Partner]:
    """Add a partner class to the directory (usable as a class decorator). A key is taken once."""
    if cls.key in PARTNERS and PARTNERS[cls.key] is not cls:
        raise ValueError(f"Partner key '{cls.key}' is already taken by {PARTNERS[cls.key].__name__}.")
    PARTNERS[cls.key] = cls
    return cls


def unregister_partner(key: str) -> None:
    """Remove a partner class from the directory (tests that register their own partners)."""
    PARTNERS.pop(key, None)


def get_partner_class(key: str) -> type[Partner]:
    try:
        return PARTNERS[key]
    except KeyError:
        raise LookupError(f"Unknown partner '{key}'. Known partners: {', '.join(sorted(PARTNERS))}.") from None


def partner_keys_with(capability: Capability) -> list[str]:
    """The keys of the partners declaring this capability (e.g. the bulk ones, for a query on Output.partner_key)."""
    return sorted(key for key, cls in PARTNERS.items() if cls.has(capability))


register_partner(Mailchimp)
register_partner(Braze)
register_partner(Meta)
