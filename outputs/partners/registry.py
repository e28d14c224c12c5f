"""The partner directory: every partner class, by key."""

from __future__ import annotations

from outputs.partners.base import Partner
from outputs.partners.mailchimp import Mailchimp

PARTNERS: dict[str, type[Partner]] = {cls.key: cls for cls in (Mailchimp,)}
PARTNER_CHOICES = [(key, cls.name) for key, cls in PARTNERS.items()]


def get_partner_class(key: str) -> type[Partner]:
    try:
        return PARTNERS[key]
    except KeyError:
        raise LookupError(f"Unknown partner '{key}'. Known partners: {', '.join(sorted(PARTNERS))}.") from None
