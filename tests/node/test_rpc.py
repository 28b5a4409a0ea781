"""Request/reply between real hosts, and what happens when the other side misbehaves."""

from __future__ import annotations

import logging

import pytest
import trio

from walrus_p2p.core import wire
from walrus_p2p.errors import (
    ConfigError,
    NetworkError,
    NotFoundError,
    PeerUnreachableError,
    RemoteError,
    RequestTimeoutError,
    WireError,
)
from walrus_p2p.net.framing import encode_header, read_frame, write_frame
from walrus_p2p.net.host import Host, HostConfig, open_host, peer_id_from_seed, split_peer_addr
from walrus_p2p.net.inbound import InboundLimits
from walrus_p2p.net.names import protocol_id
from walrus_p2p.net.rpc import HandlerLimits, decode_reply
from walrus_p2p.net.stream import DRAIN_LIMIT, Stream
from walrus_p2p.node.metrics import PeerMetrics
from walrus_p2p.testing.network import STEP, host_seed_for, open_test_host
from walrus_p2p.types import PeerId

ECHO = protocol_id("test-net", "echo")
RAW = protocol_id("test-net", "raw")


async def echo(payload: bytes, remote: PeerId) -> bytes:
    return b"echo:" + payload


def serve_echo(host: Host) -> None:
    host.set_handler(ECHO, echo, HandlerLimits(max_request=1024, read_timeout=2.0))


def introduce(client: Host, server: Host) -> None:
    """Give the client the server's addresses; its first request dials."""
    client.add_addrs(server.peer_id, server.listen_addrs)


async def assert_still_serving(client: Host, server: Host) -> None:
    """The proof that a failure left the server intact: a normal request succeeds."""
    with trio.fail_after(STEP):
        assert await client.request(server.peer_id, ECHO, b"ok", timeout=STEP) == b"echo:ok"


async def test_same_seed_same_peer_id_across_restarts() -> None:
    seed = host_seed_for("restart")
    with trio.fail_after(STEP):
        async with open_host(HostConfig(seed=seed)) as first:
            first_id = first.peer_id
        async with open_host(HostConfig(seed=seed)) as second:
            assert second.peer_id == first_id
    assert peer_id_from_seed(seed) == first_id
    assert first_id.startswith("12D3KooW")  # Ed25519 identity


async def test_round_trip_and_many_sequential_requests() -> None:
    async with open_test_host("alice") as alice, open_test_host("bob") as bob:
        serve_echo(bob.host)
        with trio.fail_after(STEP):
            await alice.host.connect(bob.host.peer_id, bob.host.listen_addrs, timeout=STEP)
        assert bob.host.peer_id in alice.host.connected_peers()
        with trio.fail_after(STEP):
            reply = await alice.host.request(bob.host.peer_id, ECHO, b"hello", timeout=STEP)
        assert reply == b"echo:hello"
        # More than yamux's 256-stream backlog: only passes if every stream is closed.
        with trio.fail_after(3 * STEP):
            for index in range(300):
                payload = index.to_bytes(2, "big")
                reply = await alice.host.request(bob.host.peer_id, ECHO, payload, timeout=STEP)
                assert reply == b"echo:" + payload
        for host in (alice.host, bob.host):
            network = host.libp2p_host.get_network()
            open_streams = sum(
                len(connection.get_streams())
                for connections in network.connections.values()
                for connection in connections
            )
            assert open_streams < 10


async def test_request_dials_from_known_addresses_and_bootstrap_string() -> None:
    async with open_test_host("alice") as alice, open_test_host("bob") as bob:
        serve_echo(bob.host)
        peer_id, address = split_peer_addr(bob.host.peer_addrs[0])
        assert peer_id == bob.host.peer_id
        alice.host.add_addrs(peer_id, [address])
        with trio.fail_after(STEP):
            assert await alice.host.request(peer_id, ECHO, b"x", timeout=STEP) == b"echo:x"


