"""``net/libp2p_patches.py``: every patch is in effect after ``install()``, the version check
and the switch turn the tuning off (and a host still works without it), bytes arrive exactly,
the replaced readers keep their contracts, and yamux frames fit one Noise message."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import trio
from libp2p.io.exceptions import ConnectionClosedError, IncompleteReadError
from libp2p.io.trio import TrioTCPStream
from libp2p.security.noise import io as noise_io
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.yamux import yamux as yamux_module

from walrus_p2p.net import libp2p_patches
from walrus_p2p.net.names import protocol_id
from walrus_p2p.net.stream import Stream
from walrus_p2p.testing.network import STEP, open_test_host

BULK = protocol_id("test-net", "bulk")


async def test_buffered_socket_reads_return_exact_bytes_and_respect_n() -> None:
    libp2p_patches.install()
    left, right = trio.socket.socketpair()
    reader = TrioTCPStream(trio.SocketStream(left))
    writer = trio.SocketStream(right)
    generator = random.Random(7)
    payload = generator.randbytes(3 * libp2p_patches.RECEIVE_SIZE + 12345)

    async def send() -> None:
        view = memoryview(payload)
        offset = 0
        while offset < len(payload):
            step = generator.choice((1, 2, 17, 4096, 70_000, 300_000))
            await writer.send_all(view[offset : offset + step])
            offset += step
        await writer.aclose()

    received = bytearray()
    with trio.fail_after(STEP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while True:
                want = generator.choice((None, 1, 2, 12, 1000, 65_535, 1 << 20))
                chunk = await reader.read(want)
                if not chunk:
                    break
                assert want is None or len(chunk) <= want
                received += chunk
    assert bytes(received) == payload
    assert await reader.read(10) == b""
    await reader.close()


class Messages:
    """A decrypted-message source for ``SecureSession.read``: hands out fixed messages, then
    ``b""`` (a closed connection)."""

    def __init__(self, messages: list[bytes]) -> None:
        self.messages = list(messages)

    async def read_msg(self) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.messages.pop(0) if self.messages else b""


class Chunks:
    """A reader whose ``read(n)`` returns at most ``chunk`` bytes, then ``b""``."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self.data = data
        self.chunk = chunk

    async def read(self, n: int) -> bytes:
        await trio.lowlevel.checkpoint()
        taken, self.data = self.data[: min(n, self.chunk)], self.data[min(n, self.chunk) :]
        return taken


async def test_secure_session_reads_keep_their_contract() -> None:
    libp2p_patches.install()
    generator = random.Random(11)
    messages = [generator.randbytes(generator.choice((1, 12, 300, 65_519))) for _ in range(60)]
    stream = b"".join(messages)
    session = object.__new__(SecureSession)  # only ``conn`` is used by ``read``
    session.conn = Messages(messages)
    received = bytearray()
    while len(received) < len(stream):
        want = generator.choice((None, 1, 12, 5000, 65_507, 200_000))
        left = len(stream) - len(received)
        chunk = await session.read(want)
        if want is not None:
            # Exactly n bytes while the connection lasts; the rest when it closes after some.
            assert len(chunk) == min(want, left)
        assert chunk
        received += chunk
    assert bytes(received) == stream
    assert await session.read(0) == b""
    with pytest.raises(ConnectionClosedError):
        await session.read(10)
    with pytest.raises(ConnectionClosedError):
        await session.read(None)


async def test_read_exactly_returns_n_bytes_or_reports_what_it_got() -> None:
    libp2p_patches.install()
    data = random.Random(3).randbytes(100_000)
    assert await libp2p_patches._read_exactly(Chunks(data, 1 << 20), 100_000) == data
    assert await libp2p_patches._read_exactly(Chunks(data, 7_000), 100_000) == data
    assert await libp2p_patches._read_exactly(Chunks(data, 7_000), 12) == data[:12]
    with pytest.raises(IncompleteReadError) as caught:
        await libp2p_patches._read_exactly(Chunks(data[:500], 100), 1000)
    assert caught.value.received_bytes == 500
    with pytest.raises(IncompleteReadError) as caught:
        await libp2p_patches._read_exactly(Chunks(b"", 100), 12)
    assert caught.value.is_clean_close


