"""A progress table for the management commands: redrawn in place on a terminal (rich), plain lines otherwise.

Piped output, a log file and CI get one line per change, so scripts and tests can read them; a person at a terminal
gets a table that updates where it stands. Both are fed by the same calls::

    display = LiveTable(self.stdout, columns=("#", "step", "status"), title="acme")
    with display:
        display.update("step_1_company", ("2/10", "step_1_company", "running"), line="[ 2/10] step_1_company running")

``update`` may be called from any thread (the commands' watchers poll in one of their own).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

# Cell text → style on a terminal; anything else is shown as it is.
STATUS_STYLES = {
    "completed": "green",
    "COMPLETED": "bold green",
    "skipped": "dim",
    "running": "yellow",
    "retrying": "yellow",
    "IN_PROGRESS": "yellow",
    "failed": "red",
    "FAILED": "bold red",
    "PARTIAL": "bold red",
    "CANCELLED": "magenta",
    "pending": "dim",
    "PENDING": "dim",
}


def interactive(stream) -> bool:
    """A person is watching: ``stream`` is a terminal, and this is not CI (which sets ``CI=true``) or a dumb terminal."""
    if os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}:
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class LiveTable:
    """Rows keyed by name. On a terminal they are drawn as one table, redrawn on each update; otherwise each update
    that carries a ``line`` prints that line, and nothing else is written."""

    def __init__(self, out, *, columns: Sequence[str], title: str | None = None, terminal: bool | None = None):
        self.out = out
        self.columns = tuple(columns)
        self.title = title
        # Django's OutputWrapper adds a newline to every write; rich needs the raw stream under it.
        self._stream = getattr(out, "_out", out)
        # None: decide from the stream and the environment (see interactive()).
        self.interactive = interactive(self._stream) if terminal is None else terminal
        self._rows: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()
        self._live: Live | None = None

    def start(self) -> LiveTable:
        if self.interactive and self._live is None:
            console = Console(file=self._stream, force_terminal=True)
            self._live = Live(console=console, get_renderable=self._render, refresh_per_second=8, transient=False)
            self._live.start()
        return self

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()  # draws the last state once more and leaves it on the screen
            self._live = None

    def __enter__(self) -> LiveTable:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def update(self, key: str, cells: Sequence[str], *, line: str | None = None) -> None:
        """Set row ``key`` to ``cells``; ``line`` is what a non-terminal sees of this change (None: nothing)."""
        with self._lock:
            self._rows[key] = tuple(str(cell) for cell in cells)
        if self._live is not None:
            self._live.refresh()
        elif line is not None and not self.interactive:
            self.out.write(line + "\n")  # Django's OutputWrapper adds no second newline

    def _render(self) -> Table:
        table = Table(title=self.title, title_justify="left", expand=False)
        for column in self.columns:
            table.add_column(column)
        with self._lock:
            rows = list(self._rows.values())
        for cells in rows:
            # Text, not markup: cell text is data (engine messages, names) and may hold brackets.
            table.add_row(*(Text(cell, style=STATUS_STYLES.get(cell, "")) for cell in cells))
        return table
