"""``Authorization: Bearer <token>`` for DRF."""

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from accounts.services import token_user


class BearerTokenAuthentication(BaseAuthentication):
    keyword = b"bearer"

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None  # no credentials: IsAuthenticated answers 401 with the WWW-Authenticate header below
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: use 'Bearer <token>'")
        try:
            token = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid token") from None
        user = token_user(token=token)
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid or expired token: log in again")
        return user, token

    def authenticate_header(self, request):
        return 'Bearer realm="api"'
