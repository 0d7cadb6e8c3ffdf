"""Rows that a change of the one writer writes with the state: collected while the change runs, then written by the
writer together with the onboarding's UPDATE.

On PostgreSQL they go in the same statement as that UPDATE (``WITH w0 AS (INSERT …), w1 AS (UPDATE …) UPDATE
onboarding …``): one round trip instead of one per row, which is most of a step's own cost. A statement is atomic, so
the rows and the state still commit or roll back together. Rows of one model go in one multi-row INSERT, in the order
the change added them, so log lines keep their order. Elsewhere (SQLite, the embedded mode) they are written one after
the other, inside the writer's transaction all the same.
"""

from __future__ import annotations

from django.db import connection
from django.db.models import Model

from provisioning.rowsql import execute, insert_if_sql, insert_sql, save_if_sql, save_sql, update_sql

_ATTR = "_pending_writes"


class GiveBack:
    """Session advisory locks that a compare-and-swap write gives back in its own statement, once it matched
    (``done``); whoever holds them gives back what a write did not."""

    def __init__(self, keys: list[int]):
        self.keys = list(keys)
        self.done = False


def pending_begin(instance: Model) -> None:
    """The writer starts collecting for ``instance`` (the locked onboarding)."""
    setattr(instance, _ATTR, [])


def _pending(instance: Model) -> list | None:
    return getattr(instance, _ATTR, None)


def add_row(owner: Model, row: Model) -> None:
    """Insert ``row`` with ``owner``'s state (at once when no write is collecting for it)."""
    pending = _pending(owner)
    if pending is None:
        row.save(force_insert=True)
    else:
        pending.append(("insert", row))


def add_update(owner: Model, model: type[Model], where: dict, values: dict) -> None:
    """``model.objects.filter(**where).update(**values)`` with ``owner``'s state (``where``: equalities on fields;
    at once when no write is collecting for it)."""
    pending = _pending(owner)
    if pending is None:
        model.objects.filter(**where).update(**values)
    else:
        pending.append(("update", (model, where, values)))


def pending_write(instance: Model) -> None:
    """Save ``instance`` (every field, as ``save()`` would) with the rows collected for it, and stop collecting."""
    pending = _pending(instance) or []
    setattr(instance, _ATTR, None)
    if connection.vendor != "postgresql":
        for kind, item in pending:
            if kind == "insert":
                item.save(force_insert=True)
            else:
                model, where, values = item
                model.objects.filter(**where).update(**values)
        # The one writer's own save goes past the model's guard on state fields; only this save, so the instance
        # the writer returns cannot carry the pass into a later save().
        instance._saving_state = True
        try:
            instance.save()
        finally:
            instance._saving_state = False
        return
    parts = _inserts(pending) + [update_sql(*item) for kind, item in pending if kind == "update"]
    sql, params = save_sql(instance)
    if parts:
        sql = "WITH " + ", ".join(f"w{i} AS ({part})" for i, (part, _) in enumerate(parts)) + " " + sql
        params = [p for _, part_params in parts for p in part_params] + params
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _inserts(pending) -> list[tuple[str, list]]:
    """One multi-row INSERT per model, rows in the order they were added."""
    return [insert_sql(model, rows) for model, rows in _rows_by_model(pending).items()]


def _rows_by_model(pending) -> dict[type, list[Model]]:
    by_model: dict[type, list[Model]] = {}
    for kind, item in pending:
        if kind == "insert":
            by_model.setdefault(type(item), []).append(item)
    return by_model


def pending_write_if(
    instance: Model, *, version_field: str, expected, give_back: GiveBack | None = None, merge=None
) -> bool:
    """:func:`pending_write` as one compare-and-swap statement (PostgreSQL, outside a transaction): the row is saved,
    and the collected rows written, only if its ``version_field`` is still ``expected``. Returns whether it was.

    ``give_back``: advisory locks the same statement releases when (and only when) the row was saved. They are
    released before the statement commits: a session that takes one in that instant reads the row as it was, and
    its own compare-and-swap then finds the version changed and runs under the row lock, after this commit.

    ``merge``: see :func:`provisioning.rowsql.save_if_sql`."""
    pending = _pending(instance) or []
    setattr(instance, _ATTR, None)
    sql, params = save_if_sql(instance, version_field=version_field, expected=expected, merge=merge)
    parts = [("u", sql, params)]
    for model, rows in _rows_by_model(pending).items():
        parts.append((f"w{len(parts)}", *insert_if_sql(model, rows, source="u")))
    for kind, item in pending:
        if kind == "update":
            sql, params = update_sql(*item)
            parts.append((f"w{len(parts)}", sql + " AND EXISTS (SELECT 1 FROM u)", params))
    final = "SELECT count(*) FROM u"
    keys = give_back.keys if give_back is not None and not give_back.done else []
    if keys:
        parts.append(("r", "SELECT " + ", ".join(["pg_advisory_unlock(%s)"] * len(keys)) + " FROM u", keys))
        final = "SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM r)"
    statement = "WITH " + ", ".join(f"{name} AS ({sql})" for name, sql, _ in parts) + " " + final
    row = execute(statement, [p for _, _, part_params in parts for p in part_params])
    if keys and row[1] == 1:
        give_back.done = True
    return row[0] == 1
