"""A Frappe-compatible HTTP server for tests: the ERPNext emulator over a MemoryStore, behind the REST API (v1 and
v2) rendered the way ERPNext v15 renders it (see ``shared/erpnext-recordings``; ``tests/test_frappe_server_replay.py``
replays every recorded exchange against it).

It listens on 127.0.0.1 on a free port, in a thread of the test process, so a Celery worker subprocess reaches it
through the URL of an EngineConnection row, while the test drives its faults through this Python handle:

* ``inject(status=503, times=3, doctype="Warehouse")``: the next matching requests fail (``times=None``: always);
* ``latency``: seconds to wait before each answer (read timeouts);
* ``company_latency``: what a Company create costs when it runs alone (a real one: about 2.5 s); concurrent creates
  take longer each, and one that overlaps a create that commits first fails with the 417 ``LinkValidationError`` of
  ``14-concurrent-company-creates.json``, unless the creates are serialized;
* ``recorded_latency``: answer every call about as slowly as the recorded site did (``10-timings-second-tenant``),
  times this factor (0: off);
* ``stop()``: refuse connections from then on (closing kept-alive ones too).

``requests`` records what each request was, what it got, and when it started and ended (``time.monotonic()``), for
"nothing was created twice" and "never two at once" assertions.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from provisioning.engines.emulator import ERPNextEmulator
from provisioning.engines.errors import EngineBadRequestError, EngineError
from tests.support.memory_store import MemoryStore

# A copy of shared/erpnext-recordings, kept with the tests so that a fresh clone (CI) replays them too.
RECORDINGS = Path(os.environ.get("MORAN_ERPNEXT_RECORDINGS") or Path(__file__).resolve().parent / "erpnext_recordings")

#: the recorded lab site: the setup wizard's company, and the all-company fiscal year.
LAB_COMPANY = {"company_name": "Lab Co", "abbr": "LC", "default_currency": "USD", "country": "United States"}

GUEST_METHODS = {"ping"}
#: callables that exist but are not whitelisted: 403, not the 417 of an unknown method.
NOT_WHITELISTED = {"frappe.get_doc", "frappe.get_list", "frappe.get_all", "frappe.db.sql", "frappe.get_value"}
#: errors raised by ERPNext's own code carry ``_exc_source``; framework errors (links, mandatory, names) do not.
ERPNEXT_RAISED = re.compile(
    r"^(Date .* is not in any active Fiscal Year|Year start date or end date is overlapping|Fiscal Year End Date should"
    r"|Fiscal Year Start Date and Fiscal Year End Date are already set|Cannot change Fiscal Year Start Date"
    r"|Abbreviation already used|Please enter parent cost center|.* is not a group node|Price List must be applicable"
    r"|'NoneType' object has no attribute 'endswith'|Could not find Row #\d+: Default Account)"
)
EXCEPTION_MODULES = {
    "FiscalYearError": "erpnext.accounts.utils.",
    "JSONDecodeError": "json.decoder.",
    "AttributeError": "",
    "TypeError": "",
    "KeyError": "",
    "ImportError": "",
}
#: seconds the recorded site took per call (the median of its kind in 10-timings-second-tenant; the company create
#: is ``company_latency``): (HTTP method, doctype or None for methods) -> seconds, then per HTTP method.
RECORDED_LATENCY = {
    ("POST", "User"): 0.53,
    ("PUT", "User"): 0.3,
    ("GET", "Company"): 0.13,
    ("POST", None): 0.12,
    ("PUT", None): 0.12,
    ("DELETE", None): 0.15,
    ("GET", None): 0.03,
}
DUPLICATE = re.compile(r"^(?P<doctype>[A-Za-z ]+?) (?P<name>.+) already exists$")


@dataclass
class Fault:
    status: int
    times: int | None = 1
    doctype: str | None = None
    method: str | None = None
    path_contains: str | None = None
    exc_type: str | None = None
    message: str | None = None
    retry_after: str | None = None

    def matches(self, method: str, path: str, doctype: str | None) -> bool:
        return (
            (self.times is None or self.times > 0)
            and (self.method is None or self.method == method)
            and (self.doctype is None or self.doctype == doctype)
            and (self.path_contains is None or self.path_contains in path)
        )


@dataclass
class Seen:
    method: str
    path: str
    doctype: str | None
    status: int
    body: object = field(default=None, repr=False)
    started: float = 0.0
    ended: float = 0.0


class Reply(Exception):
    """A finished response, raised from deep in the routing."""

    def __init__(self, status: int, body, headers: dict | None = None, content_type: str = "application/json"):
        self.status, self.body, self.headers, self.content_type = status, body, headers or {}, content_type


def _elided(lines: int = 30) -> str:
    return f"<traceback elided: {lines} lines>"


def _server_messages(*messages: dict) -> str:
    return json.dumps([json.dumps(m) for m in messages])


def _message(text: str, *, title: str = "Message", exc_type: str = "") -> dict:
    if exc_type == "MandatoryError":  # Frappe sends the missing-value message without an indicator
        return {"message": text, "title": title}
    return {
        "message": text,
        "title": title,
        "indicator": "red",
        "raise_exception": 1,
        "__frappe_exc_id": secrets.token_hex(28),
    }


class FrappeTestServer:
    def __init__(
        self,
        *,
        today: dt.date | None = None,
        default_company: dict | None = None,
        fiscal_years: tuple[str, ...] | None = None,
        api_key: str = "moran-test-key",
        api_secret: str | None = None,
        company_latency: float = 0.0,
        recorded_latency: float = 0.0,
    ):
        today = today or dt.date.today()
        self.api_key = api_key
        self.api_secret = api_secret or "sEcReT-" + secrets.token_hex(12)
        # "key:secret" of the site's other users (user_token), who read the site as themselves.
        self.user_keys: dict[str, str] = {}
        self.emulator = ERPNextEmulator(
            MemoryStore(),
            today=today,
            default_company=default_company or LAB_COMPANY,
            fiscal_years=(str(today.year),) if fiscal_years is None else fiscal_years,
            company_latency=company_latency,
        )
        self.faults: list[Fault] = []
        self.latency = 0.0
        self.recorded_latency = recorded_latency
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._sockets: set[socket.socket] = set()
        self.port: int | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FrappeTestServer:
        app = self

        class Handler(_Handler):
            server_app = app

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def get_request(self):
                sock, addr = super().get_request()
                with app._lock:
                    app._sockets.add(sock)
                return sock, addr

            def shutdown_request(self, request):
                with app._lock:
                    app._sockets.discard(request)
                super().shutdown_request(request)

        self._httpd = Server(("127.0.0.1", self.port or 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="frappe-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop kept-alive connections: the next request is refused."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._sockets.clear()
        self._httpd = None

    def user_token(self, user: str) -> str:
        """An ``Authorization`` header value with which requests act as ``user`` (an API key of that user)."""
        credential = f"key-{secrets.token_hex(4)}:{secrets.token_hex(8)}"
        with self._lock:
            self.user_keys[credential] = user
        return f"token {credential}"

    # --- fault controls ----------------------------------------------------------------------------------------
    def inject(self, status: int, *, times: int | None = 1, **match) -> Fault:
        fault = Fault(status=status, times=times, **match)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()
        self.latency = 0.0

    def _take_fault(self, method, path, doctype) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path, doctype):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    # --- what happened -----------------------------------------------------------------------------------------
    def writes(self, method: str = "POST", doctype: str | None = None, status: int | None = 200) -> list[Seen]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == method
                and (doctype is None or r.doctype == doctype)
                and (status is None or r.status == status)
            ]

    def docs(self, doctype: str) -> list[dict]:
        return self.emulator.store.rows(doctype)

    # --- request handling --------------------------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers, body: bytes) -> tuple[int, bytes, dict, str]:
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        version = 1
        if path.startswith("/api/v1/"):
            path = "/api/" + path[len("/api/v1/") :]
        elif path.startswith("/api/v2/"):
            version, path = 2, "/api/" + path[len("/api/v2/") :]
        segments = path.split("/", 4)  # "", "api", "resource"|"method"|"document", doctype|method, name
        doctype = segments[3] if len(segments) > 3 and segments[2] in ("resource", "document") else None
        started = time.monotonic()
        if self.latency:
            time.sleep(self.latency)
        if self.recorded_latency and not (method == "POST" and doctype == "Company"):
            pause = RECORDED_LATENCY.get((method, doctype)) or RECORDED_LATENCY.get((method, None), 0.0)
            time.sleep(pause * self.recorded_latency)
        try:
            fault = self._take_fault(method, path, doctype)
            if fault is not None:
                raise self._fault_reply(fault, version)
            user = self._authenticate(headers.get("Authorization"), version)
            status, payload = self._route(method, segments, query, headers, body, user, version)
            reply = Reply(status, payload)
        except Reply as r:
            reply = r
        except EngineError as exc:
            reply = self._error_reply(exc, method, version)
        with self._lock:
            self.requests.append(Seen(method, path, doctype, reply.status, reply.body, started, time.monotonic()))
        data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        return reply.status, data, reply.headers, reply.content_type

    def _authenticate(self, header: str | None, version: int) -> str | None:
        """The user, or None for Guest. A header of three parts is ignored (Guest), as Frappe does."""
        if not header:
            return None
        parts = header.split()
        if len(parts) != 2:
            return None
        scheme, value = parts[0].lower(), parts[1]
        if scheme == "basic":
            try:
                value = base64.b64decode(value).decode()
            except ValueError:
                value = ""
        if scheme in ("token", "basic") and value == f"{self.api_key}:{self.api_secret}":
            return "Administrator"
        if scheme in ("token", "basic") and value in self.user_keys:
            return self.user_keys[value]
        if scheme in ("token", "basic", "bearer"):
            if version == 2:
                raise Reply(401, {"errors": [{"type": "AuthenticationError", "exception": _elided(10)}]})
            raise Reply(
                401,
                {
                    "exception": "frappe.exceptions.AuthenticationError",
                    "exc_type": "AuthenticationError",
                    "exc": _elided(10),
                },
            )
        return None

    def _route(self, method, segments, query, headers, body, user, version):
        kind = segments[2] if len(segments) > 2 else ""
        if kind == "method" and len(segments) > 3:
            return 200, self._method(method, "/".join(segments[3:]), query, headers, body, user, version)
        resource_kind = "document" if version == 2 else "resource"
        if kind != resource_kind or len(segments) < 4:
            raise EngineError("Not found", status=404, exc_type="DoesNotExistError")
        doctype, name = segments[3], (segments[4] if len(segments) > 4 else None)
        if user is None:
            raise self._guest_reply(method, doctype, name)
        site = self.emulator if user == "Administrator" else self.emulator.acting_as(user)
        if name is None:
            if method == "GET":
                return 200, self._wrap(self._list(doctype, query, site), version)
            if method == "POST":
                return 200, self._wrap(site.insert(doctype, self._body(headers, body)), version)
        else:
            if method == "GET":
                return 200, self._wrap(site.get_doc(doctype, name), version)
            if method == "PUT":
                changes = self._body(headers, body)
                if not isinstance(changes, dict):
                    raise EngineBadRequestError(
                        "'list' object has no attribute 'items'", status=500, exc_type="TypeError"
                    )
                return 200, self._wrap(site.update(doctype, name, changes), version)
            if method == "DELETE":
                site.delete(doctype, name)
                return 202, {"data": "ok"}
            if method == "POST":
                raise EngineBadRequestError("'run_method'", status=500, exc_type="KeyError")
        raise EngineError("Not found", status=404, exc_type="DoesNotExistError")

    @staticmethod
    def _wrap(data, version):
        return {"data": data}

    def _list(self, doctype, query, site):
        def cint(value, default):
            if value is None:
                return default
            try:
                return int(value)
            except ValueError:
                return 0  # Frappe's cint: "abc" is 0, and 0 means every row

        return site.get_list(
            doctype,
            filters=query.get("filters"),
            fields=query.get("fields"),
            order_by=query.get("order_by"),
            start=cint(query.get("limit_start"), 0),
            limit=cint(query.get("limit_page_length", query.get("limit")), 20),
        )

    def _method(self, http_method, name, query, headers, body, user, version):
        if user is None and name not in GUEST_METHODS or name in NOT_WHITELISTED:
            text = (
                "<details><summary>You are not permitted to access this resource. Login to access</summary>"
                f"Function <strong>{name}</strong> is not whitelisted.</details>"
            )
            raise EngineError(text, status=403, exc_type="PermissionError")
        if name.split(".")[0] not in ("frappe", "erpnext", "ping"):
            app = name.split(".")[0]
            raise Reply(
                417,
                self._error_body(
                    "ValidationError",
                    f"Failed to get method for command {name} with App {app} is not installed",
                    extra_messages=[f"App {app} is not installed"],
                ),
            )
        params = dict(query)
        if http_method == "POST":
            parsed = self._body(headers, body)
            if isinstance(parsed, dict):
                params.update(parsed)
        result = self.emulator.call(name, **params)
        return {"data": result} if version == 2 else {"message": result}

    @staticmethod
    def _body(headers, body: bytes):
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        text = body.decode() if body else ""
        if content_type == "application/json":
            try:
                return json.loads(text) if text else {}
            except json.JSONDecodeError as exc:
                raise EngineBadRequestError(str(exc), status=500, exc_type="JSONDecodeError") from None
        if content_type == "application/x-www-form-urlencoded":
            form = dict(parse_qsl(text, keep_blank_values=True))
            if "data" in form:
                try:
                    return json.loads(form["data"])
                except json.JSONDecodeError as exc:
                    raise EngineBadRequestError(str(exc), status=500, exc_type="JSONDecodeError") from None
            return form
        return {}  # Frappe ignores a body it cannot read (text/plain): the document is empty

    # --- rendering errors --------------------------------------------------------------------------------------
    def _error_body(self, exc_type: str, message: str, *, extra_messages=(), duplicate=False) -> dict:
        module = EXCEPTION_MODULES.get(exc_type, "frappe.exceptions.")
        body = {"exception": f"{module}{exc_type}: {message}", "exc_type": exc_type}
        if ERPNEXT_RAISED.match(message):
            body["_exc_source"] = "erpnext (app)"
        body["exc"] = _elided()
        if duplicate:
            match = DUPLICATE.match(message)
            if match:
                message = f"{match['doctype']} <strong>{match['name']}</strong> already exists"
                body["_server_messages"] = _server_messages(
                    {"message": message, "title": "Duplicate Name", "indicator": "red"}
                )
                return body
        body["_server_messages"] = _server_messages(
            *[_message(m, exc_type=exc_type) for m in (*extra_messages, message)]
        )
        return body

    def _error_reply(self, exc: EngineError, method: str, version: int) -> Reply:
        status = exc.status or 500
        if version == 2:
            error = {"type": exc.exc_type}
            if status != 404:
                error["exception"] = _elided()
            if not (status == 404 and method == "DELETE"):
                rendered = _message(exc.message, exc_type=exc.exc_type)
                error.update({k: rendered[k] for k in ("message", "title", "indicator") if k in rendered})
            return Reply(status, {"errors": [error]})
        if status == 404:
            body = {"exc_type": "DoesNotExistError"}
            if method not in ("DELETE", "PATCH"):
                body["_server_messages"] = _server_messages(_message(exc.message))
            return Reply(404, body)
        if status == 500:
            module = EXCEPTION_MODULES.get(exc.exc_type, "frappe.exceptions.")
            prefix = "Error" if exc.exc_type == "ImportError" else f"{module}{exc.exc_type}"
            body = {"exception": f"{prefix}: {exc.message}", "exc_type": exc.exc_type}
            if ERPNEXT_RAISED.match(exc.message):
                body["_exc_source"] = "erpnext (app)"
            body["exc"] = _elided()
            return Reply(500, body)
        duplicate = status == 409 and exc.exc_type == "DuplicateEntryError"
        return Reply(status, self._error_body(exc.exc_type, exc.message, duplicate=duplicate))

    def _guest_reply(self, method, doctype, name) -> Reply:
        message = _server_messages(
            {
                "message": f"User <strong>Guest</strong> does not have doctype access via role permission for document "
                f"<strong>{doctype}</strong>",
                "title": "Message",
            }
        )
        if method == "POST":
            return Reply(
                403,
                {
                    "exc_type": "PermissionError",
                    "_server_messages": message,
                    "_error_message": f"No permission for {doctype}",
                },
            )
        body = {
            "exception": "frappe.exceptions.PermissionError",
            "exc_type": "PermissionError",
            "exc": _elided(),
            "_server_messages": message,
        }
        if name is None:
            body["_error_message"] = f"No permission for {doctype}"
        return Reply(403, body)

    def _fault_reply(self, fault: Fault, version: int) -> Reply:
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        if fault.status < 300:  # a base URL that is a website, not a Frappe site: a page, not JSON
            return Reply(fault.status, b"<html><body>Welcome</body></html>", headers, content_type="text/html")
        if fault.status in (502, 503, 504) and fault.exc_type is None:
            # What a proxy in front of gunicorn answers: an HTML page.
            page = f"<html><body><h1>{fault.status} Service Unavailable</h1></body></html>".encode()
            return Reply(fault.status, page, headers, content_type="text/html")
        exc_type = fault.exc_type or {429: "TooManyRequestsError"}.get(fault.status, "ValidationError")
        message = fault.message or f"injected {fault.status}"
        if fault.status >= 500:
            body = {"exception": f"frappe.exceptions.{exc_type}: {message}", "exc_type": exc_type, "exc": _elided()}
        else:
            body = self._error_body(exc_type, message)
        return Reply(fault.status, body, headers)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The headers and the body go out in two writes: without TCP_NODELAY the client's delayed ACK holds every answer
    # back by ~40 ms.
    disable_nagle_algorithm = True
    server_app: FrappeTestServer

    def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, data, headers, content_type = self.server_app.handle(self.command, self.path, self.headers, body)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass
