"""The HTTP gateway over real HTTP.

Each test runs hypercorn (trio worker) on 127.0.0.1:0 inside its own trio run, in front of an
in-memory fake `BlobService`, and talks to it with an httpx async client. A probe wrapped around
the ASGI app counts what the app actually pulled from the request body and how the response body
was sent, so the body limit and the streaming can be checked from the server side.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import pytest
import trio

import walrus_p2p.api
from walrus_p2p.api import (
    ERROR_REASONS,
    ByteRange,
    GatewayLimits,
    GatewayPolicy,
    UnsatisfiableRangeError,
    build_gateway_app,
    parse_range_header,
    serve_gateway,
)
from walrus_p2p.errors import (
    ConfigError,
    NetworkError,
    OrderRefusedError,
    QuorumError,
    RequestTimeoutError,
)
from walrus_p2p.net.http import serve_http
from walrus_p2p.testing.fake_service import FakeBlobService
from walrus_p2p.types import BlobId, blob_id_to_text

TIMEOUT = 10
BLOB = bytes(range(256)) * 800  # 200 KiB: several stream chunks
UNKNOWN_ID = blob_id_to_text(bytes(32))


class Probe:
    """ASGI wrapper recording request body bytes the app received and response body sends."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.body_bytes_received = 0
        self.body_sends: list[int] = []
        self.statuses: list[int] = []
        self.responded = trio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                self.body_bytes_received += len(message.get("body", b""))
            return message

        async def recording_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.statuses.append(message["status"])
                self.responded.set()
            elif message["type"] == "http.response.body" and message.get("body"):
                self.body_sends.append(len(message["body"]))
            await send(message)

        await self.app(scope, counting_receive, recording_send)


@asynccontextmanager
async def gateway(
    service: FakeBlobService, policy: GatewayPolicy | None = None, **limits: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Probe]]:
    probe = Probe(build_gateway_app(service, GatewayLimits(**limits), policy))
    async with trio.open_nursery() as nursery:
        with trio.fail_after(TIMEOUT):
            urls = await nursery.start(serve_http, probe, "127.0.0.1:0")
        async with httpx.AsyncClient(base_url=urls[0], timeout=TIMEOUT) as client:
            yield client, probe
        nursery.cancel_scope.cancel()


@pytest.fixture
def fake() -> FakeBlobService:
    return FakeBlobService()


def error_of(response: httpx.Response) -> tuple[int, str]:
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) - {"needed", "balance", "orderReason"} == {
        "code",
        "reason",
        "message",
    }
    assert body["error"]["code"] == response.status_code
    assert body["error"]["reason"] in ERROR_REASONS
    return response.status_code, body["error"]["reason"]


# --- store and read --------------------------------------------------------------------------


async def test_store_newly_created_then_already_certified_then_read_back(
    fake: FakeBlobService,
) -> None:
    async with gateway(fake) as (client, probe):
        with trio.fail_after(TIMEOUT):
            first = await client.put("/v1/blobs", params={"epochs": 3}, content=BLOB)
            second = await client.put("/v1/blobs?epochs=3", content=BLOB)
            blob_id = first.json()["newlyCreated"]["blobObject"]["blobId"]
            probe.body_sends.clear()
            read = await client.get(f"/v1/blobs/{blob_id}")

    assert first.status_code == 200
    assert first.json() == {
        "newlyCreated": {
            "blobObject": {
                "blobId": blob_id_to_text(hashlib.sha256(BLOB).digest()),
                "size": len(BLOB),
                "encodingType": 1,
                "certifiedEpoch": 7,
                "storage": {"startEpoch": 7, "endEpoch": 10, "storageSize": 5 * len(BLOB)},
                "deletable": True,
            },
            "cost": 15 * len(BLOB),
        }
    }
    assert second.status_code == 200
    assert second.json() == {"alreadyCertified": {"blobId": blob_id, "endEpoch": 10}}
    assert fake.stores == [(len(BLOB), 3, False), (len(BLOB), 3, False)]

    assert read.status_code == 200
    assert read.content == BLOB
    assert read.headers["content-type"] == "application/octet-stream"
    assert read.headers["content-length"] == str(len(BLOB))
    assert read.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert read.headers["etag"] == f'"{blob_id}"'
    assert read.headers["accept-ranges"] == "bytes"
    # Streamed in bounded pieces, not written in one go.
    assert len(probe.body_sends) >= 3
    assert max(probe.body_sends) <= 64 * 1024
    assert sum(probe.body_sends) == len(BLOB)


