"""The step path's own SQL on PostgreSQL: the statements that every step sends, written once per process from the
models' metadata, with their values prepared and their rows loaded by the models' own fields (``get_db_prep_save``,
the fields' database converters, ``Model.from_db``).

The ORM builds the same statements, but on the step path compiling them cost more than running them (about 1 ms of
Python per statement here, beside 0.05–0.3 ms on the server), and a step sends a handful. Only the text of the
statements is kept, never a row: nothing here can go stale. Elsewhere (SQLite, the embedded mode) the ORM is used.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections
from django.db.models import Model


def _db():
    """The default database's wrapper itself: ``connection`` is a proxy that looks it up (a context-local read) on
    every attribute, and the fields' preparation reads it dozens of times per statement."""
    return connections[DEFAULT_DB_ALIAS]


def _qn(name: str) -> str:
    return connection.ops.quote_name(name)


@cache
def _fields(model: type[Model]):
    return tuple(f for f in model._meta.concrete_fields if not f.generated)


@cache
def _converters(model: type[Model]):
    return tuple(
        (f, tuple(f.get_db_converters(connection)) + tuple(connection.ops.get_db_converters(f.cached_col)))
        for f in _fields(model)
    )


def columns(model: type[Model], alias: str) -> str:
    return ", ".join(f"{alias}.{_qn(f.column)}" for f in _fields(model))


def load(model: type[Model], row, offset: int = 0) -> Model:
    """An instance of ``model`` from its columns (as :func:`columns` lists them) in ``row`` from ``offset`` on."""
    db = _db()
    values = []
    for index, (field, converters) in enumerate(_converters(model)):
        value = row[offset + index]
        for converter in converters:
            value = converter(value, field.cached_col, db)
        values.append(value)
    return model.from_db(db.alias, _attnames(model), values)


@cache
def _attnames(model: type[Model]) -> list[str]:
    return [f.attname for f in _fields(model)]


def width(model: type[Model]) -> int:
    return len(_fields(model))


@cache
def _update_all_sql(model: type[Model]) -> tuple[str, tuple]:
    fields = tuple(f for f in _fields(model) if not f.primary_key)
    sets = ", ".join(f"{_qn(f.column)} = %s" for f in fields)
    return f"UPDATE {_qn(model._meta.db_table)} SET {sets} WHERE {_qn(model._meta.pk.column)} = %s", fields


def save_sql(instance: Model) -> tuple[str, list]:
    """The UPDATE that ``instance.save()`` sends for an existing row, ``auto_now`` fields included."""
    sql, fields = _update_all_sql(type(instance))
    db = _db()
    params = [f.get_db_prep_save(f.pre_save(instance, False), db) for f in fields]
    params.append(instance.pk)
    return sql, params


@cache
def _insert_head(model: type[Model]) -> tuple[str, tuple]:
    fields = tuple(f for f in _fields(model) if not (f.primary_key and f.auto_created))
    head = f"INSERT INTO {_qn(model._meta.db_table)} ({', '.join(_qn(f.column) for f in fields)}) VALUES "
    return head, fields


def insert_sql(model: type[Model], rows: list[Model]) -> tuple[str, list]:
    """One multi-row INSERT of ``rows``, in their order (``auto_now_add`` and defaults as ``save()`` sets them)."""
    head, fields = _insert_head(model)
    one = "(" + ", ".join(["%s"] * len(fields)) + ")"
    db = _db()
    params = [f.get_db_prep_save(f.pre_save(row, True), db) for row in rows for f in fields]
    return head + ", ".join([one] * len(rows)), params


@cache
def _by_name(model: type[Model]) -> dict:
    return {**{f.name: f for f in _fields(model)}, **{f.attname: f for f in _fields(model)}}


def update_sql(model: type[Model], where: dict, values: dict) -> tuple[str, list]:
    """``UPDATE … SET values WHERE where`` (equalities, ANDed); keys are field names or attnames."""
    sql, sets, conditions = _update_text(model, tuple(values), tuple(where))
    db = _db()
    params = [field.get_db_prep_save(value, db) for field, value in zip(sets, values.values(), strict=True)]
    params += [
        field.get_db_prep_value(value.pk if isinstance(value, Model) else value, db)
        for field, value in zip(conditions, where.values(), strict=True)
    ]
    return sql, params


@cache
def _update_text(model: type[Model], set_names: tuple, where_names: tuple) -> tuple[str, tuple, tuple]:
    fields = _by_name(model)
    sets = tuple(fields[name] for name in set_names)
    conditions = tuple(fields[name] for name in where_names)
    assignments = ", ".join(f"{_qn(f.column)} = %s" for f in sets)
    matches = " AND ".join(f"{_qn(f.column)} = %s" for f in conditions)
    return f"UPDATE {_qn(model._meta.db_table)} SET {assignments} WHERE {matches}", sets, conditions


@cache
def _lock_sql(model: type[Model]) -> str:
    meta = model._meta
    return f"SELECT {columns(model, _qn(meta.db_table))} FROM {_qn(meta.db_table)} WHERE {_qn(meta.pk.column)} = %s FOR UPDATE"


def select_for_update(model: type[Model], pk) -> Model:
    """``model.objects.select_for_update().get(pk=pk)``, inside the caller's transaction."""
    if connection.vendor != "postgresql":
        return model.objects.select_for_update().get(pk=pk)
    with connection.cursor() as cursor:
        cursor.execute(_lock_sql(model), [pk])
        row = cursor.fetchone()
    if row is None:
        raise model.DoesNotExist(f"{model._meta.object_name} matching query does not exist.")
    return load(model, row)


