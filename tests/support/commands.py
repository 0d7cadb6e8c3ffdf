"""Run a management command the way a terminal does: its exit code, stdout and stderr."""

from __future__ import annotations

from io import StringIO

from django.core.management import call_command


def run(name: str, *args, **options) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command(name, *args, stdout=out, stderr=err, **options)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()