async def test_empty_blob_round_trip(fake: FakeBlobService) -> None:
    async with gateway(fake) as (client, _):
        with trio.fail_after(TIMEOUT):
            stored = await client.put("/v1/blobs?epochs=1", content=b"")
            blob_id = stored.json()["newlyCreated"]["blobObject"]["blobId"]
            read = await client.get(f"/v1/blobs/{blob_id}")
            ranged = await client.get(f"/v1/blobs/{blob_id}", headers={"Range": "bytes=0-"})
    assert stored.status_code == 200
    assert (read.status_code, read.content) == (200, b"")
    assert ranged.status_code == 416
    assert ranged.headers["content-range"] == "bytes */0"


@pytest.mark.parametrize(
    ("query", "permanent"),
    [
        ("", False),
        ("&permanent=true", True),
        ("&permanent=false", False),
        ("&deletable=false", True),
        ("&deletable=TRUE", False),
        ("&permanent=true&deletable=false", True),
    ],
)
async def test_permanence_flags(fake: FakeBlobService, query: str, permanent: bool) -> None:
    async with gateway(fake) as (client, _):
        with trio.fail_after(TIMEOUT):
            response = await client.put(f"/v1/blobs?epochs=2{query}", content=b"abc")
    assert response.status_code == 200
    assert response.json()["newlyCreated"]["blobObject"]["deletable"] is not permanent
    assert fake.stores == [(3, 2, permanent)]


async def test_bad_store_parameters_are_400_and_never_reach_the_service(
    fake: FakeBlobService,
) -> None:
    queries = [
        "",
        "?epochs=",
        "?epochs=0",
        "?epochs=-1",
        "?epochs=abc",
        "?epochs=1.5",
        "?epochs=%D9%A3",  # an Arabic-Indic digit three
        "?epochs=1&epochs=2",
        "?epochs=" + "9" * 19,
        "?epochs=1&permanent=yes",
        "?epochs=1&permanent=true&deletable=true",
        "?epochs=1&permanent=false&deletable=false",
    ]
    async with gateway(fake) as (client, _):
        for query in queries:
            with trio.fail_after(TIMEOUT):
                response = await client.put(f"/v1/blobs{query}", content=b"abc")
            assert error_of(response) == (400, "BAD_REQUEST"), query
    assert fake.stores == []


# --- ranges ----------------------------------------------------------------------------------


async def test_range_header(fake: FakeBlobService) -> None:
    blob_id = fake.put(BLOB)
    size = len(BLOB)
    cases = [
        ("bytes=0-9", 0, 9),
        ("bytes=10-", 10, size - 1),
        ("bytes=-5", size - 5, size - 1),
        ("bytes=-999999999", 0, size - 1),
        ("bytes=100-99999999", 100, size - 1),
        ("bytes=5-5", 5, 5),
        ("Bytes = 70000-140000", 70000, 140000),
        (f"bytes={size - 1}-", size - 1, size - 1),
    ]
    async with gateway(fake) as (client, probe):
        for header, first, last in cases:
            fake.calls.clear()
            probe.body_sends.clear()
            with trio.fail_after(TIMEOUT):
                response = await client.get(f"/v1/blobs/{blob_id}", headers={"Range": header})
            assert response.status_code == 206, header
            assert response.content == BLOB[first : last + 1], header
            assert response.headers["content-range"] == f"bytes {first}-{last}/{size}"
            assert response.headers["content-length"] == str(last - first + 1)
            assert response.headers["etag"] == f'"{blob_id}"'
            read = ["blob_status", f"read_range {first} {last - first + 1}"]
            # The first read of the blob that does not start with its first 2 KiB reads them
            # once more for the content type; later ones use the remembered type.
            sniffed = ["read_range 0 2048"] if header == cases[0][0] else []
            assert fake.calls == read + sniffed
            assert max(probe.body_sends) <= 64 * 1024


