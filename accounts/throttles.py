"""Log-in throttles against password guessing: per client address and per email. They count in Django's cache
(settings: Redis when there is one, so every web process shares the count)."""

import hashlib

from rest_framework.throttling import SimpleRateThrottle


class LoginAddressThrottle(SimpleRateThrottle):
    scope = "login_address"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class LoginEmailThrottle(SimpleRateThrottle):
    """Guessing one account's password from many addresses is still limited."""

    scope = "login_email"

    def get_cache_key(self, request, view):
        email = request.data.get("email") if hasattr(request.data, "get") else None
        if not isinstance(email, str) or not email.strip():
            return None  # nothing to count: the input serializer refuses it anyway
        ident = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]  # no address in cache keys
        return self.cache_format % {"scope": self.scope, "ident": ident}
