"""Outbound connections refuse internal addresses at connect time (SSRF, DNS rebinding)."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.egress import BlockedAddress, SafeResolver, _guarded_socket, is_public_address, safe_session


class FakeResolver(AbstractResolver):
    """Answers each lookup with the next address from a script: DNS an attacker controls."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.lookups = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self.answers[min(self.lookups, len(self.answers) - 1)]
        self.lookups += 1
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [
            ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0, flags=0)
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
async def local_server(aiohttp_server: Any) -> Any:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="internal secret")

    app = web.Application()
    app.router.add_get("/", ok)
    return await aiohttp_server(app, host="127.0.0.1")


async def test_plain_session_reaches_the_local_server(local_server: Any) -> None:
    """Control: without the guard the internal server answers (so refusals below are real)."""
    async with aiohttp.ClientSession() as session, session.get(local_server.make_url("/")) as resp:
        assert await resp.text() == "internal secret"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
async def test_safe_session_refuses_loopback_urls(local_server: Any, host: str) -> None:
    """IP literals and names that resolve to loopback are refused before any byte is sent."""
    url = f"http://{host}:{local_server.port}/"
    async with safe_session() as session:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await session.get(url)
    assert "non-public" in str(info.value)


async def test_name_resolving_to_private_address_is_refused(local_server: Any) -> None:
    """A public-looking name whose DNS answer is 127.0.0.1 is refused at resolve time."""
    resolver = FakeResolver("127.0.0.1")
    async with safe_session(resolver=resolver) as session:
        with pytest.raises(aiohttp.ClientConnectorError, match="non-public") as info:
            await session.get(f"http://images.supabase.co:{local_server.port}/")
    assert isinstance(info.value.os_error, BlockedAddress)
    assert resolver.lookups == 1


async def test_dns_rebinding_is_caught_on_the_second_lookup(local_server: Any) -> None:
    """First answer public, second answer the metadata address: the second connect is refused."""
    resolver = FakeResolver("93.184.216.34", "169.254.169.254")
    checker = SafeResolver(resolver)
    first = await checker.resolve("rebind.example", 80)
    assert first[0]["host"] == "93.184.216.34"
    with pytest.raises(BlockedAddress, match=r"169\.254\.169\.254"):
        await checker.resolve("rebind.example", 80)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "0.0.0.0", "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1",
        "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::", "64:ff9b::a00:1",
    ],
)
def test_non_public_addresses_are_blocked_at_socket_creation(address: str) -> None:
    """The socket factory refuses each non-public range, whatever the family or mapping."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with pytest.raises(BlockedAddress):
        _guarded_socket((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, 443)))


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
def test_public_addresses_get_a_socket(address: str) -> None:
    """Public unicast addresses pass the guard and get a non-blocking socket."""
    import ipaddress

    assert is_public_address(ipaddress.ip_address(address))
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = _guarded_socket((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, 443)))
    try:
        assert sock.getblocking() is False
    finally:
        sock.close()