async def test_handler_errors_become_remote_errors_and_host_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def failing(payload: bytes, remote: PeerId) -> bytes:
        if payload == b"missing":
            raise NotFoundError("no such sliver")
        raise RuntimeError("secret internal detail")

    failing_protocol = protocol_id("test-net", "failing")
    async with open_test_host("alice") as alice, open_test_host("bob") as bob:
        serve_echo(bob.host)
        introduce(alice.host, bob.host)
        bob.host.set_handler(failing_protocol, failing)
        with trio.fail_after(STEP):
            with pytest.raises(RemoteError) as known:
                await alice.host.request(
                    bob.host.peer_id, failing_protocol, b"missing", timeout=STEP
                )
            assert known.value.reason == "NOT_FOUND"
            assert "no such sliver" in str(known.value)
            with (
                caplog.at_level(logging.ERROR, logger="walrus_p2p.net.rpc"),
                pytest.raises(RemoteError) as unknown,
            ):
                await alice.host.request(bob.host.peer_id, failing_protocol, b"?", timeout=STEP)
            assert unknown.value.reason == "INTERNAL"
            assert "secret" not in str(unknown.value)
            assert any("handler crashed" in record.message for record in caplog.records)
        await assert_still_serving(alice.host, bob.host)


async def test_oversized_request_is_refused_before_it_is_read() -> None:
    async with open_test_host("alice") as alice, open_test_host("bob") as bob:
        serve_echo(bob.host)  # max_request=1024
        introduce(alice.host, bob.host)
        with trio.fail_after(STEP):
            # The client's own cap is checked before anything is sent.
            with pytest.raises(WireError):
                await alice.host.request(
                    bob.host.peer_id, ECHO, b"x" * 2000, timeout=STEP, max_request=1024
                )
            # The server's cap: 4 MiB of request against a 1 KiB limit. The server answers
            # from the header alone; the client must not hang on flow control.
            with pytest.raises(RemoteError) as refused:
                await alice.host.request(
                    bob.host.peer_id, ECHO, b"x" * (4 << 20), timeout=STEP, max_request=8 << 20
                )
            assert refused.value.reason == "WIRE_MALFORMED"
            # Raw: a header announcing 3 GiB and nothing else.
            stream = await alice.host.open_stream(bob.host.peer_id, ECHO)
            try:
                await stream.write(encode_header(3 << 30))
                with pytest.raises(RemoteError) as raw_refused:
                    from walrus_p2p.net.rpc import decode_reply

                    decode_reply(await read_frame(stream, max_size=4096, timeout=STEP))
                assert raw_refused.value.reason == "WIRE_MALFORMED"
            finally:
                await stream.reset()
        await assert_still_serving(alice.host, bob.host)


async def test_garbage_and_truncated_requests_leave_the_server_serving() -> None:
    async with open_test_host("alice") as alice, open_test_host("bob") as bob:
        serve_echo(bob.host)
        introduce(alice.host, bob.host)
        introduce(alice.host, bob.host)
        with trio.fail_after(STEP):
            # Garbage: random bytes read as a length far above the cap.
            stream = await alice.host.open_stream(bob.host.peer_id, ECHO)
            try:
                await stream.write(b"\xde\xad\xbe\xef garbage garbage")
                await stream.close_write()
                frame = await read_frame(stream, max_size=4096, timeout=STEP)
                assert frame[0] == 1 and frame[1:].startswith(b"WIRE_MALFORMED\x00")
            finally:
                await stream.reset()
            # Cut mid-frame: a header for 100 bytes, 10 bytes, then end of stream.
            stream = await alice.host.open_stream(bob.host.peer_id, ECHO)
            try:
                await stream.write(encode_header(100) + b"0123456789")
                await stream.close_write()
                frame = await read_frame(stream, max_size=4096, timeout=STEP)
                assert frame[0] == 1 and b"inside a frame" in frame
            finally:
                await stream.reset()
            # Cut mid-frame by a reset: the server sees a dead stream and moves on.
            stream = await alice.host.open_stream(bob.host.peer_id, ECHO)
            await stream.write(encode_header(100) + b"01234")
            await stream.reset()
            # Silence: the server's read timeout (2 s here) answers TIMEOUT.
            stream = await alice.host.open_stream(bob.host.peer_id, ECHO)
            try:
                await stream.write(encode_header(100))
                frame = await read_frame(stream, max_size=4096, timeout=STEP)
                assert frame[1:].startswith(b"TIMEOUT\x00")
            finally:
                await stream.reset()
        await assert_still_serving(alice.host, bob.host)


