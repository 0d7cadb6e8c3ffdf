"""Reading documents as the REST API does: get, list (filters, fields, order, paging) and get_value."""

from __future__ import annotations

import copy
import json
import re

from provisioning.engines.emulator.tables import CHILD_TABLES, FIELDS, STANDARD_FIELDS
from provisioning.engines.emulator.values import truthy
from provisioning.engines.errors import (
    EngineAuthError,
    EngineBadRequestError,
    EngineNotFoundError,
    EngineValidationError,
)


class Query:
    """The read side of :class:`~provisioning.engines.emulator.site.ERPNextEmulator` (a mixin over its store)."""

    # --- resources ---------------------------------------------------------------------------------------------
    def _check_doctype(self, doctype: str, *, listing: bool = False) -> None:
        if doctype not in FIELDS:
            if listing:
                raise EngineNotFoundError(f"DocType {doctype} not found", status=404)
            raise EngineBadRequestError(f"No module named '{doctype}'", status=500, exc_type="ImportError")

    def get_doc(self, doctype: str, name: str) -> dict:
        self._check_doctype(doctype)
        doc = self.store.get(doctype, name)
        if doc is None:
            raise EngineNotFoundError(f"{doctype} {name} not found", status=404)
        permitted = self._permitted_names(doctype)
        if permitted is not None and name not in permitted:
            raise EngineAuthError(
                f"Not allowed for {doctype}: {name}<br>User <strong>{self.user}</strong> does not have access to "
                f"this document: {doctype} - {name}",
                status=403,
                exc_type="PermissionError",
            )
        return doc

    def get_list(self, doctype, *, filters=None, fields=None, order_by=None, limit=0, start=0):
        self._check_doctype(doctype, listing=True)
        conditions = self._parse_filters(doctype, filters)
        fields = self._parse_json(fields, "fields") or ["name"]
        for field in fields:
            self._check_field(doctype, field.split(" as ")[0].strip("`"))
        parsed = self._parse_json(filters, "filters")
        match = {f: v for f, v in parsed.items() if isinstance(v, str)} if isinstance(parsed, dict) else {}
        rows = [row for row in self.store.rows(doctype, match) if all(cond(row) for cond in conditions)]
        permitted = self._permitted_names(doctype)
        if permitted is not None:
            rows = [row for row in rows if row["name"] in permitted]
        if order_by:
            # "field [asc|desc]", the field possibly qualified as Frappe writes it: `tabCost Center`.`name` desc
            match = re.fullmatch(r"\s*(?:`tab[^`]+`\.)?`?(\w+)`?(?:\s+(asc|desc))?\s*", str(order_by), re.IGNORECASE)
            if match is None:
                raise EngineValidationError(f"Invalid order_by: {order_by}", status=417, exc_type="ValidationError")
            field, direction = match[1], (match[2] or "asc").lower()
            rows.sort(key=lambda r: _sort_key(r.get(field)), reverse=direction == "desc")
        else:
            rows.sort(key=lambda r: r["name"])
        rows = rows[int(start or 0) :]
        if limit:
            rows = rows[: int(limit)]
        if fields == ["*"]:
            return [{k: v for k, v in r.items() if not isinstance(v, list)} for r in rows]
        return [{f: r.get(f) for f in fields} for r in rows]

    # --- User Permissions: what a restricted user may read ----------------------------------------------------
    def acting_as(self, user: str):
        """The same site (the same store) as another user reads it."""
        view = copy.copy(self)
        view.user = user
        return view

    def _permitted_names(self, doctype: str) -> set[str] | None:
        """Frappe's restricting effect of User Permissions on reads: a user holding User Permissions (applying to all
        doctypes) on a doctype reads only those documents of it (one on Company: the user lists that company only,
        reading another is a 403). None: not restricted. Administrator never is. Modelled for the allowed doctype
        itself, not for the documents that link to it."""
        if self.user == "Administrator":
            return None
        allowed = {
            row["for_value"]
            for row in self.store.rows("User Permission", {"user": self.user, "allow": doctype})
            if truthy(row.get("apply_to_all_doctypes") or 0)
        }
        return allowed or None

    def get_value(self, doctype, fieldname, filters=None):
        self._check_doctype(doctype)
        fieldname = self._parse_json(fieldname, "fieldname") or "name"
        names = fieldname if isinstance(fieldname, list) else [fieldname]
        if doctype == "System Settings":
            doc = self.store.get(doctype, doctype)
            return {f: doc.get(f) for f in names}
        rows = self.get_list(doctype, filters=filters or {}, fields=names, limit=1)
        return rows[0] if rows else {}

    # --- filters -----------------------------------------------------------------------------------------------
    @staticmethod
    def _parse_json(value, label):
        if isinstance(value, str) and value[:1] in "[{":
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise EngineBadRequestError(f"{exc}", status=500, exc_type="JSONDecodeError")
        return value

    def _check_field(self, doctype, field):
        if field != "*" and field not in FIELDS[doctype] and field not in STANDARD_FIELDS:
            raise EngineValidationError(f"Field not permitted in query: {field}", status=417, exc_type="DataError")

    def _parse_filters(self, doctype, filters):
        filters = self._parse_json(filters, "filters") or []
        items = []
        if isinstance(filters, dict):
            for field, value in filters.items():
                if isinstance(value, list) and len(value) == 2:
                    items.append((doctype, field, value[0], value[1]))
                else:
                    items.append((doctype, field, "=", value))
        else:
            for item in filters:
                if len(item) == 4:
                    items.append(tuple(item))
                else:
                    items.append((doctype, *item))
        conditions = []
        for item_doctype, field, op, value in items:
            if item_doctype in CHILD_TABLES and CHILD_TABLES[item_doctype][0] == doctype:
                table = CHILD_TABLES[item_doctype][1]
                conditions.append(
                    lambda row, t=table, f=field, o=op, v=value: any(
                        _compare(child.get(f), o, v) for child in row.get(t) or []
                    )
                )
            else:
                self._check_field(doctype, field)
                conditions.append(lambda row, f=field, o=op, v=value: _compare(row.get(f), o, v))
        return conditions


def _compare(actual, op, expected) -> bool:
    op = str(op).strip().lower()
    if op == "is":
        is_set = actual not in (None, "")
        return is_set if str(expected).lower() == "set" else not is_set
    if op in {"in", "not in"}:
        values = expected if isinstance(expected, list) else [v.strip() for v in str(expected).split(",")]
        found = str(actual) in {str(v) for v in values}
        return found if op == "in" else not found
    if op in {"like", "not like"}:
        pattern = "^" + re.escape(str(expected)).replace("%", ".*").replace("_", ".") + "$"
        found = re.match(pattern, str(actual or ""), re.IGNORECASE) is not None
        return found if op == "like" else not found
    a, e = _normalise(actual), _normalise(expected)
    if op in {"=", "=="}:
        return a == e
    if op == "!=":
        return a != e
    try:
        return {"<": a < e, "<=": a <= e, ">": a > e, ">=": a >= e}[op]
    except TypeError:
        return False
    except KeyError:
        raise EngineValidationError(
            f"Operator must be one of =, !=, <, <=, >, >=, like, in, is: {op}", status=417, exc_type="ValidationError"
        )


def _sort_key(value):
    # Numbers before text, each in its own order, so a column of mixed types still sorts (as SQL would).
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, "" if value is None else str(value))


def _normalise(value):
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    text = "" if value is None else str(value)
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return text
