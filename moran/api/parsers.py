"""The API's JSON parser: DRF's, with the limits a public endpoint needs.

* a body past ``MORAN_MAX_JSON_BODY`` bytes is refused (413) before it is read into memory, whether or not it says
  its length;
* nesting too deep for the parser is a 400, not a RecursionError;
* a string holding an unpaired surrogate (``"\\ud800"``: valid JSON, not valid Unicode text) is a 400: such a string
  cannot be encoded, hashed, logged or stored, and would fail later in a place that answers 500.
"""

from __future__ import annotations

import json

from django.conf import settings
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser


class RequestTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"
    default_detail = "Request body too large"


class StrictJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.MORAN_MAX_JSON_BODY
        request = (parser_context or {}).get("request")
        declared = _declared_length(request)
        if declared is not None and declared > limit:
            raise RequestTooLarge(f"Request body too large: the limit is {limit} bytes (MORAN_MAX_JSON_BODY)")
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise RequestTooLarge(f"Request body too large: the limit is {limit} bytes (MORAN_MAX_JSON_BODY)")
        try:
            text = raw.decode((parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET)
            data = json.loads(text, parse_constant=_refuse_constant)
        except RecursionError:
            raise ParseError("JSON parse error: nested too deeply") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise ParseError(f"JSON parse error: {exc}") from None
        except LookupError:  # a charset Python knows, but not as a text encoding (rot13, zlib...)
            raise ParseError("JSON parse error: the request's charset is not a text encoding") from None
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ParseError("JSON parse error: a string holds an unpaired surrogate (\\ud800-\\udfff)") from None
        except RecursionError:
            raise ParseError("JSON parse error: nested too deeply") from None
        return data


def _declared_length(request) -> int | None:
    if request is None:
        return None
    try:
        return int(request.META.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


def _refuse_constant(name: str):
    # NaN and Infinity are not JSON (RFC 8259); Python accepts them by default.
    raise ValueError(f"{name} is not valid JSON")
