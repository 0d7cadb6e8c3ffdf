"""One canonical form of an email address, for the log-in lookup and the log-in limits alike.

The form is NFKC then ``casefold()``. An address typed in any other form is refused for log-in: NFKC maps look-alikes
onto plain letters (``opſ@example.com``, with a long s, becomes ``ops@example.com``), and a database's
case-insensitive match may fold them the same way, so accepting them would let a look-alike log in as someone else.
An address is accepted only when normalising it changes nothing but the case of plain letters.
"""

from __future__ import annotations

import unicodedata


def email_canonical(value: str) -> str:
    """The canonical form (the key the limits count under, whatever was typed)."""
    return unicodedata.normalize("NFKC", (value or "").strip()).casefold()


def email_is_canonical_form(value: str) -> bool:
    """True when ``value`` is an address as people type it: NFKC already, and case folding does no more than
    lower-casing (so no ß → ss, no long s → s)."""
    stripped = (value or "").strip()
    return unicodedata.normalize("NFKC", stripped) == stripped and stripped.casefold() == stripped.lower()
