"""Where the emulator keeps its documents: the protocol every store implements, and the batched reads and writes a
store may offer (with their one-at-a-time equivalents for a store that does not)."""

from __future__ import annotations

from typing import Protocol


class DuplicateName(Exception):
    pass


class Store(Protocol):
    def get(self, doctype: str, name: str) -> dict | None: ...
    def add(self, doctype: str, name: str, doc: dict) -> None:
        """Insert; raises DuplicateName when the name is taken (atomically, like a primary key)."""

    def put(self, doctype: str, name: str, doc: dict) -> None: ...
    def remove(self, doctype: str, name: str) -> bool: ...
    def rows(self, doctype: str, match: dict | None = None) -> list[dict]:
        """Every document of the doctype; ``match`` ({field: str}) is a hint the store may use to read fewer."""

    def atomic(self):
        """A context in which several writes succeed or fail together."""

    def lock_site(self) -> None:
        """Inside ``atomic()``: wait for every other writer that took this lock to end, and hold it until this one
        ends (what ERPNext's ``for_update`` of a shared document does)."""

    # Optional, for a store that can do in one round trip what the functions below otherwise do one by one:
    #   get_many(keys) -> {(doctype, name): doc}, add_many(entries), field_values(doctype, field) -> {name: value}


def get_many(store, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """The documents found among ``keys`` ((doctype, name) pairs), by key; a missing one is absent."""
    batched = getattr(store, "get_many", None)
    if batched is not None:
        return batched(keys)
    found = {}
    for doctype, name in keys:
        doc = store.get(doctype, name)
        if doc is not None:
            found[(doctype, name)] = doc
    return found


def add_many(store, entries: list[tuple[str, str, dict]]) -> None:
    """Insert every (doctype, name, doc); ``DuplicateName(doctype, name)`` for the first one (in order) whose name is
    taken. Call it inside ``atomic()``: nothing of a batch that fails may stay."""
    batched = getattr(store, "add_many", None)
    if batched is not None:
        batched(entries)
        return
    for doctype, name, doc in entries:
        try:
            store.add(doctype, name, doc)
        except DuplicateName as exc:
            raise DuplicateName(doctype, name) from exc


def field_values(store, doctype: str, field: str) -> dict[str, object]:
    """One field of every document of the doctype, by name (the store need not read the whole documents)."""
    batched = getattr(store, "field_values", None)
    if batched is not None:
        return batched(doctype, field)
    return {row["name"]: row.get(field) for row in store.rows(doctype)}
