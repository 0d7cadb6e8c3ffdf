"""An in-memory store for the ERPNext emulator: the Frappe-compatible test server's, and unit tests'.

The sandbox engine keeps its site in the database (``provisioning.engines.sandbox.DatabaseStore``); this one lives in
the test process, thread-safe, for a server answering from several threads.
"""

from __future__ import annotations

import json
import threading

from provisioning.engines.emulator import DuplicateName


class MemoryStore:
    """A thread-safe in-memory store, for the HTTP test server and unit tests."""

    def __init__(self):
        self._docs: dict[str, dict[str, dict]] = {}  # doctype -> name -> document
        self._lock = threading.Lock()
        # One writer at a time inside atomic(), as a database's row locks would have it.
        self._atomic = threading.RLock()

    def get(self, doctype, name):
        with self._lock:
            doc = self._docs.get(doctype, {}).get(name)
            return json.loads(json.dumps(doc)) if doc is not None else None

    def add(self, doctype, name, doc):
        with self._lock:
            docs = self._docs.setdefault(doctype, {})
            if name in docs:
                raise DuplicateName(name)
            docs[name] = json.loads(json.dumps(doc))

    def put(self, doctype, name, doc):
        with self._lock:
            self._docs.setdefault(doctype, {})[name] = json.loads(json.dumps(doc))

    def remove(self, doctype, name):
        with self._lock:
            return self._docs.get(doctype, {}).pop(name, None) is not None

    def rows(self, doctype, match=None):
        with self._lock:
            docs = [
                d
                for d in self._docs.get(doctype, {}).values()
                if all(d.get(field) == value for field, value in (match or {}).items())
            ]
            return json.loads(json.dumps(docs))

    def names(self) -> list[tuple[str, str]]:
        """Every (doctype, name) held, for "nothing was created twice" assertions."""
        with self._lock:
            return sorted((doctype, name) for doctype, docs in self._docs.items() for name in docs)

    def atomic(self):
        return self._atomic

    def lock_site(self):
        pass  # atomic() already lets one writer in at a time
