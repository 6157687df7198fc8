"""Which image URLs a user may send: https to an allowlisted storage host, nothing else.

The URL is handed to generation models that fetch it, so a URL that reaches an internal
address is an SSRF through them. Host names are matched exactly or by dot-suffix against the
allowlist (the plan's substring match let `supabase.co.evil.com` through). Anything whose
meaning differs between parsers is refused rather than normalised: credentials (`a@b`),
backslashes, whitespace, percent-escapes and non-ASCII in the host, IP literals in any
notation (`127.1`, `2130706433`, `0x7f000001`, `0177.0.0.1`, `[::1]`).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

import msgspec

from gateway.errors import ValidationFailed

MAX_URL_CHARS = 2048

# Letters, digits and hyphens, dot-separated: what a DNS name (or its punycode form) is.
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)\Z")
_UNSAFE_CHARS = re.compile(r"[\x00-\x20\x7f-\x9f\\]")
# Every IP notation (IPv4 in any base, IPv6) is written with these characters only.
_NOT_IP_CHAR = re.compile(r"[^0-9a-fA-FxX.:]")
_DEFAULT_PORTS = {"https": 443, "http": 80}


def parse_hosts(value: str) -> tuple[str, ...]:
    """IMAGE_URL_ALLOWED_HOSTS: comma-separated domains, e.g. "supabase.co,cdn.example.com"."""
    return tuple(h.strip().lower().strip(".") for h in value.split(",") if h.strip(" ."))


class ImageUrlPolicy(msgspec.Struct, frozen=True, kw_only=True):
    allowed_hosts: tuple[str, ...] = ("supabase.co",)
    allow_http: bool = False  # a development flag: local storage emulators serve plain http

    def check(self, url: str, *, field: str = "working_image_url") -> None:
        """Raise a 422 ValidationFailed naming `field` unless `url` is allowed."""
        if len(url) > MAX_URL_CHARS:
            raise ValidationFailed(f"URL is longer than {MAX_URL_CHARS} characters", field=field)
        if _UNSAFE_CHARS.search(url):
            raise ValidationFailed("URL contains whitespace, control characters or '\\'", field=field)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValidationFailed("not a valid URL", field=field) from None
        schemes = ("https", "http") if self.allow_http else ("https",)
        if parts.scheme not in schemes:
            raise ValidationFailed(f"image URL must use {' or '.join(schemes)}", field=field)
        if "@" in parts.netloc:
            raise ValidationFailed("image URL must not contain credentials ('user@')", field=field)
        if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
            raise ValidationFailed("image URL must use the default port", field=field)
        host = self._host(parts.netloc.rpartition(":")[0] if port is not None else parts.netloc, field)
        if not any(host == allowed or host.endswith("." + allowed) for allowed in self.allowed_hosts):
            allowed = ", ".join(self.allowed_hosts)
            raise ValidationFailed(f"image host {host!r} is not allowed (allowed: {allowed})", field=field)

    @staticmethod
    def _host(raw: str, field: str) -> str:
        if not raw:
            raise ValidationFailed("image URL has no host", field=field)
        if raw.startswith("[") or _is_ip_literal(raw):
            raise ValidationFailed("image URL must name a host, not an IP address", field=field)
        if not raw.isascii():
            raise ValidationFailed("image host must be ASCII (use its xn-- punycode form)", field=field)
        # One trailing dot is the same DNS name (fully qualified); anything else is refused.
        host = raw.lower().removesuffix(".")
        labels = host.split(".")
        if not all(_HOST_LABEL.match(label) for label in labels):
            raise ValidationFailed("image host is not a valid DNS name", field=field)
        if _NUMERIC_LABEL.match(labels[-1]):
            # No top-level domain is numeric: "127.1", "0x7f.1" are addresses in disguise.
            raise ValidationFailed("image URL must name a host, not an IP address", field=field)
        return host


class CachedUrlPolicy:
    """A policy that remembers the URLs it approved lately.

    A user editing one working image sends its URL with every request, and checking it again
    (a URL parse and four regexes, ~7 us) was ~3% of a cached answer. The policy is fixed at
    start-up, so an approval never goes stale; refusals are not kept (a 422 is not hot).
    """

    __slots__ = ("_approved", "_size", "policy")

    def __init__(self, policy: ImageUrlPolicy, *, size: int = 4096) -> None:
        self.policy = policy
        self._approved: set[str] = set()
        self._size = size

    def check(self, url: str, *, field: str = "working_image_url") -> None:
        if url in self._approved:
            return
        self.policy.check(url, field=field)
        if len(self._approved) >= self._size:
            self._approved.clear()  # cheaper than an LRU, and a refill costs one check per URL
        self._approved.add(url)


UrlPolicy = ImageUrlPolicy | CachedUrlPolicy


def _is_ip_literal(host: str) -> bool:
    """Any notation a resolver accepts as an address: dotted, short, decimal, hex, octal."""
    bare = host.removesuffix(".")
    if _NOT_IP_CHAR.search(bare):
        return False  # a name; the parsers below cost an exception each for every name
    try:
        ipaddress.ip_address(bare)
        return True
    except ValueError:
        pass
    try:
        socket.inet_aton(bare)  # accepts 2130706433, 0x7f000001, 0177.0.0.1, 127.1
        return True
    except (OSError, ValueError, UnicodeError):
        return False