async def test_large_transfers_arrive_exactly_and_frames_fit_one_noise_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    written: list[int] = []
    original = noise_io.BaseNoiseMsgReadWriter.write_msg

    async def recording(
        self: noise_io.BaseNoiseMsgReadWriter, msg: bytes, prefix_encoded: bool = False
    ) -> None:
        written.append(len(msg))
        await original(self, msg, prefix_encoded)

    monkeypatch.setattr(noise_io.BaseNoiseMsgReadWriter, "write_msg", recording)
    async with open_test_host("alice") as alice, open_test_host("bob") as bob:
        assert yamux_module.MAX_MESSAGE_SIZE == noise_io.MAX_PLAINTEXT_LENGTH
        received: list[bytes] = []

        async def sink(stream: Stream) -> None:
            data = bytearray()
            while chunk := await stream.read(1 << 20):
                data += chunk
            received.append(bytes(data))
            await stream.write(len(data).to_bytes(8, "big"))

        bob.host.set_stream_handler(BULK, sink)
        payloads = [random.Random(index).randbytes(3_000_000 + index) for index in range(4)]
        with trio.fail_after(4 * STEP):
            await alice.host.connect(bob.host.peer_id, bob.host.listen_addrs, timeout=STEP)

            async def send(payload: bytes) -> None:
                stream = await alice.host.open_stream(bob.host.peer_id, BULK)
                try:
                    await stream.write(payload)
                    await stream.close_write()
                    answer = await stream.read(8)
                    assert int.from_bytes(answer, "big") == len(payload)
                finally:
                    await stream.close()

            async with trio.open_nursery() as nursery:
                for payload in payloads:
                    nursery.start_soon(send, payload)
        assert sorted(received) == sorted(payloads)
        # Every yamux frame fits one Noise message (64 KiB frames were split in two), and the
        # data went in full frames.
        assert max(written) <= noise_io.MAX_PLAINTEXT_LENGTH
        per_frame = noise_io.MAX_PLAINTEXT_LENGTH - yamux_module.HEADER_SIZE
        full = sum(1 for size in written if size == noise_io.MAX_PLAINTEXT_LENGTH)
        assert full >= sum(len(payload) // per_frame for payload in payloads)


class _Message:
    def __init__(self, record: bytes | None) -> None:
        self.senderRecord = record or b""
        self._has = record is not None

    def HasField(self, name: str) -> bool:
        assert name == "senderRecord"
        return self._has


class _PeerId:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def to_bytes(self) -> bytes:
        return self.raw


class _Host:
    """Stands for a libp2p host (the cache is kept per host, weakly)."""


def test_gossip_signed_records_are_verified_once_per_refresh_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[bytes, int]] = []
    verdicts = {b"good": True, b"bad": False}

    def original(message: _Message, host: _Host, peer_id: _PeerId) -> bool:
        calls.append((message.senderRecord, id(host)))
        return verdicts[message.senderRecord]

    now = [1000.0]
    monkeypatch.setattr(libp2p_patches, "_original_consume_signed_record", original)
    monkeypatch.setattr(libp2p_patches.time, "monotonic", lambda: now[0])
    host, other_host = _Host(), _Host()
    sender = _PeerId(b"peer-a")

    assert libp2p_patches._consume_signed_record(_Message(None), host, sender)
    assert calls == []  # no record: nothing to check, as in the library

    for _ in range(3):
        assert libp2p_patches._consume_signed_record(_Message(b"good"), host, sender)
    assert calls == [(b"good", id(host))]
    # Another host in the same process keeps its own peerstore: it checks for itself.
    assert libp2p_patches._consume_signed_record(_Message(b"good"), other_host, sender)
    # The same bytes from another peer are another record.
    assert libp2p_patches._consume_signed_record(_Message(b"good"), host, _PeerId(b"peer-b"))
    assert len(calls) == 3
    # A failing record is refused every time and never remembered.
    for attempt in range(2):
        assert not libp2p_patches._consume_signed_record(_Message(b"bad"), host, sender)
        assert len(calls) == 4 + attempt
    # After the refresh period the record is checked (and its addresses stored) again.
    now[0] += libp2p_patches.SIGNED_RECORD_REFRESH + 1
    assert libp2p_patches._consume_signed_record(_Message(b"good"), host, sender)
    assert len(calls) == 6


