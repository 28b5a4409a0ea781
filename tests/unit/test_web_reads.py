"""Web-ready reads over real HTTP: content types, nosniff, CORS, the blocklist (451) and the read
size limit (403) (docs/http-api.md, "Web-ready reads").

Like test_api.py, each test runs the gateway with hypercorn on 127.0.0.1:0 in front of the
in-memory fake service and talks to it with httpx.
"""

from __future__ import annotations

import gzip
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest
import trio

from walrus_p2p.api import GatewayLimits, GatewayPolicy, _web, build_gateway_app, parse_blocklist
from walrus_p2p.api._web import (
    OCTET_STREAM,
    SNIFF_BYTES,
    TEXT_PLAIN,
    Blocklist,
    ContentTypes,
    cors_origins_from_text,
    requested_type,
    sniff,
)
from walrus_p2p.errors import ConfigError
from walrus_p2p.testing.app_client import open_app_client
from walrus_p2p.testing.fake_service import FakeBlobService
from walrus_p2p.types import blob_id_from_text

TIMEOUT = 10
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 40
PDF = b"%PDF-1.7\n" + b"x" * 5000
HTML = b"<!doctype html><html><script>alert(document.cookie)</script></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
BINARY = bytes(range(256)) * 20
# A browser's Accept for a page and for an image: lists with wildcards, so the type is sniffed.
BROWSER_PAGE = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
BROWSER_IMAGE = "image/avif,image/webp,image/apng,image/*,*/*;q=0.8"


def gateway(
    service: FakeBlobService, policy: GatewayPolicy | None = None
) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    return open_app_client(build_gateway_app(service, GatewayLimits(), policy))


def reason_of(response: httpx.Response) -> tuple[int, str]:
    assert response.headers["content-type"] == "application/json"
    return response.status_code, response.json()["error"]["reason"]


# -- content types ----------------------------------------------------------------------------


async def test_content_type_is_sniffed_safely_and_the_same_for_every_kind_of_read() -> None:
    fake = FakeBlobService()
    ids = {
        name: fake.put(data)
        for name, data in [
            ("png", PNG),
            ("pdf", PDF),
            ("html", HTML),
            ("svg", SVG),
            ("binary", BINARY),
            ("gzip", gzip.compress(HTML)),
        ]
    }
    seen: dict[str, set[str]] = {name: set() for name in ids}
    async with gateway(fake) as client:
        with trio.fail_after(TIMEOUT):
            for name, blob_id in ids.items():
                path = f"/v1/blobs/{blob_id}"
                replies = [
                    await client.get(path),
                    await client.get(path, headers={"Accept": BROWSER_PAGE}),
                    await client.get(path, headers={"Accept": BROWSER_IMAGE}),
                    await client.head(path),
                    await client.get(path, headers={"Range": "bytes=-10"}),
                    await client.get(path, headers={"Range": "bytes=0-3"}),
                    await client.get(f"{path}/byte-range", params={"start": 20, "length": 5}),
                ]
                for reply in replies:
                    assert reply.status_code in (200, 206), reply.text
                    assert reply.headers["x-content-type-options"] == "nosniff"
                    seen[name].add(reply.headers["content-type"])
    assert seen == {
        "png": {"image/png"},
        "pdf": {"application/pdf"},
        # Markup is never stated as a page or an image a browser would run: plain text.
        "html": {TEXT_PLAIN},
        "svg": {TEXT_PLAIN},
        "binary": {OCTET_STREAM},
        "gzip": {"application/gzip"},
    }


async def test_a_single_concrete_accept_type_is_the_content_type() -> None:
    fake = FakeBlobService()
    blob_id = fake.put(BINARY)
    async with gateway(fake) as client:
        with trio.fail_after(TIMEOUT):
            json_reply = await client.get(
                f"/v1/blobs/{blob_id}", headers={"Accept": "application/json; q=1"}
            )
            head = await client.head(f"/v1/blobs/{blob_id}", headers={"Accept": "Image/PNG"})
            fake.calls.clear()
            ranged = await client.get(
                f"/v1/blobs/{blob_id}",
                headers={"Accept": "video/mp4", "Range": "bytes=100-199"},
            )
    assert json_reply.headers["content-type"] == "application/json"
    assert json_reply.content == BINARY
    assert head.headers["content-type"] == "image/png"
    assert ranged.headers["content-type"] == "video/mp4"
    # The requested type needs no look at the first bytes.
    assert fake.calls == ["blob_status", "read_range 100 100"]


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, None),
        ("image/png", "image/png"),
        ("Application/JSON;q=0.5", "application/json"),
        ("text/plain; charset=utf-8", "text/plain"),
        ("*/*", None),
        ("image/*", None),
        ("image/png, image/webp", None),
        ("png", None),
        ("image/png/x", None),
        ("image/pn g", None),
        ("", None),
    ],
)
def test_requested_type(accept: str | None, expected: str | None) -> None:
    assert requested_type(accept) == expected