async def test_unsatisfiable_range_is_416(fake: FakeBlobService) -> None:
    blob_id = fake.put(BLOB)
    async with gateway(fake) as (client, _):
        for header in [f"bytes={len(BLOB)}-", f"bytes={len(BLOB)}-{len(BLOB) + 5}", "bytes=-0"]:
            with trio.fail_after(TIMEOUT):
                response = await client.get(f"/v1/blobs/{blob_id}", headers={"Range": header})
            assert error_of(response) == (416, "RANGE_NOT_SATISFIABLE"), header
            assert response.headers["content-range"] == f"bytes */{len(BLOB)}"
    assert not any(call.startswith("read") for call in fake.calls)


async def test_ignored_range_headers_serve_the_whole_blob(fake: FakeBlobService) -> None:
    blob_id = fake.put(BLOB)
    headers: list[dict[str, str]] = [
        {"Range": "bytes=0-1,5-6"},
        {"Range": "items=0-1"},
        {"Range": "bytes=9-2"},
        {"Range": "bytes=abc"},
        {"Range": "bytes=-"},
        {"Range": "bytes=0-1", "If-Range": '"someone-else"'},
    ]
    async with gateway(fake) as (client, _):
        for header in headers:
            with trio.fail_after(TIMEOUT):
                response = await client.get(f"/v1/blobs/{blob_id}", headers=header)
            assert response.status_code == 200, header
            assert response.content == BLOB
            assert "content-range" not in response.headers
        with trio.fail_after(TIMEOUT):
            honoured = await client.get(
                f"/v1/blobs/{blob_id}", headers={"Range": "bytes=0-1", "If-Range": f'"{blob_id}"'}
            )
    assert (honoured.status_code, honoured.content) == (206, BLOB[:2])


async def test_byte_range_endpoint(fake: FakeBlobService) -> None:
    blob_id = fake.put(BLOB)
    size = len(BLOB)
    path = f"/v1/blobs/{blob_id}/byte-range"
    async with gateway(fake) as (client, _):
        with trio.fail_after(TIMEOUT):
            middle = await client.get(path, params={"start": 1000, "length": 100000})
            cut = await client.get(path, params={"start": size - 10, "length": 1000})
            past = await client.get(path, params={"start": size, "length": 1})
            bad = [
                await client.get(path + query)
                for query in [
                    "",
                    "?start=0",
                    "?length=5",
                    "?start=0&length=0",
                    "?start=-1&length=5",
                    "?start=x&length=5",
                    "?start=0&length=5&length=6",
                ]
            ]
    assert middle.status_code == 200
    assert middle.content == BLOB[1000:101000]
    assert middle.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert middle.headers["content-type"] == "application/octet-stream"
    assert (cut.status_code, cut.content) == (200, BLOB[-10:])
    assert error_of(past) == (416, "RANGE_NOT_SATISFIABLE")
    assert past.headers["content-range"] == f"bytes */{size}"
    assert [error_of(response) for response in bad] == [(400, "BAD_REQUEST")] * len(bad)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-0", 1, ByteRange(0, 0)),
        ("bytes=0-", 10, ByteRange(0, 9)),
        ("bytes=3-100", 10, ByteRange(3, 9)),
        ("bytes=-3", 10, ByteRange(7, 9)),
        ("bytes=-30", 10, ByteRange(0, 9)),
        ("bytes= 2-4 ", 10, ByteRange(2, 4)),
        ("bytes=4-2", 10, None),
        ("bytes=0-1,3-4", 10, None),
        ("bytes=", 10, None),
        ("bytes", 10, None),
        ("pages=0-1", 10, None),
        ("bytes=1-2-3", 10, None),
        ("bytes=" + "1" * 19 + "-", 10, None),
    ],
)
def test_parse_range_header(header: str, size: int, expected: ByteRange | None) -> None:
    assert parse_range_header(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=-1", 0)])
def test_parse_range_header_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(UnsatisfiableRangeError):
        parse_range_header(header, size)


async def test_head_and_not_modified(fake: FakeBlobService) -> None:
    blob_id = fake.put(BLOB)
    etag = f'"{blob_id}"'
    async with gateway(fake) as (client, _):
        with trio.fail_after(TIMEOUT):
            head = await client.head(f"/v1/blobs/{blob_id}")
            head_range = await client.head(f"/v1/blobs/{blob_id}", headers={"Range": "bytes=-4"})
            head_calls = list(fake.calls)
            fake.calls.clear()
            cached = await client.get(
                f"/v1/blobs/{blob_id}", headers={"If-None-Match": f'"other", W/{etag}'}
            )
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(BLOB))
    assert head.content == b""
    assert head_range.status_code == 206
    assert (
        head_range.headers["content-range"] == f"bytes {len(BLOB) - 4}-{len(BLOB) - 1}/{len(BLOB)}"
    )
    # HEAD never reads the blob: only its first bytes, once, for the content type.
    assert head_calls == ["blob_status", "read_range 0 2048", "blob_status"]
    assert head.headers["content-type"] == head_range.headers["content-type"]
    assert cached.status_code == 304
    assert cached.headers["etag"] == etag
    assert fake.calls == []