async def test_quick_lock_excludes_like_a_trio_lock_and_skips_the_scheduler_when_free() -> None:
    lock = libp2p_patches._QuickLock()
    order: list[str] = []

    async def holder(task_status: trio.TaskStatus[None]) -> None:
        async with lock:
            order.append("holder in")
            task_status.started()
            await trio.sleep(0.01)  # holds the lock across an await
            order.append("holder out")

    async def waiter() -> None:
        async with lock:
            order.append("waiter in")

    with trio.fail_after(STEP):
        async with trio.open_nursery() as nursery:
            await nursery.start(holder)
            assert lock.locked()
            nursery.start_soon(waiter)
    assert order == ["holder in", "holder out", "waiter in"]
    assert not lock.locked()

    # Free: taken and released without passing through the scheduler (no other task runs).
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        for _ in range(3):
            async with lock:
                pass
        assert ran == []
    assert ran == ["other"]
    with pytest.raises(RuntimeError):  # the trio.Lock underneath keeps its errors
        lock.release()


@pytest.mark.parametrize("name", [patch.name for patch in libp2p_patches.PATCHES])
def test_each_patch_is_in_effect_after_install(name: str) -> None:
    """Fails when the library no longer has what a patch replaces (install skips it then)."""
    assert libp2p_patches.installed_version() == libp2p_patches.LIBP2P_VERSION
    assert libp2p_patches.install() is True
    assert libp2p_patches.live()[name]


def test_tuning_is_refused_on_another_version_or_when_switched_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(libp2p_patches.TUNING_SWITCH, raising=False)
    assert libp2p_patches.tuning_wanted() == (True, "")
    monkeypatch.setattr(libp2p_patches, "installed_version", lambda: "0.9.0")
    wanted, reason = libp2p_patches.tuning_wanted()
    assert not wanted and "0.9.0" in reason and libp2p_patches.LIBP2P_VERSION in reason
    monkeypatch.setenv(libp2p_patches.TUNING_SWITCH, "off")
    wanted, reason = libp2p_patches.tuning_wanted()
    assert not wanted and libp2p_patches.TUNING_SWITCH in reason


UNTUNED = """
import json, trio
from walrus_p2p.net import libp2p_patches
from walrus_p2p.net.host import HostConfig, open_host
from walrus_p2p.net.names import protocol_id

ECHO = protocol_id("test-net", "echo")

async def main():
    async with open_host(HostConfig(seed=bytes(32), listen_addrs=("/ip4/127.0.0.1/tcp/0",))) as a:
        async with open_host(
            HostConfig(seed=bytes([1]) * 32, listen_addrs=("/ip4/127.0.0.1/tcp/0",))
        ) as b:
            async def echo(stream):
                data = bytearray()
                while chunk := await stream.read(1 << 20):
                    data += chunk
                await stream.write(bytes(data))
                await stream.close()

            b.set_stream_handler(ECHO, echo)
            with trio.fail_after(20):
                await a.connect(b.peer_id, b.listen_addrs, timeout=10)
                stream = await a.open_stream(b.peer_id, ECHO)
                payload = bytes(range(256)) * 4096
                await stream.write(payload)
                await stream.close_write()
                back = bytearray()
                while chunk := await stream.read(1 << 20):
                    back += chunk
    print(json.dumps({"echoed": bytes(back) == payload, "live": libp2p_patches.live()}))

trio.run(main)
"""


def test_a_host_works_without_the_tuning_and_keeps_the_fixes() -> None:
    environment = dict(os.environ, **{libp2p_patches.TUNING_SWITCH: "off"})
    done = subprocess.run(
        [sys.executable, "-c", UNTUNED],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["echoed"] is True
    for patch in libp2p_patches.PATCHES:
        assert result["live"][patch.name] is patch.fix, patch.name
    assert "without this project's tuning" in done.stderr
