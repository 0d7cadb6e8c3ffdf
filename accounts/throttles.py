"""Log-in throttles against password guessing: per client address and per email.

Each counts in Django's cache (settings: Redis when there is one, so every web process shares the count) with one
atomic increment per attempt — ``add`` opens a window with its expiry, ``incr`` counts in it (Redis INCR) — so parallel
attempts cannot all read the same old count and all pass, as a read-then-write history would let them.

The address is the connection's, or the one our own proxies put in X-Forwarded-For when ``MORAN_NUM_PROXIES`` says
there are some; the email is counted in its canonical form, so case and look-alike spellings share one counter.
"""

from __future__ import annotations

import hashlib
import time

from django.core.cache import cache
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

from accounts.emails import email_canonical

PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class AtomicRateThrottle(BaseThrottle):
    """``scope`` names the rate in ``DEFAULT_THROTTLE_RATES`` ("5/min"); a fixed window opens at the first attempt."""

    scope = ""

    def __init__(self):
        count, period = api_settings.DEFAULT_THROTTLE_RATES[self.scope].split("/")
        self.num_requests = int(count)
        self.duration = PERIODS[period[0]]
        self.retry_after: float | None = None

    def ident(self, request) -> str | None:
        raise NotImplementedError

    def allow_request(self, request, view) -> bool:
        ident = self.ident(request)
        if ident is None:
            return True
        key = f"throttle:{self.scope}:{ident}"
        for _ in range(3):
            cache.add(f"{key}:start", time.time(), self.duration)
            cache.add(key, 0, self.duration)
            try:
                count = cache.incr(key)
                break
            except ValueError:  # the window expired between add and incr: open the next one
                continue
        else:
            count = self.num_requests + 1  # the cache keeps losing the key: refuse rather than count nothing
        if count <= self.num_requests:
            return True
        started = cache.get(f"{key}:start") or time.time()
        self.retry_after = max(1.0, self.duration - (time.time() - started))
        return False

    def wait(self):
        return self.retry_after


class LoginAddressThrottle(AtomicRateThrottle):
    scope = "login_address"

    def ident(self, request):
        # BaseThrottle.get_ident trusts X-Forwarded-For only as far as NUM_PROXIES (0: not at all).
        return self.get_ident(request) or "unknown"


class LoginEmailThrottle(AtomicRateThrottle):
    """Guessing one account's password from many addresses is still limited."""

    scope = "login_email"

    def ident(self, request):
        email = request.data.get("email") if hasattr(request.data, "get") else None
        if not isinstance(email, str) or not email.strip():
            return None  # nothing to count: the input serializer refuses it anyway
        # A digest: no address in cache keys. surrogatepass: any string hashes, whatever reached this far.
        return hashlib.sha256(email_canonical(email).encode("utf-8", "surrogatepass")).hexdigest()[:32]