@cache
def _insert_select_head(model: type[Model]) -> tuple[str, str, tuple]:
    """The INSERT of rows that exist only when ``u`` (the conditional UPDATE of the same statement) matched: typed
    placeholders, since a VALUES list in a sub-select does not take its columns' types from the target."""
    head, fields = _insert_head(model)
    one = "(" + ", ".join(f"%s::{_cast_type(f)}" for f in fields) + ")"
    return head.removesuffix(" VALUES "), one, fields


def _cast_type(field) -> str:
    # varchar without its length: a cast would cut a long value short where the column refuses it
    return re.sub(r"^varchar\(\d+\)$", "varchar", field.cast_db_type(connection))


def insert_if_sql(model: type[Model], rows: list[Model], *, source: str) -> tuple[str, list]:
    """Like :func:`insert_sql`, but the rows are inserted only when the CTE ``source`` returned a row."""
    head, one, fields = _insert_select_head(model)
    db = _db()
    params = [f.get_db_prep_save(f.pre_save(row, True), db) for row in rows for f in fields]
    return f"{head} SELECT v.* FROM {source} CROSS JOIN (VALUES {', '.join([one] * len(rows))}) v", params


@cache
def _update_merging_sql(model: type[Model], merge_field: str) -> tuple[str, tuple]:
    """:func:`_update_all_sql` with ``merge_field`` (a JSON object column) set to itself ``||`` the parameter."""
    fields = tuple(f for f in _fields(model) if not f.primary_key)
    sets = ", ".join(
        f"{_qn(f.column)} = {_qn(f.column)} || %s::jsonb" if f.name == merge_field else f"{_qn(f.column)} = %s"
        for f in fields
    )
    return f"UPDATE {_qn(model._meta.db_table)} SET {sets} WHERE {_qn(model._meta.pk.column)} = %s", fields


def save_if_sql(instance: Model, *, version_field: str, expected, merge: tuple[str, dict] | None = None):
    """The UPDATE of :func:`save_sql`, only when the row's ``version_field`` is still ``expected``; returns a row
    when it matched.

    ``merge``: ``(field, entries)``: that JSON field gets only ``entries``, merged into the stored object (top-level
    keys replaced), instead of its whole value. The caller vouches that the stored object, as of ``expected``, merged
    with ``entries`` is the instance's value."""
    if merge is None:
        sql, params = save_sql(instance)
    else:
        name, entries = merge
        sql, fields = _update_merging_sql(type(instance), name)
        db = _db()
        params = [f.get_db_prep_save(entries if f.name == name else f.pre_save(instance, False), db) for f in fields]
        params.append(instance.pk)
    return f"{sql} AND {_qn(_by_name(type(instance))[version_field].column)} = %s RETURNING 1", [*params, expected]


# --- Prepared statements ---------------------------------------------------------------------------------------
# Planning the step's statements costs the server more than running them (about 1 ms for a compare-and-swap write,
# 0.05-0.3 ms to run it): outside a transaction, each is prepared once per database session and executed by name.
# A session's prepared statements die with it; behind a pooler in transaction mode (PgBouncer), turn them off
# (MORAN_PREPARED_STATEMENTS=false): another client's session would not have them.

_INVALID_NAME = "26000"  # invalid_sql_statement_name: not prepared in this session
_DUPLICATE_NAME = "42P05"  # duplicate_prepared_statement: prepared in this session already


@cache
def _prepared(sql: str) -> tuple[str, str]:
    name = "moran_" + hashlib.blake2b(sql.encode(), digest_size=8).hexdigest()
    count = iter(range(1, sql.count("%s") + 1))
    return name, f"PREPARE {name} AS " + re.sub(r"%s", lambda _: f"${next(count)}", sql)


def _session_prepared() -> set:
    """The names prepared in the current database session (a new connection, or the same object after a reconnect
    to another backend, starts empty)."""
    db = _db()
    raw = db.connection
    key = (id(raw), raw.get_backend_pid())
    held = getattr(db, "_moran_prepared", None)
    if held is None or held[0] != key:
        held = (key, set())
        db._moran_prepared = held
    return held[1]


def execute(sql: str, params: list):
    """Run ``sql`` and return its first row (or None): prepared, when outside a transaction on PostgreSQL."""
    db = _db()
    with db.cursor() as cursor:
        if db.vendor != "postgresql" or db.in_atomic_block or not settings.PREPARED_STATEMENTS:
            cursor.execute(sql, params)
            return cursor.fetchone() if cursor.description else None
        name, prepare = _prepared(sql)
        call = f"EXECUTE {name}({', '.join(['%s'] * len(params))})" if params else f"EXECUTE {name}"
        _execute_prepared(cursor, name, prepare, call, params)
        return cursor.fetchone() if cursor.description else None


def _execute_prepared(cursor, name: str, prepare: str, call: str, params: list) -> None:
    prepared = _session_prepared()
    if name in prepared:
        try:
            cursor.execute(call, params)
            return
        except DatabaseError as exc:
            if getattr(exc.__cause__, "pgcode", None) != _INVALID_NAME:
                raise
            prepared.discard(name)  # not in this session after all: prepare it again
    try:
        cursor.execute(f"{prepare}; {call}", params)  # one round trip: prepare and execute
    except DatabaseError as exc:
        if getattr(exc.__cause__, "pgcode", None) != _DUPLICATE_NAME:
            raise
        cursor.execute(call, params)  # prepared in this session already
    prepared.add(name)