async def test_misbehaving_server_gives_the_right_client_errors() -> None:
    async def misbehave(stream: Stream) -> None:
        request = await read_frame(stream, max_size=1024, timeout=STEP)
        if request == b"oversized":
            await stream.write(encode_header(10 << 20) + b"\x00" * 1000)
        elif request == b"truncated":
            await stream.write(encode_header(1000) + b"\x00" * 10)
            await stream.close()  # FIN mid-frame: looks like a normal end of stream
        elif request == b"reset":
            await stream.write(encode_header(1000) + b"\x00" * 10)
            await stream.reset()
        elif request == b"garbage":
            await write_frame(stream, b"\x07 not a reply", max_size=1024)
        elif request == b"silent":
            await trio.sleep(STEP)
        else:
            await write_frame(stream, b"\x00fine", max_size=1024)

    async with open_test_host("alice") as alice, open_test_host("bob") as bob:
        bob.host.set_stream_handler(RAW, misbehave)
        serve_echo(bob.host)
        introduce(alice.host, bob.host)
        introduce(alice.host, bob.host)
        server = bob.host.peer_id
        with trio.fail_after(STEP):
            with pytest.raises(WireError, match="too large"):
                await alice.host.request(server, RAW, b"oversized", timeout=STEP, max_reply=1 << 20)
            # A reply cut short is what a peer that dies mid-reply looks like.
            with pytest.raises(PeerUnreachableError, match="inside a frame"):
                await alice.host.request(server, RAW, b"truncated", timeout=STEP)
            with pytest.raises(PeerUnreachableError):
                await alice.host.request(server, RAW, b"reset", timeout=STEP)
            with pytest.raises(WireError, match="status"):
                await alice.host.request(server, RAW, b"garbage", timeout=STEP)
            with pytest.raises(RequestTimeoutError):
                await alice.host.request(server, RAW, b"silent", timeout=0.5)
            assert await alice.host.request(server, RAW, b"normal", timeout=STEP) == b"fine"
        await assert_still_serving(alice.host, bob.host)


async def test_unreachable_peer_and_unknown_protocol() -> None:
    async with open_test_host("alice") as alice, open_test_host("bob") as bob:
        serve_echo(bob.host)
        introduce(alice.host, bob.host)
        ghost = peer_id_from_seed(host_seed_for("ghost"))
        bob_address = bob.host.listen_addrs[0]
        dead_address = "/ip4/127.0.0.1/tcp/1"
        with trio.fail_after(STEP):
            with pytest.raises(PeerUnreachableError):
                await alice.host.connect(ghost, [dead_address], timeout=STEP)
            with pytest.raises(PeerUnreachableError):
                await alice.host.request(ghost, ECHO, b"x", timeout=STEP)
            # Bob's address answered by bob: the identity check fails, not a hang.
            with pytest.raises(PeerUnreachableError):
                await alice.host.connect(ghost, [bob_address], timeout=STEP)
            with pytest.raises(NetworkError) as unsupported:
                await alice.host.request(
                    bob.host.peer_id, protocol_id("test-net", "nope"), b"x", timeout=STEP
                )
            assert unsupported.value.reason == "PROTOCOL_NOT_SUPPORTED"
        await assert_still_serving(alice.host, bob.host)


async def test_failed_dial_does_not_block_an_explicit_reconnect() -> None:
    seed = host_seed_for("comeback")
    async with open_test_host("alice") as alice:
        async with open_host(HostConfig(seed=seed)) as first:
            address = first.listen_addrs[0]
            peer_id = first.peer_id
        # The peer is gone: this dial fails and libp2p puts the peer in its negative cache.
        with trio.fail_after(STEP), pytest.raises(PeerUnreachableError):
            await alice.host.connect(peer_id, [address], timeout=STEP)
        # It comes back (same identity, new port); an explicit connect works at once.
        async with open_host(HostConfig(seed=seed)) as second:
            serve_echo(second)
            with trio.fail_after(STEP):
                await alice.host.connect(peer_id, second.listen_addrs, timeout=STEP)
                assert (
                    await alice.host.request(peer_id, ECHO, b"back", timeout=STEP) == b"echo:back"
                )


async def test_timeout_during_a_large_write_keeps_the_connection_usable() -> None:
    """A deadline that lands inside a write must not corrupt the Noise session.

    Without the shielded yamux frame writes (host._ShieldedYamux) the cancelled write leaves
    a partial ciphertext, the server fails to decrypt the next frame and the connection, with
    every other stream on it, is dropped.
    """

    async def drains_and_never_answers(stream: Stream) -> None:
        # Reading as fast as it can keeps the client's writes in flight, so the client's
        # deadline lands in the middle of a socket write rather than in a flow-control wait.
        while await stream.read(1 << 20):
            pass
        await trio.sleep(STEP)

    async with open_test_host("alice") as alice, open_test_host("bob") as bob:
        serve_echo(bob.host)
        introduce(alice.host, bob.host)
        bob.host.set_stream_handler(RAW, drains_and_never_answers)
        with trio.fail_after(STEP):
            await alice.host.connect(bob.host.peer_id, bob.host.listen_addrs)
            network = alice.host.libp2p_host.get_network()
            (connection,) = network.get_connections()
            for _ in range(3):
                with pytest.raises(RequestTimeoutError):
                    await alice.host.request(
                        bob.host.peer_id, RAW, b"x" * (64 << 20), timeout=0.3, max_request=64 << 20
                    )
            await assert_still_serving(alice.host, bob.host)
            assert network.get_connections() == [connection]
            assert not connection.is_closed


