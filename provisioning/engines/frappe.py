"""A client for the Frappe REST API (v1), on ``requests``.

One :class:`requests.Session` per connection (connection pooling, the token header set once), connect and read
timeouts on every call, and every failure turned into the engine error family, classified by HTTP status and Frappe
``exc_type`` (see ``shared/erpnext-recordings/README.md`` for what a real ERPNext v15 answers):

=====================================================  ==================================================
what came back                                         raised
=====================================================  ==================================================
502 / 503 / 504, other 5xx but 500, 429                EngineTransientError (``Retry-After`` kept)
timeout, connection refused / reset                    EngineTransientError
500 with a deadlock / lock-wait / query timeout        EngineTransientError
any other 500 (JSONDecodeError, AttributeError, ...)   EngineBadRequestError: our request is wrong, never retried
401 / 403                                              EngineAuthError
404                                                    EngineNotFoundError
409                                                    EngineConflictError (``exc_type`` kept: duplicate vs overlap)
417                                                    EngineValidationError, except a Company create that
                                                       lost the concurrent-creation race: EngineTransientError
=====================================================  ==================================================

Messages are the engine's human message, decoded from ``_server_messages`` (a JSON string holding a list of JSON
strings, possibly several, with HTML), never the server traceback (``exc``) and never a credential.
"""

from __future__ import annotations

import email.utils
import html
import json
import logging
import re
import threading
import time
from typing import Any
from urllib.parse import quote

import requests

from provisioning.engines.errors import (
    EngineAuthError,
    EngineBadRequestError,
    EngineConflictError,
    EngineError,
    EngineNotFoundError,
    EngineTransientError,
    EngineValidationError,
    concurrent_company_error,
)

logger = logging.getLogger("moran.engines.frappe")

#: rows per request when listing everything (``limit=0``); Frappe's own default page is 20.
PAGE_LENGTH = 500
#: 500s that are the database's momentary trouble, not our request's fault.
TRANSIENT_EXC_TYPES = {"QueryDeadlockError", "QueryTimeoutError", "LockWaitTimeoutError", "TimestampMismatchError"}
TRANSIENT_500_TEXT = re.compile(r"deadlock|lock wait timeout|query timeout|too many connections", re.IGNORECASE)
#: a warning Frappe sends along with the real error ("No Roles Specified"); dropped when a real one is there.
SOFT_INDICATORS = {"orange", "yellow", "blue", "green"}
_TAGS = re.compile(r"<[^>]+>")


def strip_html(text: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(_TAGS.sub(" ", text))).strip()


def server_messages(body: dict) -> list[str]:
    """The human messages of a Frappe error body: ``_server_messages`` decoded twice, HTML stripped."""
    raw = body.get("_server_messages")
    if not raw:
        return []
    try:
        items = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return [strip_html(str(raw))]
    messages, soft = [], []
    for item in items if isinstance(items, list) else [items]:
        try:
            decoded = json.loads(item) if isinstance(item, str) else item
        except ValueError:
            decoded = item
        if isinstance(decoded, dict):
            text = strip_html(str(decoded.get("message", "")))
            (soft if decoded.get("indicator") in SOFT_INDICATORS else messages).append(text)
        else:
            messages.append(strip_html(str(decoded)))
    return [m for m in (messages or soft) if m]


