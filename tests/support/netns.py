"""A network namespace of one test's own, joined to the host by a veth pair on a /30 of 10.231.0.0/16 that the test
picks: the host side holds ``.1``, the namespace ``.2``. ``cut()`` takes the namespace's side down: whatever the host
sends there is dropped without a FIN or a RST, as when a worker's host vanishes from the network; ``restore()``
brings it back. Processes started with ``prefix()`` live inside. Needs root and ``ip netns``."""

from __future__ import annotations

import os
import random
import secrets
import shutil
import subprocess


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def unavailable() -> str | None:
    """Why a namespace cannot be made here, or None."""
    if os.geteuid() != 0:
        return "a network namespace needs root"
    if not shutil.which("ip") or _ip("netns", "list", check=False).returncode != 0:
        return "a network namespace needs `ip netns` (iproute2)"
    return None


class NetworkNamespace:
    def __init__(self):
        tag = secrets.token_hex(3)
        self.name = f"moran-{tag}"
        self.host_if, self.inner_if = f"mh{tag}", f"mn{tag}"  # interface names stay under 15 characters
        in_use = _ip("-o", "addr").stdout
        while True:
            prefix = f"10.231.{random.randint(0, 255)}."
            base = random.randrange(0, 256, 4)
            if f"inet {prefix}{base + 1}/" not in in_use:
                break
        self.host_addr, self.inner_addr = f"{prefix}{base + 1}", f"{prefix}{base + 2}"
        self.subnet = f"{prefix}{base}/30"

    def create(self):
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.inner_if)
            _ip("link", "set", self.inner_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("-n", self.name, "addr", "add", f"{self.inner_addr}/30", "dev", self.inner_if)
            _ip("-n", self.name, "link", "set", self.inner_if, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise
        return self

    def prefix(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def cut(self):
        # The namespace's side goes down, the host's stays up (without a carrier): the host keeps its route to the
        # /30, so the server's packets to the worker go to the veth and are dropped there, never elsewhere.
        _ip("-n", self.name, "link", "set", self.inner_if, "down")

    def restore(self):
        _ip("-n", self.name, "link", "set", self.inner_if, "up")

    def delete(self):
        _ip("netns", "del", self.name, check=False)
        _ip("link", "del", self.host_if, check=False)