# --- errors ----------------------------------------------------------------------------------


async def test_unknown_blob_is_404(fake: FakeBlobService) -> None:
    async with gateway(fake) as (client, _):
        with trio.fail_after(TIMEOUT):
            responses = [
                await client.get(f"/v1/blobs/{UNKNOWN_ID}"),
                await client.get(f"/v1/blobs/{UNKNOWN_ID}", headers={"Range": "bytes=0-1"}),
                await client.get(f"/v1/blobs/{UNKNOWN_ID}/byte-range?start=0&length=1"),
            ]
            head = await client.head(f"/v1/blobs/{UNKNOWN_ID}")
    assert [error_of(response) for response in responses] == [(404, "BLOB_NOT_FOUND")] * 3
    assert head.status_code == 404


async def test_malformed_blob_id_is_400(fake: FakeBlobService) -> None:
    valid = blob_id_to_text(bytes(range(32)))
    malformed = [
        "abc",
        valid + "A",
        valid[:-1] + "+",  # not URL-safe base64
        valid[:-1] + "B",  # non-canonical: the last character carries stray bits
        "%00" * 43,
    ]
    async with gateway(fake) as (client, _):
        for text in malformed:
            with trio.fail_after(TIMEOUT):
                plain = await client.get(f"/v1/blobs/{text}")
                ranged = await client.get(f"/v1/blobs/{text}/byte-range?start=0&length=1")
            assert error_of(plain) == (400, "INVALID_BLOB_ID"), text
            assert error_of(ranged) == (400, "INVALID_BLOB_ID"), text
    assert fake.calls == []


async def test_inconsistent_blob_is_410(fake: FakeBlobService) -> None:
    blob_id = fake.put(b"garbage")
    fake.invalid.add(BlobId(hashlib.sha256(b"garbage").digest()))
    async with gateway(fake) as (client, _):
        with trio.fail_after(TIMEOUT):
            plain = await client.get(f"/v1/blobs/{blob_id}")
            ranged = await client.get(f"/v1/blobs/{blob_id}", headers={"Range": "bytes=0-1"})
            byte_range = await client.get(f"/v1/blobs/{blob_id}/byte-range?start=0&length=1")
    for response in (plain, ranged, byte_range):
        assert error_of(response) == (410, "BLOB_INCONSISTENT")


@pytest.mark.parametrize(
    ("failure", "status", "reason"),
    [
        (QuorumError("only 3 of 10 shards"), 504, "NOT_ENOUGH_PEERS"),
        (RequestTimeoutError("slow"), 504, "TIMEOUT"),
        (NetworkError("down"), 502, "NETWORK_ERROR"),
        (ConfigError("secret-path-detail"), 500, "INTERNAL"),
        (RuntimeError("secret-detail"), 500, "INTERNAL"),
    ],
)
async def test_service_failures_map_to_stable_reasons(
    fake: FakeBlobService, failure: Exception, status: int, reason: str
) -> None:
    blob_id = fake.put(BLOB)
    fake.failure = failure
    async with gateway(fake) as (client, _):
        with trio.fail_after(TIMEOUT):
            responses = [
                await client.put("/v1/blobs?epochs=1", content=b"abc"),
                await client.get(f"/v1/blobs/{blob_id}"),
                await client.get(f"/v1/blobs/{blob_id}/byte-range?start=0&length=1"),
                await client.get("/status"),
            ]
    for response in responses:
        assert error_of(response) == (status, reason)
        assert "secret" not in response.text