def _exception_line(body: dict) -> str:
    """The last line of the traceback (``exception``), without the module path: 'AttributeError: ...'."""
    line = str(body.get("exception") or "").strip().splitlines()[-1:] or [""]
    head, sep, rest = line[0].partition(": ")
    return f"{head.rsplit('.', 1)[-1]}{sep}{strip_html(rest)}" if sep else head.rsplit(".", 1)[-1]


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:  # delta-seconds (an integer by the RFC; a decimal is read too)
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class FrappeClient:
    """Calls to one Frappe site. Thread-safe for use by one process (``requests.Session`` pools connections)."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        api_key: str,
        api_secret: str,
        verify_tls: bool = True,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ):
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self._secret = api_secret  # kept only to scrub it from any text that might echo it
        self.session = requests.Session()
        self.session.verify = verify_tls
        self.session.headers.update({"Authorization": f"token {api_key}:{api_secret}", "Accept": "application/json"})

    def __repr__(self):
        return f"<FrappeClient {self.name} {self.base_url}>"

    def close(self):
        self.session.close()

    # --- the API ---------------------------------------------------------------------------------------------
    def call(self, method: str, *, http_method: str = "GET", **params: Any) -> Any:
        """``/api/method/<method>``; returns its ``message``. Dict and list parameters are sent JSON-encoded."""
        path = f"/api/method/{method}"
        if http_method == "GET":
            body = self._request("GET", path, params=_encode(params))
        else:
            body = self._request(http_method, path, json_body=params)
        return body.get("message")

    def get_doc(self, doctype: str, name: str) -> dict:
        return self._request("GET", _doc_path(doctype, name))["data"]

    def get_list(
        self,
        doctype: str,
        *,
        filters: Any = None,
        fields: list[str] | None = None,
        order_by: str | None = None,
        limit: int = 0,
        page_length: int = PAGE_LENGTH,
    ) -> list[dict]:
        """Rows of a doctype. ``limit=0`` pages through all of them (``limit_start`` / ``limit_page_length``);
        without an ``order_by`` the REST list sends no ORDER BY, so paging orders by name to stay stable."""
        params = {"fields": fields or ["name"]}
        # Qualified as Frappe itself writes it, so that a child-table filter's join leaves it unambiguous.
        by_name = f"`tab{doctype}`.`name` asc"
        if filters:
            params["filters"] = filters
        if limit:
            params.update(limit_page_length=limit, order_by=order_by or by_name)
            return self._request("GET", _doc_path(doctype), params=_encode(params))["data"]
        params["order_by"] = order_by or by_name
        rows: list[dict] = []
        while True:
            page = self._request(
                "GET",
                _doc_path(doctype),
                params=_encode({**params, "limit_start": len(rows), "limit_page_length": page_length}),
            )["data"]
            rows.extend(page)
            if len(page) < page_length:
                return rows

    def insert(self, doctype: str, doc: dict) -> dict:
        try:
            return self._request("POST", _doc_path(doctype), json_body=doc)["data"]
        except EngineValidationError as exc:
            classified = concurrent_company_error(doctype, exc)
            if classified is exc:
                raise
            raise classified from None

    def update(self, doctype: str, name: str, changes: dict) -> dict:
        return self._request("PUT", _doc_path(doctype, name), json_body=changes)["data"]

    def delete(self, doctype: str, name: str) -> None:
        self._request("DELETE", _doc_path(doctype, name))

    # --- transport and error mapping ------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, params=None, json_body=None) -> dict:
        url = self.base_url + path
        started = time.monotonic()
        try:
            response = self.session.request(method, url, params=params, json=json_body, timeout=self.timeout)
        except requests.exceptions.SSLError:
            raise EngineError(
                f"engine '{self.name}': TLS verification failed for {self.base_url}", exc_type="TLSError"
            ) from None
        except requests.exceptions.ConnectTimeout:
            raise EngineTransientError(
                f"engine '{self.name}' did not accept a connection within {self.timeout[0]:g} s ({self.base_url})",
                exc_type="Timeout",
            ) from None
        except requests.exceptions.Timeout:
            raise EngineTransientError(
                f"engine '{self.name}' did not answer {method} {path} within {self.timeout[1]:g} s",
                exc_type="Timeout",
            ) from None
        except requests.exceptions.ConnectionError:
            raise EngineTransientError(
                f"engine '{self.name}' is unreachable at {self.base_url} (connection failed)",
                exc_type="ConnectionError",
            ) from None
        except requests.exceptions.RequestException as exc:
            raise EngineBadRequestError(
                f"engine '{self.name}': the request could not be sent ({type(exc).__name__})"
            ) from None
        elapsed_ms = (time.monotonic() - started) * 1000
        logger.debug("%s %s %s -> %s in %.0f ms", self.name, method, path, response.status_code, elapsed_ms)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code < 300:
            if isinstance(body, dict):
                return body
            raise EngineBadRequestError(
                f"engine '{self.name}' answered {method} {path} with something that is not Frappe's JSON "
                f"(HTTP {response.status_code}): is {self.base_url} an ERPNext site?",
                status=response.status_code,
            )
        raise self._error(response, body)

    def _error(self, response: requests.Response, body: Any) -> EngineError:
        status = response.status_code
        body = body if isinstance(body, dict) else {}
        exc_type = body.get("exc_type") or None
        messages = server_messages(body) or (
            [strip_html(str(body["_error_message"]))] if body.get("_error_message") else []
        )
        detail = "; ".join(messages)
        if not detail and body.get("exception") and status >= 500:
            detail = _exception_line(body)
        if not detail and not body:
            detail = f"HTTP {status} {response.reason or ''}".strip() + " (not a JSON response)"
        detail = self._scrub(detail or (f"{exc_type} (HTTP {status})" if exc_type else f"HTTP {status}"))
        where = f"engine '{self.name}'"
        kwargs = {"status": status, "exc_type": exc_type}
        if status in (401, 403):
            if status == 401:
                message = f"{where} refused the credentials (check the API key and secret of the connection)"
            else:
                message = f"{where} refused access: {detail}"
            return EngineAuthError(message, **kwargs)
        if status == 404:
            return EngineNotFoundError(detail, **kwargs)
        if status == 409:
            return EngineConflictError(detail, **kwargs)
        if status == 417:
            return EngineValidationError(detail, **kwargs)
        if status == 429:
            return EngineTransientError(
                f"{where} is rate limiting requests: {detail}",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                **{**kwargs, "exc_type": exc_type or "TooManyRequests"},
            )
        if status == 500:
            text = f"{exc_type or ''} {body.get('exception') or ''}"
            if exc_type in TRANSIENT_EXC_TYPES or TRANSIENT_500_TEXT.search(text):
                return EngineTransientError(f"{where} had a database conflict: {detail}", **kwargs)
            return EngineBadRequestError(f"{where} could not process the request: {detail}", **kwargs)
        if status >= 500:
            return EngineTransientError(
                f"{where} is unavailable (HTTP {status}): {detail}",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                **{**kwargs, "exc_type": exc_type or "EngineUnavailable"},
            )
        return EngineBadRequestError(f"{where} rejected the request (HTTP {status}): {detail}", **kwargs)

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text


def _doc_path(doctype: str, name: str | None = None) -> str:
    path = f"/api/resource/{quote(doctype, safe='')}"
    return path if name is None else f"{path}/{quote(str(name), safe='')}"


def _encode(params: dict) -> dict:
    """Query parameters as Frappe reads them: dicts and lists JSON-encoded, None dropped."""
    return {
        key: json.dumps(value) if isinstance(value, (dict, list, tuple)) else value
        for key, value in params.items()
        if value is not None
    }


_clients: dict[tuple, FrappeClient] = {}
_clients_lock = threading.Lock()


def client_for(connection) -> FrappeClient:
    """The process's client (and so its pooled session) for a connection; a changed connection gets a new one."""
    key = (
        connection.pk,
        connection.name,
        connection.base_url,
        connection.api_key,
        hash(connection.api_secret),
        connection.verify_tls,
        connection.connect_timeout,
        connection.read_timeout,
    )
    if connection.pk is None:  # a connection being checked before it is saved: no cache entry to leak
        return _new_client(connection)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = _new_client(connection)
        return client


def _new_client(connection) -> FrappeClient:
    return FrappeClient(
        name=connection.name,
        base_url=connection.base_url,
        api_key=connection.api_key,
        api_secret=connection.api_secret,
        verify_tls=connection.verify_tls,
        connect_timeout=connection.connect_timeout,
        read_timeout=connection.read_timeout,
    )
