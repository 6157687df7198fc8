"""Image URLs: https to an allowlisted host only; every hostile URL class gets a 422."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway.errors import ValidationFailed
from gateway.urlpolicy import CachedUrlPolicy, ImageUrlPolicy, parse_hosts

PROCESS = "/api/v1/enhanced/process"
POLICY = ImageUrlPolicy()

HOSTILE = {
    "suffix trick": "https://supabase.co.evil.com/x.jpg",
    "lookalike without dot": "https://evilsupabase.co/x.jpg",
    "userinfo trick": "https://supabase.co@evil.com/x.jpg",
    "userinfo with password": "https://demo.supabase.co:pw@evil.com/x.jpg",
    "backslash trick": "https://evil.com\\@demo.supabase.co/x.jpg",
    "metadata IP": "https://169.254.169.254/latest/meta-data/",
    "metadata name": "https://metadata.google.internal/computeMetadata/v1/",
    "loopback": "https://127.0.0.1/x.jpg",
    "localhost": "https://localhost/x.jpg",
    "short loopback": "https://127.1/x.jpg",
    "decimal IP": "https://2130706433/x.jpg",
    "hex IP": "https://0x7f000001/x.jpg",
    "dotted hex IP": "https://0x7f.0.0.1/x.jpg",
    "octal IP": "https://0177.0.0.1/x.jpg",
    "IP with trailing dot": "https://127.0.0.1./x.jpg",
    "private 10/8": "https://10.0.0.5/x.jpg",
    "private 192.168/16": "https://192.168.1.1/x.jpg",
    "private 172.16/12": "https://172.16.0.1/x.jpg",
    "IPv6 loopback": "https://[::1]/x.jpg",
    "IPv4-mapped IPv6": "https://[::ffff:127.0.0.1]/x.jpg",
    "IPv6 link-local": "https://[fe80::1]/x.jpg",
    "file scheme": "file:///etc/passwd",
    "javascript scheme": "javascript:alert(1)",
    "data scheme": "data:image/png;base64,AAAA",
    "ftp scheme": "ftp://demo.supabase.co/x.jpg",
    "gopher scheme": "gopher://demo.supabase.co/x",
    "plain http": "http://demo.supabase.co/x.jpg",
    "scheme-relative": "//demo.supabase.co/x.jpg",
    "odd port": "https://demo.supabase.co:6379/x.jpg",
    "bad port": "https://demo.supabase.co:99999/x.jpg",
    "double trailing dot": "https://demo.supabase.co../x.jpg",
    "percent-encoded host": "https://demo.supabase%2eco/x.jpg",
    "fullwidth dot IDN": "https://demo.supabase\uff0eco/x.jpg",
    "cyrillic lookalike": "https://demo.supab\u0430se.co/x.jpg",
    "newline in URL": "https://demo.supabase.co/x\n.jpg",
    "tab in host": "https://demo.supa\tbase.co/x.jpg",
    "no host": "https:///x.jpg",
    "too long": "https://demo.supabase.co/" + "a" * 2048,
}


@pytest.mark.parametrize("url", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_urls_are_refused(url: str) -> None:
    """Each hostile URL class raises a 422 naming the field."""
    with pytest.raises(ValidationFailed) as info:
        POLICY.check(url, field="working_image_url")
    assert info.value.status == 422 and info.value.field == "working_image_url"


@pytest.mark.parametrize(
    "url",
    [
        "https://demo.supabase.co/storage/v1/object/public/images/me.jpg",
        "https://supabase.co/x.jpg",
        "https://DEMO.Supabase.CO/x.jpg",
        "https://demo.supabase.co./x.jpg",
        "https://demo.supabase.co:443/x.jpg?token=a@b#frag",
        "https://xn--80ak6aa92e.supabase.co/x.jpg",
    ],
)
def test_allowed_urls_pass(url: str) -> None:
    """Storage URLs on the allowlisted domain pass, in their equivalent spellings."""
    POLICY.check(url)


def test_http_only_with_the_dev_flag() -> None:
    """Plain http is a development flag; other schemes stay refused with it."""
    dev = ImageUrlPolicy(allow_http=True)
    dev.check("http://demo.supabase.co/x.jpg")
    with pytest.raises(ValidationFailed, match="https or http"):
        dev.check("ftp://demo.supabase.co/x.jpg")


def test_allowed_hosts_are_configurable() -> None:
    """IMAGE_URL_ALLOWED_HOSTS replaces the default list, matched exactly or by dot-suffix."""
    policy = ImageUrlPolicy(allowed_hosts=parse_hosts(" cdn.example.com , Images.Example.org. "))
    assert policy.allowed_hosts == ("cdn.example.com", "images.example.org")
    policy.check("https://a.cdn.example.com/x.jpg")
    policy.check("https://images.example.org/x.jpg")
    for url in ("https://demo.supabase.co/x.jpg", "https://example.com/x.jpg", "https://xcdn.example.com/"):
        with pytest.raises(ValidationFailed):
            policy.check(url)


@pytest.mark.parametrize("name", ["suffix trick", "metadata IP", "IPv6 loopback", "hex IP", "file scheme"])
async def test_api_answers_422_naming_the_field(client: Any, name: str) -> None:
    """Through the API: a 422 JSON error naming working_image_url, on /process and the GET stream."""
    resp = await client.post(PROCESS, json={"prompt": "a cat", "working_image_url": HOSTILE[name]})
    assert resp.status == 422
    body = await resp.json()
    assert body["field"] == "working_image_url" and body["error"] == "validation_error"
    stream = await client.get(
        "/api/v1/enhanced/stream", params={"prompt": "a cat", "working_image_url": HOSTILE[name]}
    )
    assert stream.status == 422 and (await stream.json())["field"] == "working_image_url"


async def test_app_uses_configured_hosts(make_client: Any) -> None:
    """The app builds its policy from Settings."""
    client = await make_client(image_url_allowed_hosts="cdn.example.com", image_url_allow_http=True)
    ok = await client.post(PROCESS, json={"prompt": "a cat", "working_image_url": "http://cdn.example.com/a.jpg"})
    assert ok.status == 200
    refused = await client.post(
        PROCESS, json={"prompt": "a cat", "working_image_url": "https://demo.supabase.co/a.jpg"}
    )
    assert refused.status == 422


def _verdict(policy: ImageUrlPolicy | CachedUrlPolicy, url: str) -> str:
    try:
        policy.check(url)
    except ValidationFailed as exc:
        return exc.detail
    return "allowed"


def test_the_cached_policy_answers_as_the_policy_every_time() -> None:
    """Approvals are remembered, refusals never: a hostile URL is refused on every request,
    also once the cache has been filled and emptied."""
    cached = CachedUrlPolicy(POLICY, size=2)
    good = [f"https://demo.supabase.co/{n}.jpg" for n in range(3)]
    for url in [*good, *HOSTILE.values(), *good, *reversed(HOSTILE.values()), *good]:
        assert _verdict(cached, url) == _verdict(POLICY, url), url


class _RecordingPolicy(ImageUrlPolicy, frozen=True, kw_only=True):
    checked: list[str] = msgspec.field(default_factory=list)

    def check(self, url: str, *, field: str = "working_image_url") -> None:
        self.checked.append(url)
        super().check(url, field=field)


def test_an_approved_url_is_not_checked_again() -> None:
    policy = _RecordingPolicy()
    cached = CachedUrlPolicy(policy)
    for _ in range(3):
        cached.check("https://demo.supabase.co/working.jpg")
        with pytest.raises(ValidationFailed):
            cached.check("https://127.0.0.1/x.jpg")
    assert policy.checked == ["https://demo.supabase.co/working.jpg", *["https://127.0.0.1/x.jpg"] * 3]
