"""Where the emulator keeps its documents: the protocol every store implements."""

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