async def test_store_the_gateway_cannot_pay_for_is_402_with_the_amount(
    fake: FakeBlobService,
) -> None:
    fake.balance = 5 * 1000 * 2 + 10  # covers one 1000-byte store of two epochs, not two
    async with gateway(fake) as (client, _):
        with trio.fail_after(TIMEOUT):
            paid = await client.put("/v1/blobs?epochs=2", content=b"a" * 1000)
            refused = await client.put("/v1/blobs?epochs=2", content=b"b" * 1000)
            fake.failure = OrderRefusedError("ORDER_CONFLICT", "another order for the slot")
            failed = await client.put("/v1/blobs?epochs=2", content=b"c" * 1000)
    assert paid.status_code == 200
    assert paid.json()["newlyCreated"]["cost"] == 10_000
    assert error_of(refused) == (402, "PAYMENT_REQUIRED")
    assert refused.json()["error"]["needed"] == 10_000
    assert refused.json()["error"]["balance"] == 10
    assert "10000" in refused.json()["error"]["message"]
    assert len(fake.blobs) == 1  # nothing stored for the refused one
    assert error_of(failed) == (503, "PAYMENT_FAILED")
    assert failed.json()["error"]["orderReason"] == "ORDER_CONFLICT"


async def test_unknown_route_and_wrong_method_are_json(fake: FakeBlobService) -> None:
    async with gateway(fake) as (client, _):
        with trio.fail_after(TIMEOUT):
            missing = await client.get("/v1/nothing")
            wrong = await client.delete("/v1/blobs")
    assert error_of(missing) == (404, "NOT_FOUND")
    assert error_of(wrong) == (405, "METHOD_NOT_ALLOWED")
    assert wrong.headers["allow"] == "PUT"


# --- body limit ------------------------------------------------------------------------------


async def test_oversized_body_with_content_length_is_413_before_reading(
    fake: FakeBlobService,
) -> None:
    async with gateway(fake, max_body=1024) as (client, probe):
        with trio.fail_after(TIMEOUT):
            refused = await client.put("/v1/blobs?epochs=1", content=b"x" * (4 << 20))
            received_when_refused = probe.body_bytes_received
            at_limit = await client.put("/v1/blobs?epochs=1", content=b"y" * 1024)
    assert error_of(refused) == (413, "PAYLOAD_TOO_LARGE")
    assert received_when_refused == 0
    assert at_limit.status_code == 200
    assert fake.stores == [(1024, 1, False)]


async def test_oversized_chunked_body_is_413_while_streaming(fake: FakeBlobService) -> None:
    chunk = b"z" * 4096
    total_chunks = 1024  # 4 MiB offered
    produced = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(total_chunks):
            produced += 1
            yield chunk

    async with gateway(fake, max_body=10_000) as (client, probe):
        with trio.fail_after(TIMEOUT):
            refused = await client.put("/v1/blobs?epochs=1", content=body())
            received_when_refused = probe.body_bytes_received
            small = await client.put("/v1/blobs?epochs=1", content=iter_async([b"a" * 5000] * 2))
    assert error_of(refused) == (413, "PAYLOAD_TOO_LARGE")
    # The app stopped pulling the body right past the limit, and the client was cut off early.
    assert 10_000 < received_when_refused <= 10_000 + 64 * 1024
    assert produced < total_chunks
    assert small.status_code == 200
    assert fake.stores == [(10_000, 1, False)]


