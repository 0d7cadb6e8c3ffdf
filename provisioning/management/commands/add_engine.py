"""Register an ERPNext engine: ``add_engine NAME --url URL --api-key KEY``.

The API secret comes from the environment variable ``MORAN_ENGINE_API_SECRET``, or from a prompt when stdin is a
terminal; never from the command line, where it would sit in the shell history and the process list. The engine is
checked (step 0: reachable, credentials, ERPNext 15, setup wizard completed) before the connection is saved; an
existing connection of that name is updated.

Exit codes: 0 saved; 2 bad input or a failed check (one line on stderr).
"""

from __future__ import annotations

import getpass
import os
import sys

from django.core.management.base import BaseCommand

from moran.errors import DomainError
from provisioning.connections import engine_register

SECRET_ENV = "MORAN_ENGINE_API_SECRET"


class Command(BaseCommand):
    help = "Check an ERPNext server and save it as an engine connection (secret from $MORAN_ENGINE_API_SECRET)."

    def add_arguments(self, parser):
        parser.add_argument("name", help="the connection's name, used by provision_tenant --engine NAME")
        parser.add_argument("--url", required=True, help="the ERPNext site's base URL, e.g. https://erp.example.com")
        parser.add_argument("--api-key", required=True, help="the API key of a System Manager user")
        parser.add_argument("--no-verify-tls", action="store_true", help="accept a self-signed TLS certificate")
        parser.add_argument("--connect-timeout", type=float, help="seconds (default 5)")
        parser.add_argument("--read-timeout", type=float, help="seconds (default 60)")

    def handle(self, *args, **opts):
        secret = os.environ.get(SECRET_ENV, "")
        if not secret and sys.stdin is not None and sys.stdin.isatty():
            secret = getpass.getpass(f"API secret for {opts['name']}: ")
        if not secret:
            self.stderr.write(f"error: set {SECRET_ENV} to the API secret (or run interactively to be asked for it)")
            sys.exit(2)
        try:
            connection, found, created = engine_register(
                name=opts["name"],
                base_url=opts["url"],
                api_key=opts["api_key"],
                api_secret=secret,
                verify_tls=not opts["no_verify_tls"],
                connect_timeout=opts["connect_timeout"],
                read_timeout=opts["read_timeout"],
            )
        except DomainError as exc:
            self.stderr.write(f"error: {exc.message}")
            sys.exit(2)
        self.stdout.write(
            f"engine {connection.name} {'added' if created else 'updated'}: {connection.base_url} "
            f"(ERPNext {found['erpnext_version']}, Frappe {found['frappe_version']}, API user {found['user']})"
        )
