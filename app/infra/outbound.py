"""Requests the service makes to addresses a tenant gives (webhooks): public internet only
(OWASP's SSRF prevention). The host is resolved once, every address it resolves to must be
public, and the request then goes to that checked address (the Host header and TLS name stay the
URL's), so neither DNS rebinding nor a numeric spelling (127.1, 2130706433, 0x7f000001, [::1])
reaches the service's own network. Credentials in a URL are refused: they would be logged and
sent on as Basic auth."""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit


class RefusedTarget(Exception):
    """The URL may not be called: its message says why, in words fit for the tenant who gave it."""


class Unresolvable(RefusedTarget):
    """The host does not resolve (now): refused at delivery, not necessarily at creation."""


@dataclass(frozen=True)
class Target:
    """A URL whose host resolved to `address`, a public one (or any, with private allowed)."""

    url: str
    host: str
    address: str


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast: not loopback, private, unique-local, link-local, multicast,
    unspecified, reserved, nor an IPv4-mapped or -translated form of one of those."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (
            address.teredo[1] if address.teredo else None)
        if embedded is not None and not is_public(embedded):
            return False
    return address.is_global and not address.is_multicast


def check_url_form(url: str) -> None:
    """RefusedTarget for what no lookup changes: not http(s), no host, credentials."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedTarget("the URL must be http:// or https:// with a host")
    if parts.username is not None or parts.password is not None:
        raise RefusedTarget("the URL must not carry credentials (user:password@); sign-in "
                            "belongs in the receiver, which can verify the signature instead")


@functools.lru_cache(maxsize=1)
def _own_addresses() -> frozenset[str]:
    # Looked up once per process: the host's own name does not move under a running service.
    try:
        return frozenset(str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None))
    except OSError:
        return frozenset()


def resolve(url: str, *, allow_private: bool) -> Target:
    """The URL's host resolved and checked; RefusedTarget if it may not be called."""
    check_url_form(url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise Unresolvable(f"the host {host!r} does not resolve") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not allow_private:
        own = _own_addresses()
        if not addresses or any(not is_public(a) or str(a) in own for a in addresses):
            raise RefusedTarget("the URL's host is not a public internet address")
    return Target(url, host, str(addresses[0]))


def pinned_url(target: Target) -> tuple[str, str]:
    """The URL with its host replaced by the checked address, and the Host header to send: the
    request goes where the check looked, whatever a second lookup would answer."""
    parts = urlsplit(target.url)
    literal = f"[{target.address}]" if ":" in target.address else target.address
    host_header = parts.hostname or ""
    if ":" in host_header:
        host_header = f"[{host_header}]"
    if parts.port is not None:
        literal += f":{parts.port}"
        host_header += f":{parts.port}"
    return parts._replace(netloc=literal).geturl(), host_header


def redacted(url: str) -> str:
    """The URL without any user:password@, for logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc).geturl()


# An answer's status line longer than this is not HTTP.
MAX_STATUS_LINE = 8192


def post_status(target: Target, headers: dict[str, str], body: bytes, *, timeout_s: float) -> int:
    """POST `body` to the checked address and return the answer's status code. `timeout_s` bounds
    the whole exchange (connecting, TLS, sending, reading the status line), however slowly a
    receiver trickles bytes: an HTTP client's timeouts bound each read, so a receiver sending a
    byte a second could hold a try for minutes. The answer's headers and body are never read.
    TimeoutError past the deadline; OSError or ValueError when no HTTP answer comes."""
    parts = urlsplit(target.url)
    https = parts.scheme == "https"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    _, host_header = pinned_url(target)
    fields = {"Host": host_header, **headers, "Content-Length": str(len(body)),
              "Connection": "close"}
    if any(c in text for c in "\r\n\x00" for text in (path, *fields, *fields.values())):
        raise ValueError("the URL or a header holds a line break")
    deadline = time.monotonic() + timeout_s

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer within {timeout_s:g} s")
        return left

    try:
        return _exchange(target, https, _request_head(path, fields) + body, remaining)
    except TimeoutError:  # a socket's own timeout says only "timed out"
        raise TimeoutError(f"no answer within {timeout_s:g} s") from None


def _request_head(path: str, fields: dict[str, str]) -> bytes:
    return (f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
            + "\r\n").encode("latin-1")


def _exchange(target: Target, https: bool, request: bytes, remaining: Callable[[], float]) -> int:
    """Send `request` and read the answer's status code, each step within `remaining()`."""
    port = urlsplit(target.url).port or (443 if https else 80)
    sock = socket.create_connection((target.address, port), timeout=remaining())
    try:
        if https:
            sock.settimeout(remaining())
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=target.host)
        pending = memoryview(request)
        while pending:
            sock.settimeout(remaining())
            pending = pending[sock.send(pending):]
        answer = b""
        while b"\r\n" not in answer:
            sock.settimeout(remaining())
            chunk = sock.recv(1024)
            if not chunk:
                raise ConnectionError("the receiver closed the connection without an answer")
            answer += chunk
            if len(answer) > MAX_STATUS_LINE:
                raise ValueError("the answer is not HTTP")
        version, _, rest = answer.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/") or not code.isdigit():
            raise ValueError("the answer is not HTTP")
        return int(code)
    finally:
        sock.close()