async def iter_async(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_slow_body_is_408(fake: FakeBlobService) -> None:
    release = trio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        await release.wait()
        yield b"never read"

    outcome: list[object] = []

    async def upload(client: httpx.AsyncClient) -> None:
        try:
            outcome.append(await client.put("/v1/blobs?epochs=1", content=body()))
        except httpx.HTTPError as error:  # the server may close before the client reads
            outcome.append(error)

    async with gateway(fake, body_timeout_seconds=0.2) as (client, probe):
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(upload, client)
                await probe.responded.wait()
                release.set()
    assert probe.statuses == [408]
    assert fake.stores == []
    if isinstance(outcome[0], httpx.Response):
        assert error_of(outcome[0]) == (408, "REQUEST_TIMEOUT")


# --- overload --------------------------------------------------------------------------------


async def test_write_overload_is_429_then_recovers(fake: FakeBlobService) -> None:
    fake.gate, fake.entered = trio.Event(), trio.Event()
    blob_id = fake.put(BLOB)
    results: list[httpx.Response] = []

    async def slow_store(client: httpx.AsyncClient) -> None:
        results.append(await client.put("/v1/blobs?epochs=1", content=b"first"))

    async with gateway(fake, max_concurrent_writes=1, retry_after_seconds=3) as (client, _):
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow_store, client)
                await fake.entered.wait()
                busy = await client.put("/v1/blobs?epochs=1", content=b"second")
                status = await client.get("/status")
                fake.gate.set()
                fake.gate = None
            read = await client.get(f"/v1/blobs/{blob_id}")
            after = await client.put("/v1/blobs?epochs=1", content=b"third")
    assert error_of(busy) == (429, "TOO_MANY_REQUESTS")
    assert busy.headers["retry-after"] == "3"
    assert status.status_code == 200
    assert [response.status_code for response in results] == [200]
    assert read.status_code == 200
    assert after.status_code == 200
    assert [size for size, _, _ in fake.stores] == [5, 5]  # "second" never reached the service


async def test_read_overload_is_429_and_writes_are_separate(fake: FakeBlobService) -> None:
    blob_id = fake.put(BLOB)
    gate = fake.gate = trio.Event()
    fake.entered = trio.Event()
    results: list[httpx.Response] = []

    async def slow_read(client: httpx.AsyncClient) -> None:
        results.append(await client.get(f"/v1/blobs/{blob_id}"))

    async with gateway(fake, max_concurrent_reads=1) as (client, probe):
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow_read, client)
                await fake.entered.wait()
                busy = [
                    await client.get(f"/v1/blobs/{blob_id}"),
                    await client.get(f"/v1/blobs/{blob_id}/byte-range?start=0&length=1"),
                ]
                fake.gate = None  # later calls pass; the first read still waits on `gate`
                write = await client.put("/v1/blobs?epochs=1", content=b"w")
                api = await client.get("/v1/api")
                assert results == []
                gate.set()
            # The client has the last byte a moment before the server gives the slot back.
            while probe.app.state.admission.reads.in_flight:
                await trio.sleep(0.01)
            again = await client.get(f"/v1/blobs/{blob_id}")
    assert [error_of(response) for response in busy] == [(429, "TOO_MANY_REQUESTS")] * 2
    assert busy[0].headers["retry-after"] == "1"
    assert write.status_code == 200
    assert api.status_code == 200
    assert [response.content for response in results] == [BLOB]
    assert (again.status_code, again.content) == (200, BLOB)


# --- status and API document -----------------------------------------------------------------


async def test_status_follows_writability(fake: FakeBlobService) -> None:
    async with gateway(fake) as (client, _):
        with trio.fail_after(TIMEOUT):
            up = await client.get("/status")
            fake.writable = False
            down = await client.get("/status")
    assert up.status_code == 200
    assert up.json() == {
        "networkName": "devnet",
        "networkId": "abc",
        "epoch": 7,
        "shards": 10,
        "reachableShards": 10,
        "writable": True,
        "challengeEpoch": 6,
    }
    assert down.status_code == 503
    assert down.json()["writable"] is False
    assert down.json()["reachableShards"] == 3


def test_limits_are_validated() -> None:
    with pytest.raises(ConfigError):
        GatewayLimits(max_concurrent_writes=0)
    with pytest.raises(ConfigError):
        GatewayLimits(max_concurrent_reads=0)
    with pytest.raises(ConfigError):
        GatewayLimits(max_body=-1)
    with pytest.raises(ConfigError):
        GatewayLimits(body_timeout_seconds=0)


