"""Structured logs: a JSON-lines formatter (python-json-logger) and the context (tenant, run, step) it stamps on every
line.

A Celery task binds its context once, when it starts (``celery_app`` connects :func:`bind_task` to ``task_prerun``),
so every line logged while it runs — ours, Django's, the engine client's — carries the tenant's slug, the run id and
the step, without each call site passing ``extra``. Values a call site does pass in ``extra`` win.

Only the fields named here are written: a stray ``extra`` (or a secret in one) never reaches the log.
"""

from __future__ import annotations

import contextvars
import logging

from pythonjsonlogger import json as jsonlogger

#: the fields a line may carry besides time, level, logger and message
CONTEXT_FIELDS = ("tenant", "run_id", "step", "onboarding", "attempt", "task_id", "task")

# Values are never mutated in place (bind() sets a new dict), so a shared empty default is safe; None keeps ruff honest.
_context: contextvars.ContextVar[dict | None] = contextvars.ContextVar("moran_log_context", default=None)


def bind(**values) -> contextvars.Token:
    """Add values to the log context of the current task (or thread); returns a token for :func:`unbind`."""
    clean = {k: v for k, v in values.items() if k in CONTEXT_FIELDS and v not in (None, "")}
    return _context.set({**(_context.get() or {}), **clean})


def unbind(token: contextvars.Token | None = None) -> None:
    if token is not None:
        _context.reset(token)
    else:
        _context.set(None)


def current() -> dict:
    return dict(_context.get() or {})


def bind_task(task_id=None, task=None, args=None, kwargs=None, **_):
    """``task_prerun`` receiver. Step tasks are ``(onboarding_id, run_id, tenant=slug)``; other provisioning tasks
    pass ``run_id`` and ``tenant`` as keywords."""
    args, kwargs = args or (), kwargs or {}
    name = getattr(task, "name", "") or ""
    values = {"task_id": task_id, "task": name, "tenant": kwargs.get("tenant"), "run_id": kwargs.get("run_id")}
    if name.startswith("provisioning.step_"):
        values["step"] = name.removeprefix("provisioning.")
        if len(args) >= 2:
            values["onboarding"], values["run_id"] = args[0], str(args[1])
    unbind()
    bind(**values)


def unbind_task(**_):
    """``task_postrun`` receiver: a pool process serves many tasks; one task's context must not leak into the next."""
    unbind()


class ContextFilter(logging.Filter):
    """Puts the bound context on the record (explicit ``extra`` wins), and a ``context`` suffix for plain text."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get() or {}
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value in (None, "") and field in context:
                setattr(record, field, context[field])
            elif value in (None, ""):
                setattr(record, field, None)
        # The one writer logs the tenant's primary key (it has no slug at hand); inside a task, the slug is bound and
        # is what an operator searches for, so it is the `tenant`, and the key stays as `tenant_id`.
        if "tenant" in context and record.tenant != context["tenant"]:
            record.tenant_id = str(record.tenant)
            record.tenant = context["tenant"]
        shown = [f"{f}={getattr(record, f)}" for f in ("tenant", "run_id", "step") if getattr(record, f, None)]
        record.context = f" [{' '.join(shown)}]" if shown else ""
        return True


class PlainFormatter(logging.Formatter):
    """Text for a terminal, with the context as a ``[tenant=… run_id=… step=…]`` suffix (empty without a context,
    so a handler without :class:`ContextFilter` still works)."""

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "context"):
            record.context = ""
        return super().format(record)


class JsonFormatter(jsonlogger.JsonFormatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the context fields, and ``exc`` (the
    formatted traceback) when there is one.

    python-json-logger turns the record into a dict (the message, the traceback, every ``extra``) and serialises it;
    :meth:`process_log_record` then keeps only the fields named here, so a stray ``extra`` never reaches the log."""

    def __init__(self):
        super().__init__(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "exc"},
            timestamp="ts",
            json_ensure_ascii=False,
        )

    def process_log_record(self, log_data: dict) -> dict:
        line = {
            "ts": log_data["ts"].isoformat().replace("+00:00", "Z"),
            "level": log_data["level"].lower(),
            "logger": log_data["logger"],
            "message": log_data["message"],
        }
        for field in (*CONTEXT_FIELDS, "tenant_id", "exc"):
            value = log_data.get(field)
            if value not in (None, ""):
                line[field] = value if isinstance(value, int | float | bool) else str(value)
        return line
