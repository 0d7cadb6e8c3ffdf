"""Re-encrypt every engine secret under the first key of ``MORAN_SECRET_KEYS`` (see SECURITY.md, "Rotating keys").

Exit codes: 0 done; 2 a secret that none of the configured keys opens, or no key configured (nothing was changed).
"""

from __future__ import annotations

import sys

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand

from moran.errors import DomainError
from provisioning.engines.connections import engine_secrets_rotate


class Command(BaseCommand):
    help = "Re-encrypt every stored engine API secret with the first key of MORAN_SECRET_KEYS."

    def handle(self, *args, **opts):
        try:
            rotated, empty = engine_secrets_rotate()
        except (DomainError, ImproperlyConfigured) as exc:
            self.stderr.write(f"error: {getattr(exc, 'message', exc)}")
            sys.exit(2)
        self.stdout.write(f"{rotated} engine secret(s) re-encrypted with the first key; {empty} without a secret")
