"""A PostgreSQL cluster of one test's own: ``initdb`` in a temporary directory, on a free port, trust authentication
from 127.0.0.1 (and from the addresses the test names, e.g. its own veth subnet). A test may stop and restart it for
real, which the machine's shared server must never be. Needs root (``initdb`` runs as the ``postgres`` OS user)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from django.db import connection

from tests.support.faultkit import free_port

ROOT = Path(__file__).resolve().parents[2]
OS_USER = "postgres"


def bindir() -> Path | None:
    """The newest installed PostgreSQL's programs (Debian's layout), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def unavailable() -> str | None:
    """Why a private cluster cannot be made here, or None."""
    if os.geteuid() != 0:
        return "a private PostgreSQL cluster needs root (initdb runs as the postgres OS user)"
    if not bindir() or not shutil.which("runuser"):
        return "a private PostgreSQL cluster needs /usr/lib/postgresql/*/bin/initdb and runuser"
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        return f"a private PostgreSQL cluster needs the {OS_USER!r} OS user"
    return None


class PrivatePostgres:
    """``start()``, ``stop()``, ``restart()`` (a real one: the postmaster goes down and every session with it) and
    ``close()`` (stops it and removes every file)."""

    def __init__(self, *, listen: tuple[str, ...] = (), trust: tuple[str, ...] = ()):
        self.port = free_port()
        self.listen = ("127.0.0.1", *listen)
        self.trust = ("127.0.0.1/32", *trust)
        self.dir = Path(tempfile.mkdtemp(prefix="moran-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.bin = bindir()
        shutil.chown(self.dir, OS_USER, OS_USER)

    def _as_postgres(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["runuser", "-u", OS_USER, "--", *args], capture_output=True, text=True, timeout=120, check=check
        )

    def init(self):
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-N")
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.writelines(f"host all all {net} trust\n" for net in self.trust)
        return self

    def _options(self) -> str:
        listen = ",".join(self.listen)
        return f"-p {self.port} -k {self.dir} -c listen_addresses='{listen}' -c max_connections=60"

    def _ctl(self, action: str, *extra: str):
        command = [str(self.bin / "pg_ctl"), action, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60"]
        self._as_postgres(*command, "-o", self._options(), *extra)

    def start(self):
        self._ctl("start")
        return self

    def stop(self, mode: str = "fast"):
        self._as_postgres(str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w", check=False)

    def restart(self, mode: str = "immediate"):
        """Stop the postmaster (``immediate``: no clean shutdown, crash recovery at start, as after a crash or a
        kill of the server) and start it again on the same port."""
        self._ctl("restart", "-m", mode)

    def url(self, name: str, host: str = "127.0.0.1", **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgres://postgres@{host}:{self.port}/{name}" + (f"?{query}" if query else "")

    def create_database(self, name: str):
        """A database with every migration applied (``manage.py migrate`` run against it)."""
        self._as_postgres(str(self.bin / "createdb"), "-h", str(self.dir), "-p", str(self.port), name)
        env = {**os.environ, "DATABASE_URL": self.url(name)}
        migrate = [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"]
        subprocess.run(migrate, cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
        return self

    def close(self):
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def django_connection_to(server: PrivatePostgres, name: str):
    """Point this test process's Django connection at a database of the private cluster for a while (the ORM, the
    fault kit's checks and the sandbox engine's documents then all read it)."""
    keys = ("HOST", "PORT", "NAME")
    saved = {key: connection.settings_dict[key] for key in keys}
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT=str(server.port), NAME=name)
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.update(saved)