# A checker for the subset of JSON Schema (OpenAPI 3.1 dialect) the document uses; it refuses
# keywords it does not know, so the document cannot drift into something left unchecked.
_SCHEMA_KEYWORDS = {
    "$ref",
    "items",
    "type",
    "required",
    "properties",
    "additionalProperties",
    "enum",
    "pattern",
    "minimum",
    "oneOf",
    "default",
}
_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "boolean": bool,
    "null": type(None),
}


def resolve(document: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        reference = node["$ref"]
        assert reference.startswith("#/"), reference
        target: Any = document
        for part in reference[2:].split("/"):
            target = target[part]
        node = target
    return node


def schema_errors(document: dict[str, Any], schema: Any, value: Any, where: str = "$") -> list[str]:
    schema = resolve(document, schema)
    assert isinstance(schema, dict)
    unknown = set(schema) - _SCHEMA_KEYWORDS
    assert not unknown, f"unchecked schema keywords {unknown} at {where}"
    if "oneOf" in schema:
        matches = [s for s in schema["oneOf"] if not schema_errors(document, s, value, where)]
        return [] if len(matches) == 1 else [f"{where}: {len(matches)} oneOf branches match"]
    errors: list[str] = []
    if "type" in schema:
        expected = _TYPES[schema["type"]]
        if not isinstance(value, expected) or (
            schema["type"] == "integer" and isinstance(value, bool)
        ):
            return [f"{where}: {value!r} is not {schema['type']}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in enum")
    if "pattern" in schema and re.search(schema["pattern"], value) is None:
        errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{where}: {value!r} < {schema['minimum']}")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{where}: missing {name}")
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                errors.extend(schema_errors(document, properties[name], item, f"{where}.{name}"))
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}: unexpected {name}")
            elif isinstance(schema.get("additionalProperties"), dict):
                extra = schema["additionalProperties"]
                errors.extend(schema_errors(document, extra, item, f"{where}.{name}"))
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors.extend(schema_errors(document, schema["items"], item, f"{where}[{index}]"))
    return errors


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for item in node.values():
            yield from walk(item)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def check_openapi_shape(document: dict[str, Any]) -> None:
    assert re.fullmatch(r"3\.[01]\.\d+", document["openapi"])
    assert isinstance(document["info"]["title"], str)
    assert isinstance(document["info"]["version"], str)
    for node in walk(document):
        if isinstance(node, dict) and "$ref" in node:
            resolve(document, node)  # every reference resolves
    operation_ids = []
    for path, item in document["paths"].items():
        assert path.startswith("/")
        templated = set(re.findall(r"{(\w+)}", path))
        for method, operation in item.items():
            assert method in {"get", "put", "post", "delete", "head", "patch", "options"}
            operation_ids.append(operation["operationId"])
            parameters = [resolve(document, p) for p in operation.get("parameters", [])]
            for parameter in parameters:
                assert parameter["in"] in {"query", "header", "path", "cookie"}
                assert isinstance(parameter["name"], str)
                assert "schema" in parameter
                if parameter["in"] == "path":
                    assert parameter["required"] is True
            path_parameters = {p["name"] for p in parameters if p["in"] == "path"}
            assert path_parameters == templated, (path, method)
            assert operation["responses"]
            for status, response in operation["responses"].items():
                assert re.fullmatch(r"[1-5][0-9][0-9]|default", status)
                assert isinstance(resolve(document, response)["description"], str)
                for media in response.get("content", {}).values():
                    if "schema" in media:
                        schema_errors(document, media["schema"], None)  # known keywords only
    assert len(operation_ids) == len(set(operation_ids))


def response_schema(document: dict[str, Any], path: str, method: str, status: int) -> Any:
    response = document["paths"][path][method]["responses"][str(status)]
    return response["content"]["application/json"]["schema"]


