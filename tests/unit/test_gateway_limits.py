"""The gateway's bounds on strangers (docs/http-api.md, "Limits"), over real HTTP on 127.0.0.1.

Per-address and byte-budget refusals, oversized headers, a slowloris client cut at the head
deadline while a normal client is served, a downloader that never reads cut at the send deadline
with its read slot and bytes given back, and connections beyond the cap waiting to be accepted.
Every wait has a deadline; the deadlines under test are short (fractions of a second).
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio

from walrus_p2p.api import GatewayLimits, build_gateway_app
from walrus_p2p.api._admission import (
    BYTES,
    PER_ADDRESS,
    SMALL_BLOB_BYTES,
    Admission,
    AdmissionControl,
    ByteBudget,
    Refusals,
    RequestSlots,
)
from walrus_p2p.errors import ConfigError
from walrus_p2p.net.http import ConnectionStats, HttpLimits, serve_http
from walrus_p2p.testing.fake_service import FakeBlobService

TIMEOUT = 10
BLOB = bytes(range(256)) * 800  # 200 KiB


@dataclass
class Running:
    client: httpx.AsyncClient
    port: int
    control: AdmissionControl
    stats: ConnectionStats


@asynccontextmanager
async def gateway(service: FakeBlobService, **limits: Any) -> AsyncIterator[Running]:
    gateway_limits = GatewayLimits(**limits)
    app = build_gateway_app(service, gateway_limits)
    stats = ConnectionStats()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(TIMEOUT):
            urls = await nursery.start(
                lambda task_status: serve_http(
                    app,
                    "127.0.0.1:0",
                    limits=gateway_limits.http_limits(),
                    stats=stats,
                    task_status=task_status,
                )
            )
        port = int(urls[0].rsplit(":", 1)[1])
        async with httpx.AsyncClient(base_url=urls[0], timeout=TIMEOUT) as client:
            yield Running(client, port, app.state.admission, stats)
        nursery.cancel_scope.cancel()


@pytest.fixture
def fake() -> FakeBlobService:
    return FakeBlobService()


def reason_of(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["reason"]


async def raw_connection(port: int, *, receive_buffer: int | None = None) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect(("127.0.0.1", port))
    return sock


async def wait_until(condition: Any, what: str) -> None:
    with trio.fail_after(TIMEOUT):
        while not condition():
            await trio.sleep(0.02)


# --- per-address concurrency -----------------------------------------------------------------


async def test_reads_beyond_the_per_address_limit_are_429(fake: FakeBlobService) -> None:
    blob_id = fake.put(BLOB)
    fake.gate, fake.entered = trio.Event(), trio.Event()
    held: list[httpx.Response] = []

    async def held_read(client: httpx.AsyncClient) -> None:
        held.append(await client.get(f"/v1/blobs/{blob_id}"))

    async with gateway(fake, max_concurrent_reads_per_address=1, retry_after_seconds=2) as gw:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(held_read, gw.client)
                await fake.entered.wait()
                refused = await gw.client.get(f"/v1/blobs/{blob_id}/byte-range?start=0&length=9")
                status = await gw.client.get("/status")
                fake.gate.set()
                fake.gate = None
            # The client has the last byte a moment before the server task gives the slot back.
            await wait_until(lambda: gw.control.reads.in_flight == 0, "read slot given back")
            again = await gw.client.get(f"/v1/blobs/{blob_id}")
    assert reason_of(refused) == (429, "TOO_MANY_REQUESTS")
    assert refused.headers["retry-after"] == "2"
    assert "from this address" in refused.json()["error"]["message"]
    assert gw.control.refusals.counts[("read", PER_ADDRESS)] == 1
    # The gateway-wide limit (32) was far away; /status is not limited at all.
    assert status.status_code == 200
    assert [response.content for response in held] == [BLOB]
    assert (again.status_code, again.content) == (200, BLOB)


async def test_writes_beyond_the_per_address_limit_are_429(fake: FakeBlobService) -> None:
    fake.gate, fake.entered = trio.Event(), trio.Event()

    async def held_store(client: httpx.AsyncClient) -> None:
        await client.put("/v1/blobs?epochs=1", content=b"first")

    async with gateway(fake, max_concurrent_writes_per_address=1) as gw:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(held_store, gw.client)
                await fake.entered.wait()
                refused = await gw.client.put("/v1/blobs?epochs=1", content=b"second")
                fake.gate.set()
    assert reason_of(refused) == (429, "TOO_MANY_REQUESTS")
    assert [size for size, _, _ in fake.stores] == [5]
    assert gw.control.refusals.counts[("upload", PER_ADDRESS)] == 1


def test_one_address_at_its_limit_leaves_the_others_alone() -> None:
    slots = RequestSlots("read", total=3, per_address=2)
    assert slots.try_take("203.0.113.7") is None
    assert slots.try_take("203.0.113.7") is None
    assert slots.try_take("203.0.113.7") == PER_ADDRESS
    assert slots.try_take("198.51.100.1") is None
    assert slots.try_take("198.51.100.2") == "busy"  # the gateway-wide limit
    slots.give_back("203.0.113.7")
    slots.give_back("203.0.113.7")
    assert slots.in_flight_from("203.0.113.7") == 0
    assert slots.try_take("198.51.100.2") is None
    assert slots.in_flight == 2


# --- byte budget -----------------------------------------------------------------------------


async def test_requests_beyond_the_byte_budget_are_429_before_buffering(
    fake: FakeBlobService,
) -> None:
    blob_id = fake.put(BLOB)
    fake.gate, fake.entered = trio.Event(), trio.Event()
    budget = len(BLOB) + len(BLOB) // 2

    async def held_read(client: httpx.AsyncClient) -> None:
        await client.get(f"/v1/blobs/{blob_id}")

    async with gateway(fake, max_body=len(BLOB), max_bytes_in_flight=budget) as gw:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(held_read, gw.client)
                await fake.entered.wait()
                assert gw.control.budget.held == len(BLOB)
                calls_before = list(fake.calls)
                second_read = await gw.client.get(f"/v1/blobs/{blob_id}")
                upload = await gw.client.put("/v1/blobs?epochs=1", content=BLOB)
                small_range = await gw.client.get(
                    f"/v1/blobs/{blob_id}/byte-range?start=0&length=1000"
                )
                new_calls = fake.calls[len(calls_before) :]
                fake.gate.set()
                fake.gate = None
            await wait_until(lambda: gw.control.budget.held == 0, "bytes given back")
            after = await gw.client.put("/v1/blobs?epochs=1", content=BLOB)
    assert reason_of(second_read) == (429, "TOO_MANY_REQUESTS")
    assert reason_of(upload) == (429, "TOO_MANY_REQUESTS")
    assert "blob bytes" in upload.json()["error"]["message"]
    # Refused before reading: the second read only asked for the size, the upload never stored.
    # The small range, admitted, also read the blob's first 2 KiB once for its content type
    # (docs/http-api.md, "Web-ready reads").
    assert new_calls == ["blob_status", "blob_status", "read_range 0 1000", "read_range 0 2048"]
    assert small_range.status_code == 200
    assert gw.control.refusals.counts[("read", BYTES)] == 1
    assert gw.control.refusals.counts[("upload", BYTES)] == 1
    assert after.status_code == 200
    assert gw.control.budget.held == 0


async def test_a_chunked_upload_is_refused_when_it_outgrows_the_budget(
    fake: FakeBlobService,
) -> None:
    blob_id = fake.put(BLOB)
    fake.gate, fake.entered = trio.Event(), trio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"c" * 4096

    async def held_read(client: httpx.AsyncClient) -> None:
        await client.get(f"/v1/blobs/{blob_id}")

    budget = len(BLOB) + 100_000
    async with gateway(fake, max_body=budget, max_bytes_in_flight=budget) as gw:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(held_read, gw.client)
                await fake.entered.wait()
                try:
                    refused: httpx.Response | None = await gw.client.put(
                        "/v1/blobs?epochs=1", content=chunks()
                    )
                except httpx.HTTPError:  # the server may close before the client reads
                    refused = None
                held_during = gw.control.budget.held
                fake.gate.set()
    if refused is not None:
        assert reason_of(refused) == (429, "TOO_MANY_REQUESTS")
    assert gw.control.refusals.counts[("upload", BYTES)] == 1
    assert held_during == len(BLOB)  # the refused upload gave its part back at once
    assert fake.stores == []


async def test_a_blob_larger_than_the_whole_budget_is_503(fake: FakeBlobService) -> None:
    blob_id = fake.put(BLOB)
    async with gateway(fake, max_body=1000, max_bytes_in_flight=len(BLOB) - 1) as gw:
        with trio.fail_after(TIMEOUT):
            whole = await gw.client.get(f"/v1/blobs/{blob_id}")
            part = await gw.client.get(f"/v1/blobs/{blob_id}", headers={"Range": "bytes=0-99"})
    assert reason_of(whole) == (503, "BLOB_TOO_LARGE")
    assert "retry-after" not in whole.headers
    assert (part.status_code, part.content) == (206, BLOB[:100])
    assert "read" not in fake.calls


# --- connections -----------------------------------------------------------------------------


async def test_oversized_headers_are_431_and_the_connection_closed(fake: FakeBlobService) -> None:
    async with gateway(fake, max_header_bytes=4096) as gw:
        with trio.fail_after(TIMEOUT):
            fitting = await gw.client.get("/status", headers={"X-Padding": "p" * 2000})
            sock = await raw_connection(gw.port)
            with sock:
                await sock.send(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 32768)
                reply = b""
                while chunk := await sock.recv(65536):
                    reply += chunk
    assert fitting.status_code == 200
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert b"connection: close" in reply.lower()
    assert fake.calls == ["network_status"]  # the oversized request never reached the app


async def test_slowloris_is_cut_at_the_head_deadline_while_others_are_served(
    fake: FakeBlobService,
) -> None:
    served: list[int] = []
    cut_after: list[float] = []

    async def slowloris(port: int) -> None:
        sock = await raw_connection(port)
        started = time.monotonic()
        with sock:
            try:
                for byte in b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200:
                    await sock.send(bytes([byte]))
                    await trio.sleep(0.05)
            except OSError:
                cut_after.append(time.monotonic() - started)

    async with gateway(fake, header_timeout_seconds=0.5) as gw:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(slowloris, gw.port)
                while len(cut_after) < 5:
                    served.append((await gw.client.get("/status")).status_code)
                    await trio.sleep(0.05)
    # The head never completes (201 bytes at 20 per second need 10 s): each is cut at 0.5 s,
    # although it sent a byte every 50 ms, and the normal client was served all along.
    assert len(cut_after) == 5
    assert all(0.4 <= seconds <= 2.0 for seconds in cut_after), cut_after
    assert len(served) >= 5
    assert set(served) == {200}


async def test_a_downloader_that_never_reads_is_cut_and_its_slot_given_back(
    fake: FakeBlobService,
) -> None:
    big = bytes(8 << 20)
    blob_id = fake.put(big)
    async with gateway(
        fake, max_concurrent_reads=1, send_timeout_seconds=0.5, max_bytes_in_flight=16 << 20
    ) as gw:
        with trio.fail_after(TIMEOUT):
            sock = await raw_connection(gw.port, receive_buffer=4096)
            with sock:
                await sock.send(f"GET /v1/blobs/{blob_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                await wait_until(lambda: gw.control.reads.in_flight == 1, "read admitted")
                started = time.monotonic()
                assert gw.control.budget.held == len(big)
                await wait_until(lambda: gw.control.reads.in_flight == 0, "read cut")
                released_after = time.monotonic() - started
                # The only read slot is free again: an honest read gets it.
                small_id = fake.put(b"small")
                honest = await gw.client.get(f"/v1/blobs/{small_id}")
    assert 0.3 <= released_after <= 3.0, released_after
    assert gw.control.budget.held == 0
    assert gw.stats.send_timeouts >= 1
    assert (honest.status_code, honest.content) == (200, b"small")


async def test_connections_beyond_the_cap_wait_until_one_is_freed(fake: FakeBlobService) -> None:
    async with gateway(fake, max_connections=1, header_timeout_seconds=0.5) as gw:
        with trio.fail_after(TIMEOUT):
            idle = await raw_connection(gw.port)  # takes the only slot, sends nothing
            with idle:
                await wait_until(lambda: gw.stats.open == 1, "idle connection accepted")
                started = time.monotonic()
                response = await gw.client.get("/status")
                waited = time.monotonic() - started
                closed_by_server = await idle.recv(1) == b""
    assert response.status_code == 200
    # Served only once the idle connection's head deadline freed the slot.
    assert waited >= 0.4, waited
    assert closed_by_server
    assert gw.stats.waited_for_slot >= 1


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limits",
    [
        {"max_concurrent_writes_per_address": 0},
        {"max_concurrent_reads_per_address": 0},
        {"max_body": 2000, "max_bytes_in_flight": 1999},
        {"max_connections": 0},
        {"max_header_bytes": 100},
        {"header_timeout_seconds": 0},
        {"send_timeout_seconds": -1},
    ],
)
def test_bad_limits_are_config_errors(limits: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        GatewayLimits(**limits)


def test_limits_describe_themselves_and_split_off_the_connection_part() -> None:
    limits = GatewayLimits(max_connections=7, header_timeout_seconds=2.5)
    assert limits.http_limits() == HttpLimits(max_connections=7, header_timeout_seconds=2.5)
    line = limits.describe()
    assert "max_connections=7" in line
    assert "max_concurrent_reads_per_address=8" in line
    assert "max_bytes_in_flight=1073741824" in line


async def test_a_dripping_upload_is_408_once_below_the_minimum_rate(
    fake: FakeBlobService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("walrus_p2p.api._gateway.BODY_GRACE_SECONDS", 0.3)
    async with gateway(fake, min_body_rate=1000, max_concurrent_writes=1) as gw:
        with trio.fail_after(TIMEOUT):
            sock = await raw_connection(gw.port)
            with sock:
                await sock.send(
                    b"PUT /v1/blobs?epochs=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                )
                started = time.monotonic()
                reply = b""
                with trio.move_on_after(5):
                    while not reply:
                        await sock.send(b"d" * 10)  # 100 bytes/s, a tenth of the floor
                        with trio.move_on_after(0.1):
                            reply = await sock.recv(65536)
                cut_after = time.monotonic() - started
                while chunk := await sock.recv(65536):
                    reply += chunk
            await wait_until(lambda: gw.control.uploads.in_flight == 0, "upload slot given back")
            fast = await gw.client.put("/v1/blobs?epochs=1", content=b"f" * 100_000)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert b"REQUEST_TIMEOUT" in reply
    assert 0.25 <= cut_after <= 2.0, cut_after
    assert fast.status_code == 200
    assert [size for size, _, _ in fake.stores] == [100_000]


async def test_a_slow_upload_never_holds_a_write_slot(fake: FakeBlobService) -> None:
    """The write slot (a store into the network) is taken once the body is complete: with one
    write slot and an upload dripping its body, another client's store goes through."""
    async with gateway(fake, max_concurrent_writes=1) as gw:
        with trio.fail_after(TIMEOUT):
            sock = await raw_connection(gw.port)
            with sock:
                await sock.send(
                    b"PUT /v1/blobs?epochs=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                    + b"d" * 10
                )
                await wait_until(lambda: gw.control.budget.held == 10, "the drip's bytes held")
                assert gw.control.uploads.in_flight == 1
                assert gw.control.writes.in_flight == 0
                fast = await gw.client.put("/v1/blobs?epochs=1", content=b"f" * 5000)
                # The fast store's bytes go back a moment after its reply; the drip holds only
                # what it sent, not the 1000 bytes it announced.
                await wait_until(lambda: gw.control.budget.held == 10, "the fast store's bytes")
    assert fast.status_code == 200
    assert [size for size, _, _ in fake.stores] == [5000]