def test_sniff() -> None:
    assert sniff(b"", complete=True) == OCTET_STREAM
    assert sniff(PNG[:SNIFF_BYTES], complete=False) == "image/png"
    assert sniff("héllo wörld\n".encode(), complete=True) == TEXT_PLAIN
    assert sniff(b"hello\x00world", complete=True) == OCTET_STREAM
    cut = ("é" * SNIFF_BYTES).encode()[: SNIFF_BYTES - 1]  # ends inside a character
    assert sniff(cut, complete=False) == TEXT_PLAIN
    assert sniff(cut, complete=True) == OCTET_STREAM  # a whole blob ending mid-character
    # A type filetype knows but the gateway does not state (a browser might run it).
    swf = b"FWS" + bytes(range(40))
    assert sniff(swf, complete=True) == OCTET_STREAM


def test_sniffed_types_are_remembered_boundedly() -> None:
    types = ContentTypes(entries=2)
    a, b, c = (blob_id_from_text(FakeBlobService().put(bytes([n]))) for n in range(3))
    types.put(a, "image/png")
    types.put(b, "text/plain")
    assert types.get(a) == "image/png"  # a is now the newest
    types.put(c, "application/pdf")
    assert (types.get(a), types.get(b), types.get(c)) == ("image/png", None, "application/pdf")


# -- CORS -------------------------------------------------------------------------------------


async def test_cors_any_origin_by_default() -> None:
    fake = FakeBlobService()
    blob_id = fake.put(PNG)
    async with gateway(fake) as client:
        with trio.fail_after(TIMEOUT):
            preflight = await client.options(
                "/v1/blobs?epochs=1",
                headers={
                    "Origin": "https://app.example",
                    "Access-Control-Request-Method": "PUT",
                    "Access-Control-Request-Headers": "content-type",
                },
            )
            read = await client.get(
                f"/v1/blobs/{blob_id}",
                headers={"Origin": "https://app.example", "Range": "bytes=0-9"},
            )
            stored = await client.put(
                "/v1/blobs?epochs=1", content=b"x", headers={"Origin": "http://localhost:3000"}
            )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "PUT" in preflight.headers["access-control-allow-methods"]
    assert "content-type" in preflight.headers["access-control-allow-headers"].lower()
    assert read.status_code == 206
    assert read.headers["access-control-allow-origin"] == "*"
    exposed = {h.strip().lower() for h in read.headers["access-control-expose-headers"].split(",")}
    assert {"content-range", "etag", "content-length"} <= exposed
    assert stored.status_code == 200
    assert stored.headers["access-control-allow-origin"] == "*"


async def test_cors_listed_origins_only_and_off() -> None:
    fake = FakeBlobService()
    blob_id = fake.put(PNG)
    listed = GatewayPolicy(cors_origins=("https://app.example",))
    async with gateway(fake, listed) as client:
        with trio.fail_after(TIMEOUT):
            allowed = await client.get(
                f"/v1/blobs/{blob_id}", headers={"Origin": "https://app.example"}
            )
            other = await client.get(
                f"/v1/blobs/{blob_id}", headers={"Origin": "https://evil.example"}
            )
            other_preflight = await client.options(
                f"/v1/blobs/{blob_id}",
                headers={
                    "Origin": "https://evil.example",
                    "Access-Control-Request-Method": "GET",
                },
            )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert other.status_code == 200  # served (no credentials involved); the browser hides it
    assert "access-control-allow-origin" not in other.headers
    assert other_preflight.status_code == 400
    async with gateway(fake, GatewayPolicy(cors_origins=())) as client:
        with trio.fail_after(TIMEOUT):
            off = await client.get(f"/v1/blobs/{blob_id}", headers={"Origin": "https://a.example"})
    assert off.status_code == 200
    assert not [name for name in off.headers if name.lower().startswith("access-control-")]


