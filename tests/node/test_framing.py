"""Frames over an in-memory byte stream: sizes, truncation, timeouts, and the names helpers."""

from __future__ import annotations

import logging
import tracemalloc

import pytest
import trio

from walrus_p2p.core import memory
from walrus_p2p.errors import ConfigError, RemoteError, RequestTimeoutError, WireError
from walrus_p2p.net.framing import encode_header, read_frame, write_frame
from walrus_p2p.net.logs import RateLimitedForwarder
from walrus_p2p.net.names import protocol_id, topic
from walrus_p2p.net.rpc import decode_reply, encode_error


class MemoryStream:
    """Bytes written are read back in chunks of at most ``chunk``; EOF after ``close``."""

    def __init__(self, data: bytes = b"", *, chunk: int = 3, eof: bool = True) -> None:
        self.buffer = bytearray(data)
        self.chunk = chunk
        self.eof = eof
        self.largest_read_request = 0

    async def read(self, max_bytes: int) -> bytes:
        self.largest_read_request = max(self.largest_read_request, max_bytes)
        await trio.lowlevel.checkpoint()
        if not self.buffer:
            if self.eof:
                return b""
            await trio.sleep_forever()
        taken = bytes(self.buffer[: min(max_bytes, self.chunk)])
        del self.buffer[: len(taken)]
        return taken

    async def write(self, data: bytes | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.buffer += data


async def test_round_trip_in_small_chunks() -> None:
    stream = MemoryStream()
    # The last two take the large-frame path: one and three write chunks.
    payloads = (b"", b"a", b"hello world" * 1000, bytes(range(256)) * 300, bytes(range(256)) * 9000)
    for payload in payloads:
        # Three-byte reads for the small frames; the 2.3 MB one in reads of a prime size that
        # still cut its write chunks anywhere (768k reads of 3 bytes took over 5 s of event loop).
        stream.chunk = 3 if len(payload) < 100_000 else 65_521
        await write_frame(stream, payload, max_size=len(payload))
        assert await read_frame(stream, max_size=4 << 20, timeout=5) == payload
    assert not stream.buffer


async def test_prefix_is_part_of_the_frame() -> None:
    stream = MemoryStream(chunk=70_000)
    for payload in (b"", b"reply", bytes(range(256)) * 9000):
        await write_frame(stream, payload, max_size=len(payload) + 1, prefix=b"\x00")
        assert await read_frame(stream, max_size=4 << 20, timeout=5) == b"\x00" + payload
    with pytest.raises(WireError):
        await write_frame(stream, b"12345", max_size=5, prefix=b"\x00")
    assert not stream.buffer


async def test_big_frames_are_read_into_one_bytearray_whatever_the_chunks() -> None:
    # At MIN_HUGE_BYTES and above, read_exactly appends the chunks to a bytearray it owns
    # instead of joining them: the payload must come out the same, as that bytearray.
    size = memory.MIN_HUGE_BYTES + 12_345
    payload = bytes(range(251)) * (size // 251) + b"tail"
    for chunk in (70_001, 1 << 20, size):
        stream = MemoryStream(chunk=chunk)
        await write_frame(stream, payload, max_size=len(payload))
        got = await read_frame(stream, max_size=len(payload), timeout=10)
        assert type(got) is bytearray and got == payload
        assert stream.largest_read_request <= 1 << 20
        assert not stream.buffer


async def test_a_big_frame_cut_short_is_an_error_not_a_short_payload() -> None:
    size = memory.MIN_HUGE_BYTES + 1
    stream = MemoryStream(encode_header(size) + b"x" * (size - 1), chunk=1 << 20)
    with pytest.raises(WireError, match="ended inside a frame"):
        await read_frame(stream, max_size=size, timeout=10)
    stalled = MemoryStream(encode_header(size) + b"x" * 1000, chunk=1 << 20, eof=False)
    with pytest.raises(RequestTimeoutError):
        await read_frame(stalled, max_size=size, timeout=0.2)


@pytest.mark.parametrize("sent", [3, 3 << 20])
async def test_an_announced_size_is_not_allocated_before_the_bytes_arrive(sent: int) -> None:
    """A stranger announcing a 16 MiB frame and sending a few bytes (or 3 MiB) before EOF gets a
    clean error, and the reader's memory followed what arrived, not what was announced."""
    announced = 16 << 20
    assert announced >= memory.MIN_HUGE_BYTES
    stream = MemoryStream(encode_header(announced) + b"x" * sent, chunk=1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(WireError, match=f"ended inside a frame body: got={sent} "):
            await read_frame(stream, max_size=announced, timeout=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Received bytes (plus a growing buffer's slack and one chunk in flight), far from 16 MiB.
    assert peak < 2 * sent + (2 << 20)
    assert peak < announced // 2


async def test_oversized_frame_is_refused_before_reading_the_body() -> None:
    stream = MemoryStream(encode_header(2**32 - 1) + b"x" * 10, eof=False)
    with pytest.raises(WireError, match="too large"):
        await read_frame(stream, max_size=1024, timeout=5)
    assert stream.largest_read_request <= 4  # only the header was asked for
    with pytest.raises(WireError, match="too large to send"):
        await write_frame(MemoryStream(), b"x" * 11, max_size=10)


async def test_truncated_frames_are_errors_never_short_payloads() -> None:
    for data in (b"\x00\x00", encode_header(10) + b"12345"):
        with pytest.raises(WireError, match="inside a frame"):
            await read_frame(MemoryStream(data), max_size=100, timeout=5)
    with pytest.raises(WireError):
        await read_frame(MemoryStream(b""), max_size=100, timeout=5)


async def test_every_read_has_a_deadline() -> None:
    stream = MemoryStream(encode_header(10) + b"123", eof=False)
    with trio.fail_after(5), pytest.raises(RequestTimeoutError):
        await read_frame(stream, max_size=100, timeout=0.05)


def test_error_replies_round_trip_and_reject_nonsense() -> None:
    with pytest.raises(RemoteError) as error:
        decode_reply(encode_error("NOT_FOUND", "no such blob"))
    assert error.value.reason == "NOT_FOUND" and error.value.message == "no such blob"
    with pytest.raises(RemoteError) as masked:
        decode_reply(encode_error("lower case!", "x"))
    assert masked.value.reason == "INTERNAL"
    assert decode_reply(b"\x00payload") == b"payload"
    for bad in (b"", b"\x02x", b"\x01no separator", b"\x01bad reason\x00x"):
        with pytest.raises(WireError):
            decode_reply(bad)
    assert len(encode_error("INTERNAL", "x" * 100_000)) <= 1025


def test_names() -> None:
    assert protocol_id("devnet-abc", "store") == "/walrus-p2p/devnet-abc/store/1.0.0"
    assert topic("devnet-abc", "blob-events") == "walrus-p2p/devnet-abc/blob-events"
    for bad in ("", "a/b", "a b", "x" * 129):
        with pytest.raises(ConfigError):
            protocol_id(bad, "store")
        with pytest.raises(ConfigError):
            topic("net", bad)
    with pytest.raises(ConfigError):
        protocol_id("net", "store", version="1")


def test_log_forwarder_renames_and_rate_limits(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    forwarder = RateLimitedForwarder(burst=3, window_seconds=60, clock=lambda: now[0])
    source = logging.getLogger("libp2p.test_forwarder")
    source.propagate = False
    source.addHandler(forwarder)
    try:
        with caplog.at_level(logging.WARNING, logger="walrus_p2p.net.libp2p"):
            for index in range(10):
                source.warning("noisy %d", index)
            now[0] = 61.0
            source.warning("after the window")
        names = {record.name for record in caplog.records}
        assert names == {"walrus_p2p.net.libp2p.test_forwarder"}
        messages = [record.getMessage() for record in caplog.records]
        assert messages[:3] == ["noisy 0", "noisy 1", "noisy 2"]
        assert "dropped=7" in messages[3]
        assert messages[4] == "after the window"
    finally:
        source.removeHandler(forwarder)


def test_public_api_is_pinned() -> None:
    import walrus_p2p.net as net

    assert sorted(net.__all__) == [
        "DhtMode",
        "Discovery",
        "DiscoveryConfig",
        "Gossip",
        "GossipConfig",
        "GossipMessage",
        "Handler",
        "HandlerLimits",
        "Host",
        "HostConfig",
        "Stream",
        "StreamHandler",
        "Subscription",
        "Validator",
        "open_discovery",
        "open_gossip",
        "open_host",
        "peer_id_from_seed",
        "protocol_id",
        "read_frame",
        "route_libp2p_logs",
        "split_peer_addr",
        "topic",
        "write_frame",
    ]
    for name in net.__all__:
        assert getattr(net, name) is not None


def test_routine_library_failures_are_forwarded_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """A failed dial and a connection this process closed are logged by libp2p at ERROR; they
    are routine (the caller sees the failure too) and reach our loggers at DEBUG, while other
    library errors keep their level (docs/network.md, "Logs")."""
    forwarder = RateLimitedForwarder(burst=10, window_seconds=60)
    names = ("libp2p.transport.tcp.tcp", "libp2p.stream_muxer.yamux.yamux")
    sources = [logging.getLogger(name) for name in names]
    for source in sources:
        source.propagate = False
        source.addHandler(forwarder)
    try:
        with caplog.at_level(logging.DEBUG, logger="walrus_p2p.net.libp2p"):
            sources[0].error("Failed to open TCP stream: %s", "connection refused")
            sources[1].error("Error in handle_incoming for peer 12D3Koo: ClosedResourceError: ")
            sources[1].error("Error in handle_incoming for peer 12D3Koo: ValueError: bad frame")
        levels = [(record.name.rsplit(".", 1)[-1], record.levelname) for record in caplog.records]
        assert levels == [("tcp", "DEBUG"), ("yamux", "DEBUG"), ("yamux", "ERROR")]
    finally:
        for source in sources:
            source.removeHandler(forwarder)
