"""Where a webhook may go: a public address, over https, unless the settings allow more.

A tenant chooses its webhook URL, and Moran's workers sit inside the operator's network: a URL pointing at a loopback,
link-local (cloud metadata), private or reserved address would make Moran POST into that network. So a URL is checked
twice: when it is saved (:func:`webhook_url_check`, a clear field error) and at every try, where the host is resolved
once, *every* address it resolves to is checked, and the call connects to the checked address
(:func:`webhook_post`) -- a name that resolves to a public address at save time and to 127.0.0.1 at send time (DNS
rebinding) is refused then.

``WEBHOOK_ALLOWED_NETWORKS`` (CIDRs) names addresses allowed all the same; ``WEBHOOK_ALLOW_HTTP`` allows plain http.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter

DEFAULT_PORTS = {"http": 80, "https": 443}


class WebhookTargetRefused(Exception):
    """The URL is not one a webhook may be sent to; the message says why (and never quotes the URL's secrets)."""


@dataclass(frozen=True)
class Target:
    scheme: str
    hostname: str
    port: int
    address: str  # the checked address the call connects to

    @property
    def where(self) -> str:
        """host:port, for logs and errors: never the user info, path or query, which may hold a token."""
        return f"{self.hostname}:{self.port}"


def allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(cidr.strip(), strict=False) for cidr in settings.WEBHOOK_ALLOWED_NETWORKS if cidr]


def address_refusal(address: str) -> str | None:
    """What kind of address this is when it may not receive a webhook ("loopback", "private", ...), else None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone ("fe80::1%eth0") names no other address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(ip in network for network in allowed_networks()):
        return None
    for kind, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("non-public", not ip.is_global),  # shared (100.64/10), documentation ranges, ...
    ):
        if flag:
            return kind
    return None


def _parse(url: str) -> tuple[str, str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise WebhookTargetRefused("not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise WebhookTargetRefused("only https (or http, when allowed) URLs may receive webhooks")
    if scheme == "http" and not settings.WEBHOOK_ALLOW_HTTP:
        raise WebhookTargetRefused("only https URLs may receive webhooks (MORAN_WEBHOOK_ALLOW_HTTP is off)")
    if not parts.hostname:
        raise WebhookTargetRefused("the URL names no host")
    return scheme, parts.hostname, port or DEFAULT_PORTS[scheme]


def webhook_target(url: str) -> Target:
    """Resolve ``url``'s host once and check every address it resolves to. Raises :class:`WebhookTargetRefused`."""
    scheme, hostname, port = _parse(url)
    try:
        infos = socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise WebhookTargetRefused(f"{hostname} cannot be resolved") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise WebhookTargetRefused(f"{hostname} cannot be resolved")
    # Every address, not only the first: a name with one public and one internal address is refused, since which
    # one a later lookup returns is the name owner's choice.
    for address in addresses:
        kind = address_refusal(address)
        if kind:
            which = "is" if address == hostname else f"resolves to {address},"
            raise WebhookTargetRefused(f"{hostname} {which} a {kind} address, where webhooks may not go")
    return Target(scheme=scheme, hostname=hostname, port=port, address=addresses[0])


def webhook_url_check(url: str) -> None:
    """The check a URL passes before it is saved (same rules as at send time)."""
    webhook_target(url)


class PinnedAddressAdapter(HTTPAdapter):
    """Connects to the checked address, whatever the name resolves to by then, while TLS still sends the name
    (SNI) and verifies the certificate against it. The request's URL carries the address; the Host header the name."""

    def __init__(self, target: Target):
        self.target = target
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        if self.target.scheme == "https":
            pool_kwargs["server_hostname"] = self.target.hostname
            pool_kwargs["assert_hostname"] = self.target.hostname
        return host_params, pool_kwargs


def pinned_url(url: str, target: Target) -> str:
    parts = urlsplit(url)
    address = f"[{target.address}]" if ":" in target.address else target.address
    return urlunsplit((parts.scheme, f"{address}:{target.port}", parts.path or "/", parts.query, ""))


def host_header(target: Target) -> str:
    name = f"[{target.hostname}]" if ":" in target.hostname else target.hostname
    return name if target.port == DEFAULT_PORTS[target.scheme] else f"{name}:{target.port}"


def webhook_post(url: str, *, data: bytes, headers: dict, timeout: float) -> tuple[Target, requests.Response]:
    """POST to a checked target. Raises :class:`WebhookTargetRefused` before connecting anywhere not allowed, and
    ``requests.RequestException`` when the call fails. Redirects are not followed: a signed body goes only where it
    was configured to go."""
    target = webhook_target(url)
    parts = urlsplit(url)
    auth = (parts.username or "", parts.password or "") if parts.username or parts.password else None
    with requests.Session() as session:
        session.trust_env = False  # no proxy from the environment: it would connect by name, unchecked
        session.mount(f"{target.scheme}://", PinnedAddressAdapter(target))
        response = session.post(
            pinned_url(url, target),
            data=data,
            headers={**headers, "Host": host_header(target)},
            auth=auth,
            timeout=timeout,
            allow_redirects=False,
        )
    return target, response