@pytest.mark.parametrize(
    ("text", "origins"),
    [
        ("*", ("*",)),
        ("none", ()),
        ("NONE", ()),
        (
            "https://a.example, http://localhost:3000/",
            ("https://a.example", "http://localhost:3000"),
        ),
    ],
)
def test_cors_origins_from_text(text: str, origins: tuple[str, ...]) -> None:
    assert cors_origins_from_text(text) == origins
    GatewayPolicy(cors_origins=origins)  # and they are valid


@pytest.mark.parametrize(
    "origins", [("ftp://a.example",), ("a.example",), ("*", "https://a.example"), ("https://a/b",)]
)
def test_bad_cors_origins_are_refused(origins: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match="CORS origin"):
        GatewayPolicy(cors_origins=origins)


# -- blocklist and size limit -----------------------------------------------------------------


async def test_blocklisted_blobs_are_451_without_touching_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeBlobService()
    blocked = fake.put(b"blocked content")
    served = fake.put(b"fine content")
    path = tmp_path / "blocklist.txt"
    path.write_text(f"# taken down 2026-12-07\n{blocked}  # notice 42\n\n")
    monkeypatch.setattr(_web, "BLOCKLIST_CHECK_SECONDS", 0.0)
    async with gateway(fake, GatewayPolicy(blocklist=path)) as client:
        with trio.fail_after(TIMEOUT):
            refused = [
                await client.get(f"/v1/blobs/{blocked}"),
                await client.head(f"/v1/blobs/{blocked}"),
                await client.get(f"/v1/blobs/{blocked}", headers={"Range": "bytes=0-1"}),
                await client.get(f"/v1/blobs/{blocked}", headers={"If-None-Match": f'"{blocked}"'}),
                await client.get(f"/v1/blobs/{blocked}/byte-range?start=0&length=1"),
            ]
            refused_calls = list(fake.calls)
            ok = await client.get(f"/v1/blobs/{served}")
            # A malformed edit keeps the previous list...
            path.write_text(f"{blocked}\nnot-a-blob-id\n")
            still = await client.get(f"/v1/blobs/{blocked}")
            # ...and a good one takes effect without a restart.
            path.write_text(f"{served}\n")
            unblocked = await client.get(f"/v1/blobs/{blocked}")
            now_blocked = await client.get(f"/v1/blobs/{served}")
    assert [response.status_code for response in refused[:1] + refused[2:]] == [451] * 4
    assert refused[1].status_code == 451  # HEAD: no body to check
    assert reason_of(refused[0]) == (451, "BLOB_BLOCKED")
    assert refused_calls == []
    assert ok.status_code == 200
    assert reason_of(still) == (451, "BLOB_BLOCKED")
    assert unblocked.status_code == 200
    assert unblocked.content == b"blocked content"
    assert reason_of(now_blocked) == (451, "BLOB_BLOCKED")


def test_a_bad_blocklist_stops_the_start_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "blocklist.txt"
    path.write_text(f"{FakeBlobService().put(b'a')}\nzzz\n")
    with pytest.raises(ConfigError, match="line 2"):
        GatewayPolicy(blocklist=path)
    with pytest.raises(ConfigError, match="cannot be read"):
        parse_blocklist(tmp_path / "missing.txt")
    assert blob_id_from_text(FakeBlobService().put(b"a")) not in Blocklist(None)


async def test_blobs_above_the_read_size_limit_are_403() -> None:
    fake = FakeBlobService()
    small = fake.put(b"s" * 1000)
    large = fake.put(b"l" * 1001)
    async with gateway(fake, GatewayPolicy(max_read_size=1000)) as client:
        with trio.fail_after(TIMEOUT):
            small_reply = await client.get(f"/v1/blobs/{small}")
            large_reply = await client.get(f"/v1/blobs/{large}")
            large_range = await client.get(f"/v1/blobs/{large}/byte-range?start=0&length=10")
            large_calls = [call for call in fake.calls if call.startswith("read")]
    assert small_reply.status_code == 200
    assert reason_of(large_reply) == (403, "BLOB_ABOVE_READ_LIMIT")
    assert reason_of(large_range) == (403, "BLOB_ABOVE_READ_LIMIT")
    assert large_calls == ["read"]  # the small blob's; the large one was never read
    with pytest.raises(ConfigError):
        GatewayPolicy(max_read_size=-1)