async def test_openapi_document_is_valid_and_matches_real_responses(
    fake: FakeBlobService,
) -> None:
    async with gateway(fake, max_body=4096) as (client, _):
        with trio.fail_after(TIMEOUT):
            document_response = await client.get("/v1/api")
            created = await client.put("/v1/blobs?epochs=2", content=b"abc")
            certified = await client.put("/v1/blobs?epochs=2", content=b"abc")
            too_large = await client.put("/v1/blobs?epochs=2", content=b"x" * 5000)
            missing = await client.get(f"/v1/blobs/{UNKNOWN_ID}")
            status = await client.get("/status")
            fake.writable = False
            not_writable = await client.get("/status")
    assert document_response.status_code == 200
    document = document_response.json()
    check_openapi_shape(document)
    assert "4096" in document["info"]["description"]
    assert {(path, method) for path, item in document["paths"].items() for method in item} == {
        ("/v1/blobs", "put"),
        ("/v1/blobs/{blobId}", "get"),
        ("/v1/blobs/{blobId}", "head"),
        ("/v1/blobs/{blobId}/byte-range", "get"),
        ("/v1/quilts", "put"),
        ("/v1/blobs/by-quilt-patch-id/{quiltPatchId}", "get"),
        ("/v1/blobs/by-quilt-id/{blobId}/{identifier}", "get"),
        ("/v1/quilts/{blobId}/patches", "get"),
        ("/status", "get"),
        ("/v1/api", "get"),
    }
    store_schema = response_schema(document, "/v1/blobs", "put", 200)
    assert schema_errors(document, store_schema, created.json()) == []
    assert schema_errors(document, store_schema, certified.json()) == []
    assert schema_errors(document, store_schema, {"newlyCreated": {}}) != []  # checker can fail
    both = {**created.json(), **certified.json()}
    assert schema_errors(document, store_schema, both) != []  # exactly one of the two
    assert (
        schema_errors(
            document, response_schema(document, "/v1/blobs", "put", 413), too_large.json()
        )
        == []
    )
    read_404 = response_schema(document, "/v1/blobs/{blobId}", "get", 404)
    assert schema_errors(document, read_404, missing.json()) == []
    assert (
        schema_errors(document, response_schema(document, "/status", "get", 200), status.json())
        == []
    )
    assert (
        schema_errors(
            document, response_schema(document, "/status", "get", 503), not_writable.json()
        )
        == []
    )


async def test_serve_gateway_entry_point(fake: FakeBlobService) -> None:
    """The entry the CLI and the devnet call: started value is the bound URL, limits apply."""
    async with trio.open_nursery() as nursery:
        with trio.fail_after(TIMEOUT):
            urls = await nursery.start(
                partial(
                    serve_gateway,
                    fake,
                    "127.0.0.1:0",
                    GatewayLimits(max_body=16, max_concurrent_reads=2),
                )
            )
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", urls[0])
            async with httpx.AsyncClient(base_url=urls[0]) as client:
                status = await client.get("/status")
                too_large = await client.put("/v1/blobs?epochs=1", content=b"x" * 17)
        nursery.cancel_scope.cancel()
    assert status.status_code == 200
    assert error_of(too_large) == (413, "PAYLOAD_TOO_LARGE")


def test_public_api_is_pinned() -> None:
    assert set(walrus_p2p.api.__all__) == {
        "DEFAULT_ATTRIBUTE_HEADERS",
        "DEFAULT_BODY_TIMEOUT_SECONDS",
        "DEFAULT_MAX_BODY",
        "DEFAULT_MAX_BYTES_IN_FLIGHT",
        "DEFAULT_MAX_CONCURRENT_READS",
        "DEFAULT_MAX_CONCURRENT_READS_PER_ADDRESS",
        "DEFAULT_MAX_CONCURRENT_WRITES",
        "DEFAULT_MAX_CONCURRENT_WRITES_PER_ADDRESS",
        "DEFAULT_RETRY_AFTER_SECONDS",
        "ERROR_REASONS",
        "AuthPolicy",
        "ByteRange",
        "GatewayLimits",
        "GatewayPolicy",
        "UnsatisfiableRangeError",
        "attribute_headers_from_text",
        "build_gateway_app",
        "cors_origins_from_text",
        "openapi_document",
        "parse_blocklist",
        "parse_range_header",
        "serve_gateway",
        "store_outcome_json",
    }
    assert all(hasattr(walrus_p2p.api, name) for name in walrus_p2p.api.__all__)
