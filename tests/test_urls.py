"""The public-URL check shared by user images and search results."""

from __future__ import annotations

import pytest

from pipeline.urls import UnsafeURL, check_public_url, is_public_url


@pytest.mark.parametrize(
    "url",
    [
        "https://images.example.com/a.jpg",
        "http://upload.wikimedia.org/wikipedia/commons/a.jpg?width=800",
        "https://8.8.8.8/a.png",
        "https://[2606:4700:4700::1111]/a.png",
        "https://example.com:8443/a.png",
        "https://xn--exmple-cua.com/a.png",  # an international name in its ASCII form
        "https://b\u00fccher.de/cover.jpg",  # and as people write it (IDNA reads it as xn--bcher-kva.de)
        "https://\u4f8b\u3048.jp/a.jpg",
        "https://my_bucket.s3.example.com./a%20b.png",  # '_', a trailing dot, escapes outside the host
    ],
)
def test_public_urls_pass(url: str) -> None:
    """Public names and public address literals over http(s) are fine."""
    check_public_url(url)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/a.jpg", "http or https"),
        ("data:image/png;base64,AAAA", "http or https"),
        ("https://", "no host"),
        ("https://u:p@example.com/a.jpg", "credentials"),
        ("http://127.0.0.1/", "non-public"),
        ("http://127.1/", "non-public"),
        ("http://2130706433/", "non-public"),
        ("http://0x7f000001/", "non-public"),
        ("http://0177.0.0.1/", "non-public"),
        ("http://169.254.169.254/latest/meta-data/", "non-public"),
        ("http://[fd00::1]/", "non-public"),
        ("http://[::ffff:10.0.0.1]/", "non-public"),
        ("http://[2002:7f00:1::]/", "non-public"),  # 6to4 around 127.0.0.1
        ("http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/", "non-public"),  # Teredo around 10.0.0.1
        ("http://224.0.0.1/", "non-public"),
        ("http://0.0.0.0/", "non-public"),
        ("http://localhost:8080/", "not a public name"),
        ("http://api.localhost/", "not a public name"),
        ("http://metadata.google.internal/", "not a public name"),
        ("http://nas/", "not a public name"),
        ("https://example.com:99999/", "not a valid URL"),
        ("https://exa mple.com/", "whitespace"),
        ("https://example.com/" + "a" * 2100, "longer than"),
        # Hosts a browser or yarl reads as another host: checked as IDNA reads them.
        ("http://127\u30020.0.1/x.jpg", "non-public"),  # U+3002 ideographic full stop, read as "."
        ("http://169.254.169.254\u3002/latest/meta-data/", "non-public"),
        ("http://\uff11\uff12\uff17.0.0.1/x.jpg", "non-public"),  # full-width digits
        ("http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/x", "not a public name"),  # localhost
        ("http://%31%32%37.0.0.1/x", "characters no DNS name"),
        ("http://%6c%6f%63%61%6c%68%6f%73%74/x", "characters no DNS name"),  # localhost
        ("http://127.0.0.1%2f.example.com/x", "characters no DNS name"),
        ("http://[fe80::1%25eth0]/x", "characters no DNS name"),
        ("http://127.0.0.1\\.example.com/x", "characters no DNS name"),  # a browser reads "\" as "/"
    ],
)
def test_unsafe_urls_are_refused_with_a_reason(url: str, why: str) -> None:
    """Each kind of unsafe URL is refused, and the reason says which."""
    with pytest.raises(UnsafeURL, match=why):
        check_public_url(url)
    assert not is_public_url(url)
