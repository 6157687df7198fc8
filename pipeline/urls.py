"""Is this URL safe to hand to a generation model that will fetch it?

Shared by user image URLs (the gateway's validation) and search results (which come from
arbitrary hosts). This module answers only "a public http(s) URL": the allowlist of upload
hosts for user images is a separate, stricter question the gateway asks on top.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

MAX_URL_CHARS = 2048

# Names that resolve to the machine itself or to private networks by convention.
_PRIVATE_SUFFIXES = (".localhost", ".local", ".internal", ".intranet", ".lan", ".home.arpa", ".corp")
_PRIVATE_NAMES = frozenset({"localhost", "localhost.localdomain", "metadata", "metadata.google.internal"})
# What a DNS name (an IDN in its xn-- form) or an IP literal is written with, lower-cased. Anything
# else left after IDNA is refused, not normalised: a host with percent-escapes ("%31%32%37.0.0.1")
# or a backslash ("127.0.0.1\.x.com") would pass as a name, and a browser or yarl then fetches
# 127.0.0.1.
_HOST_CHARS = re.compile(r"[a-z0-9_.:-]+")


class UnsafeURL(ValueError):
    """The URL is not a public http(s) address."""


def check_public_url(url: str) -> None:
    """Raise UnsafeURL unless `url` is http(s) to a public host name or public IP address.

    Blocks schemes other than http/https, credentials in the URL, hosts that are no name or
    address once IDNA has read them (percent-escapes, backslashes), loopback, private, link-local
    (cloud metadata), reserved and multicast addresses, including the legacy IPv4 spellings
    (2130706433, 0x7f.1, 127.1) that resolvers still accept.
    Names are not resolved here (no I/O): a fetcher must still pin the resolved address.
    """
    if len(url) > MAX_URL_CHARS:
        raise UnsafeURL(f"URL is longer than {MAX_URL_CHARS} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise UnsafeURL("URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise UnsafeURL("not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL("URL must use http or https")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("URL must not carry credentials")
    host = parts.hostname or ""
    if not host.isascii():
        # The name as a resolver and a browser read it: IDNA maps "\u3002" to "." and full-width
        # digits to digits ("127\u30020.0.1" is 127.0.0.1), and international names to xn-- form.
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise UnsafeURL("URL host is not a valid international name") from None
    host = host.rstrip(".")
    if not host:
        raise UnsafeURL("URL has no host")
    if not _HOST_CHARS.fullmatch(host):
        raise UnsafeURL(f"URL host {host!r} has characters no DNS name or address has")
    _check_host(host)


def is_public_url(url: str) -> bool:
    try:
        check_public_url(url)
    except UnsafeURL:
        return False
    return True


def _check_host(host: str) -> None:
    address = _ip_literal(host)
    if address is not None:
        if not is_public_address(address):
            raise UnsafeURL(f"URL points at a non-public address ({address})")
        return
    if host in _PRIVATE_NAMES or host.endswith(_PRIVATE_SUFFIXES) or "." not in host:
        raise UnsafeURL(f"URL host {host!r} is not a public name")


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable unicast only; IPv4 inside IPv6 (mapped, 6to4, Teredo) is unwrapped.

    The gateway's connect-time egress guard (gateway/egress.py) applies this same function.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is not None:
            address = embedded
    return address.is_global and not (
        address.is_multicast or address.is_loopback or address.is_private or address.is_link_local
        or address.is_reserved or address.is_unspecified
    )


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # inet_aton accepts what resolvers accept: "2130706433", "0x7f.1", "127.1".
    if all(part and (part.isdigit() or part.lower().startswith("0x")) for part in host.split(".")):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            raise UnsafeURL(f"URL host {host!r} is not a valid address") from None
    return None