async def test_concurrent_requests_share_one_connection() -> None:
    async def slow_echo(payload: bytes, remote: PeerId) -> bytes:
        await trio.sleep(0.05)
        return payload

    slow = protocol_id("test-net", "slow")
    async with open_test_host("alice") as alice, open_test_host("bob") as bob:
        bob.host.set_handler(slow, slow_echo, HandlerLimits(max_concurrent=8))
        introduce(alice.host, bob.host)
        replies: dict[int, bytes] = {}

        async def one(index: int) -> None:
            replies[index] = await alice.host.request(
                bob.host.peer_id, slow, index.to_bytes(4, "big"), timeout=STEP
            )

        with trio.fail_after(STEP):
            async with trio.open_nursery() as nursery:
                for index in range(60):  # within the inbound limit of 64 streams per peer
                    nursery.start_soon(one, index)
        assert replies == {index: index.to_bytes(4, "big") for index in range(60)}
        assert len(alice.host.libp2p_host.get_network().get_connections()) == 1


async def test_host_configuration_errors() -> None:
    with pytest.raises(ConfigError):
        async with open_host(HostConfig(seed=b"short")):
            pass
    with pytest.raises(ConfigError):
        async with open_host(
            HostConfig(seed=host_seed_for("ws"), listen_addrs=("/ip4/127.0.0.1/tcp/0/ws",))
        ):
            pass
    with pytest.raises(WireError):
        split_peer_addr("/ip4/127.0.0.1/tcp/1")
    async with open_host(HostConfig(seed=host_seed_for("first"))) as first:
        taken = first.listen_addrs[0]
        with pytest.raises(NetworkError):
            async with open_host(HostConfig(seed=host_seed_for("second"), listen_addrs=(taken,))):
                pass


async def test_caller_errors_leave_the_host_context_unwrapped() -> None:
    with pytest.raises(NotFoundError, match="plain"):
        async with open_test_host("plain", dht="server", gossip=True):
            raise NotFoundError("plain")


async def test_streams_beyond_the_inbound_limit_are_answered_busy() -> None:
    """A remote peer's request streams beyond ``max_streams_per_peer`` are refused with BUSY
    before they are read; the admitted ones complete, and the counts say why."""
    release = trio.Event()
    started = 0

    async def slow(payload: bytes | bytearray, remote: PeerId) -> bytes:
        nonlocal started
        started += 1
        await release.wait()
        return b"done"

    limits = InboundLimits(max_streams_per_peer=2)
    async with (
        open_test_host("alice") as alice,
        open_host(HostConfig(seed=host_seed_for("bob"), inbound=limits)) as bob,
    ):
        bob.set_handler(ECHO, slow, HandlerLimits(max_request=1024))
        introduce(alice.host, bob)
        outcomes: list[object] = []

        async def ask() -> None:
            try:
                outcomes.append(await alice.host.request(bob.peer_id, ECHO, b"x", timeout=STEP))
            except RemoteError as error:
                outcomes.append(error.reason)

        with trio.fail_after(STEP):
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(ask)
                while len(outcomes) < 1 or started < 2:
                    await trio.sleep(0.01)
                assert outcomes == ["BUSY"] and started == 2
                assert bob.inbound.streams == 2
                release.set()
        assert sorted(map(str, outcomes)) == ["BUSY", "b'done'", "b'done'"]
        assert bob.inbound.counts[("refused", "streams_per_peer")] == 1
        assert bob.inbound.streams == 0 and bob.inbound.held_bytes == 0