def test_hypercorn_is_the_version_serve_http_was_written_for() -> None:
    """serve_http drives hypercorn's per-connection server itself (net/http.py): a new hypercorn
    minor version must be checked against it before this test is changed."""
    from walrus_p2p.net.http import HYPERCORN_SERIES, hypercorn_is_supported

    assert hypercorn_is_supported(), HYPERCORN_SERIES


def test_an_address_without_a_read_gets_one_even_when_every_slot_is_taken() -> None:
    """Slow readers from many addresses holding every read slot cannot lock a newcomer out."""
    slots = RequestSlots("read", total=2, per_address=8, guaranteed_per_address=1)
    assert slots.try_take("198.51.100.1") is None
    assert slots.try_take("198.51.100.2") is None
    assert slots.try_take("198.51.100.1") == "busy"  # it already has its guaranteed one
    assert slots.try_take("203.0.113.7") is None  # a newcomer, above the total
    assert slots.in_flight == 3
    assert slots.try_take("203.0.113.7") == "busy"


def test_small_blobs_are_never_refused_by_the_byte_budget() -> None:
    budget = ByteBudget(100_000)
    assert budget.try_take(90_000)
    assert not budget.try_take(20_000 + SMALL_BLOB_BYTES)  # big: refused
    assert budget.try_take(SMALL_BLOB_BYTES)  # small: counted, over the total
    assert budget.held == 90_000 + SMALL_BLOB_BYTES
    # A request that already holds bytes is small only while all it holds is.
    assert not budget.try_take(1, already=SMALL_BLOB_BYTES)


async def test_the_slot_is_free_before_the_last_bytes_of_the_answer_leave() -> None:
    """A client that sends its next request as soon as it has an answer finds its slot free:
    with one upload per address, a sequential client got a 429 when the slot was given back
    only after the handler returned (seen in tests/testnet/test_devnet.py)."""
    slots = RequestSlots("upload", total=4, per_address=1)
    control = AdmissionControl(
        reads=RequestSlots("read", total=4, per_address=1),
        uploads=slots,
        writes=RequestSlots("write", total=4, per_address=1),
        budget=ByteBudget(1 << 20),
        refusals=Refusals(),
        retry_after_seconds=1,
    )
    address = "127.0.0.9"
    held_at_each_message: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await send({"type": "http.response.body", "body": b"end"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        held_at_each_message.append(slots.in_flight_from(address))

    scope = {"type": "http", "client": (address, 5555), "method": "PUT", "path": "/v1/blobs"}
    await Admission(app, control, slots)(scope, receive, send)
    assert held_at_each_message == [1, 1, 0]
    assert slots.in_flight == 0 and slots.in_flight_from(address) == 0
