"""Register an engine: ``add_engine NAME --url URL --api-key KEY`` (ERPNext), or ``add_engine NAME --kind sandbox``.

For ERPNext (the default kind), the API secret comes from the environment variable ``MORAN_ENGINE_API_SECRET``, or
from a prompt when stdin is a terminal; never from the command line, where it would sit in the shell history and the
process list. The engine is checked (step 0: reachable, credentials, ERPNext 15, setup wizard completed) before the
connection is saved. A sandbox engine needs no server and no credentials. An existing connection of that name (and
kind) is updated. ``--max-concurrency K`` caps the steps of the engine in flight at once, across every worker.

Exit codes: 0 saved; 2 bad input or a failed check (one line on stderr).
"""

from __future__ import annotations

import getpass
import os
import sys

from django.core.management.base import BaseCommand

from moran.errors import DomainError
from provisioning.engines.connections import engine_register, engine_register_sandbox
from tenants.models import EngineConnection

SECRET_ENV = "MORAN_ENGINE_API_SECRET"


class Command(BaseCommand):
    help = (
        "Check an ERPNext server and save it as an engine connection (secret from $MORAN_ENGINE_API_SECRET), "
        "or save a sandbox engine (--kind sandbox)."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="the connection's name, used by provision_tenant --engine NAME")
        parser.add_argument(
            "--kind",
            choices=[EngineConnection.Kind.ERPNEXT, EngineConnection.Kind.SANDBOX],
            default=EngineConnection.Kind.ERPNEXT,
            help="erpnext (default): a real ERPNext site; sandbox: the built-in engine, no server needed",
        )
        parser.add_argument("--url", help="the ERPNext site's base URL, e.g. https://erp.example.com (erpnext)")
        parser.add_argument("--api-key", help="the API key of a System Manager user (erpnext)")
        parser.add_argument("--no-verify-tls", action="store_true", help="accept a self-signed TLS certificate")
        parser.add_argument("--connect-timeout", type=float, help="seconds (default 5)")
        parser.add_argument("--read-timeout", type=float, help="seconds (default 60)")
        parser.add_argument(
            "--max-concurrency",
            type=int,
            metavar="K",
            help="steps of this engine in flight at once, across every worker (default 4; kept when updating)",
        )

    def handle(self, *args, **opts):
        try:
            if opts["kind"] == EngineConnection.Kind.SANDBOX:
                self._sandbox(opts)
            else:
                self._erpnext(opts)
        except DomainError as exc:
            self.stderr.write(f"error: {exc.message}")
            sys.exit(2)

    def _sandbox(self, opts):
        given = [f"--{flag}" for flag in ("url", "api_key") if opts[flag]]
        if given:
            self.stderr.write(f"error: a sandbox engine takes no {' or '.join(f.replace('_', '-') for f in given)}")
            sys.exit(2)
        connection, created = engine_register_sandbox(name=opts["name"], max_concurrency=opts["max_concurrency"])
        self.stdout.write(
            f"engine {connection.name} {'added' if created else 'updated'}: sandbox "
            f"(max concurrency {connection.max_concurrency})"
        )

    def _erpnext(self, opts):
        missing = [f"--{flag.replace('_', '-')}" for flag in ("url", "api_key") if not opts[flag]]
        if missing:
            self.stderr.write(f"error: an erpnext engine needs {' and '.join(missing)}")
            sys.exit(2)
        secret = os.environ.get(SECRET_ENV, "")
        if not secret and sys.stdin is not None and sys.stdin.isatty():
            secret = getpass.getpass(f"API secret for {opts['name']}: ")
        if not secret:
            self.stderr.write(f"error: set {SECRET_ENV} to the API secret (or run interactively to be asked for it)")
            sys.exit(2)
        connection, found, created = engine_register(
            name=opts["name"],
            base_url=opts["url"],
            api_key=opts["api_key"],
            api_secret=secret,
            verify_tls=not opts["no_verify_tls"],
            connect_timeout=opts["connect_timeout"],
            read_timeout=opts["read_timeout"],
            max_concurrency=opts["max_concurrency"],
        )
        self.stdout.write(
            f"engine {connection.name} {'added' if created else 'updated'}: {connection.base_url} "
            f"(ERPNext {found['erpnext_version']}, Frappe {found['frappe_version']}, API user {found['user']}, "
            f"max concurrency {connection.max_concurrency})"
        )