async def test_a_frame_larger_than_its_message_type_allows_is_refused_from_its_head() -> None:
    """With a ``request_cap``, the server reads the header and the first bytes (the message's
    type id), and refuses a frame bigger than that type's largest encoding before reading or
    budgeting the rest; requests within their type's size are served."""
    status = wire.BlobStatusRequest(blob_id=bytes(32))
    seen: list[bytes] = []

    async def handler(payload: bytes | bytearray, remote: PeerId) -> bytes:
        seen.append(bytes(payload))
        wire.decode(payload, wire.BlobStatusRequest)
        return b"ok"

    def cap(head: bytes) -> int:
        return wire.max_size_for_head(head, (wire.BlobStatusRequest, wire.StoreSliverRequest))

    async with open_test_host("alice") as alice, open_test_host("bob") as bob:
        bob.host.set_handler(ECHO, handler, HandlerLimits(max_request=64 << 20, request_cap=cap))
        introduce(alice.host, bob.host)
        encoded = wire.encode(status)
        with trio.fail_after(STEP):
            assert await alice.host.request(bob.host.peer_id, ECHO, encoded, timeout=STEP) == b"ok"
            # A status request's head announcing 16 MiB: refused after 4 + 18 bytes.
            stream = await alice.host.open_stream(bob.host.peer_id, ECHO)
            try:
                await stream.write(encode_header(16 << 20) + encoded[: wire.HEAD_PEEK_BYTES])
                with pytest.raises(RemoteError) as refused:
                    decode_reply(await read_frame(stream, max_size=4096, timeout=STEP))
                assert refused.value.reason == "WIRE_MALFORMED"
                assert "exceeds" in refused.value.message
            finally:
                await stream.reset()
            # An unknown type id is refused from the head as well.
            with pytest.raises(RemoteError) as unknown:
                await alice.host.request(
                    bob.host.peer_id, ECHO, b"\x82\x19\xff\xf0" + bytes(60), timeout=STEP
                )
            assert unknown.value.reason == "WIRE_MALFORMED"
        assert seen == [encoded]
        assert bob.host.inbound.held_bytes == 0
        await assert_still_serving_typed(alice.host, bob.host, encoded)


async def assert_still_serving_typed(client: Host, server: Host, payload: bytes) -> None:
    with trio.fail_after(STEP):
        assert await client.request(server.peer_id, ECHO, payload, timeout=STEP) == b"ok"


async def test_inbound_connections_beyond_the_cap_are_closed_before_their_handshake() -> None:
    """``[inbound] max_connections`` is libp2p's inbound cap: with room for one inbound
    connection, a second stranger cannot connect while the first is there; the per-peer
    connection limit reaches libp2p's configuration."""
    limits = InboundLimits(max_connections=1, max_connections_per_peer=1)
    async with (
        open_test_host("alice") as alice,
        open_test_host("carol") as carol,
        open_host(HostConfig(seed=host_seed_for("bob"), inbound=limits)) as bob,
    ):
        serve_echo(bob)
        network = bob.libp2p_host.get_network()
        assert network.connection_config.max_connections_per_peer == 1
        introduce(alice.host, bob)
        introduce(carol.host, bob)
        await assert_still_serving(alice.host, bob)
        assert bob.inbound.counts["refused", "connection_cap"] == 0
        with trio.fail_after(STEP), pytest.raises((NetworkError, RemoteError)):
            await carol.host.request(bob.peer_id, ECHO, b"x", timeout=2.0)
        await assert_still_serving(alice.host, bob)
        # The refusal is counted (libp2p patch 11), and so exported as
        # walrus_inbound_total{outcome="refused",reason="connection_cap"}.
        assert bob.inbound.counts["refused", "connection_cap"] >= 1
        metrics = PeerMetrics()
        metrics.watch_inbound(bob.inbound)
        assert b'reason="connection_cap"' in metrics.render()


async def test_a_refused_stream_is_read_and_dropped_until_it_is_reset() -> None:
    """``Stream.close_then_reset`` (net/stream.py) reads and drops what a refused sender keeps
    writing, so that it is not buffered in a yamux window, and resets at once after
    DRAIN_LIMIT bytes instead of waiting out the linger."""

    class Endless:
        def __init__(self) -> None:
            self.read_bytes = 0
            self.events: list[str] = []

        async def close(self) -> None:
            self.events.append("close")

        async def read(self, size: int) -> bytes:
            await trio.sleep(0)
            self.read_bytes += size
            return b"\xa5" * size

        async def reset(self) -> None:
            self.events.append("reset")

    raw = Endless()
    stream = Stream(raw, remote_peer_id=PeerId("peer"), protocol_id=ECHO)
    started = trio.current_time()
    with trio.fail_after(STEP):
        await stream.close_then_reset(60.0)
    assert raw.events == ["close", "reset"]
    assert DRAIN_LIMIT <= raw.read_bytes < DRAIN_LIMIT + 64 * 1024 + 1
    assert trio.current_time() - started < 5.0  # reset after the limit, not after 60 s
