"""Outbound HTTP that cannot be pointed at internal addresses (SSRF and DNS rebinding).

Checking a URL's host name before fetching is not enough: the name can resolve to 127.0.0.1,
or resolve to a public address at check time and a private one at connect time. So every
address is checked where the connection is made:

- `SafeResolver` refuses a name if ANY address it resolves to is non-public (a rebinding
  answer that mixes one public and one private address is refused as a whole);
- the connector's `socket_factory` checks the exact address each socket is about to connect
  to, which also covers IP-literal URLs (aiohttp does not call the resolver for those).

Use `safe_session()` (or `safe_connector()` in your own ClientSession) for any request to a
URL that came from a user or a third party (image URLs, search results).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

# One rule for "public" everywhere: the URL checks of search results use it too.
from pipeline.urls import is_public_address


class BlockedAddress(OSError):
    """A connection to a loopback, private, link-local, reserved or multicast address."""

    def __init__(self, message: str) -> None:
        # With an errno, aiohttp's ClientConnectorError shows the message instead of "[None]".
        super().__init__(errno.EACCES, message)


def check_address(host: str) -> None:
    """Raise BlockedAddress unless `host` (an address string, scope id allowed) is public."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raise BlockedAddress(f"not an IP address: {host!r}") from None
    if not is_public_address(address):
        raise BlockedAddress(f"refusing to connect to non-public address {address}")


class SafeResolver(AbstractResolver):
    """Wraps a resolver and refuses any name that resolves to a non-public address."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            check_address(result["host"])
        return results

    async def close(self) -> None:
        await self._inner.close()


def _guarded_socket(addr_info: Any) -> socket.socket:
    # addr_info = (family, type, proto, canonname, sockaddr); sockaddr[0] is the address.
    family, type_, proto, _, sockaddr = addr_info
    check_address(str(sockaddr[0]))
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setblocking(False)
    return sock


def safe_connector(
    *, resolver: AbstractResolver | None = None, **kwargs: Any
) -> aiohttp.TCPConnector:
    """A TCPConnector that only ever connects to public addresses.

    `resolver` is wrapped (tests pass a fake one to simulate DNS answers).
    """
    return aiohttp.TCPConnector(
        resolver=SafeResolver(resolver), socket_factory=_guarded_socket, **kwargs
    )


def safe_session(
    *, resolver: AbstractResolver | None = None, **kwargs: Any
) -> aiohttp.ClientSession:
    """A ClientSession over `safe_connector()`; it ignores proxy environment variables."""
    return aiohttp.ClientSession(connector=safe_connector(resolver=resolver), trust_env=False, **kwargs)
