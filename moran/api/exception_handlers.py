"""Errors as JSON, everywhere under /api/: one handler maps the domain errors (``moran.errors``) and DRF's own
exceptions to a status and a body of one shape::

    {"error": "<code>", "detail": "<message for people>", "fields": {"<field>": ["<message>", ...]}}

(``fields`` only with field errors). Django's 404 and 500 pages are replaced for /api/ paths by the same shape.
"""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, JsonResponse
from django.views import csrf, defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from moran.errors import DomainError

logger = logging.getLogger("moran.api")

API_PREFIX = "/api/"


def api_exception_handler(exc, context):
    if isinstance(exc, DomainError):
        response = Response(exc.as_dict(), status=exc.http_status)
        if exc.http_status == 401:  # a 401 names the scheme to use (RFC 9110)
            response["WWW-Authenticate"] = 'Bearer realm="api"'
        return response
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    # DRF's handler sets the headers (WWW-Authenticate, Retry-After) and returns None for anything unexpected, which
    # then reaches Django's 500 handler below (logged with its traceback, answered without one).
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    response.data = _body(exc)
    return response


def _body(exc: exceptions.APIException) -> dict:
    code = exc.default_code
    if isinstance(exc, exceptions.ValidationError):
        fields = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        fields = {name: _messages(value) for name, value in fields.items()}
        summary = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in fields.items())
        return {"error": "invalid", "detail": f"Invalid input: {summary}", "fields": fields}
    detail = exc.detail
    if isinstance(detail, (list, dict)):
        detail = " ".join(_messages(detail))
    return {"error": code, "detail": str(detail)}


def _messages(value) -> list[str]:
    if isinstance(value, dict):
        return [f"{key}: {message}" for key, inner in value.items() for message in _messages(inner)]
    if isinstance(value, list):
        return [message for item in value for message in _messages(item)]
    return [str(value)]


def _is_api(request) -> bool:
    return request.path.startswith(API_PREFIX) or request.path == API_PREFIX.rstrip("/")


def handler404(request, exception=None):
    if _is_api(request):
        return api_not_found(request)
    return defaults.page_not_found(request, exception)


def handler500(request):
    if _is_api(request):
        return JsonResponse(
            {"error": "server_error", "detail": "Internal server error; see the server log"}, status=500
        )
    return defaults.server_error(request)


# Exempt: the API authenticates with Bearer tokens, never cookies, so CSRF does not apply to it; without the
# exemption an unknown URL answered a POST with Django's HTML "CSRF verification failed" page instead of a 404.
@csrf_exempt
def api_not_found(request, *args, **kwargs):
    """Any URL under /api/ that no endpoint answers (whatever the method)."""
    return JsonResponse(
        {"error": "not_found", "detail": f"No API endpoint at {request.path}; the endpoints are listed at /api/docs/"},
        status=404,
    )


def csrf_failure(request, reason=""):
    """Django's CSRF failure page, as JSON under /api/."""
    if _is_api(request):
        return JsonResponse({"error": "csrf_failed", "detail": "CSRF verification failed"}, status=403)
    return csrf.csrf_failure(request, reason=reason)
