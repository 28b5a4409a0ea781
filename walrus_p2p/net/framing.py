"""Length-prefixed frames over a byte stream.

A frame is a 4-byte big-endian unsigned length followed by that many bytes. Frames exist because
a yamux stream whose remote dies mid-transfer ends with a normal EOF (docs/design.md §7): without
an explicit length a reader would accept the truncated bytes as a whole message.

Rules enforced here:

- the length is checked against the caller's ``max_size`` *before* anything is allocated;
- every read of a frame runs under a deadline (``timeout`` covers the whole frame);
- an EOF anywhere inside a frame (or before it, where one was required) is a :class:`WireError`,
  never a short frame.

The module speaks to a minimal :class:`ByteStream` protocol so it can be tested without libp2p;
``host.Stream`` implements it over a libp2p stream and translates the library's exceptions.
"""

from __future__ import annotations

from typing import Protocol

import trio

from walrus_p2p.core import memory
from walrus_p2p.errors import RequestTimeoutError, WireError

HEADER_SIZE = 4
MAX_FRAME_LIMIT = 2**32 - 1
"""The largest length the 4-byte header can express."""

READ_CHUNK = 1 << 20
"""Largest single read request; keeps one read from pinning a huge buffer in the muxer."""


class ByteStream(Protocol):
    """What framing needs from a stream."""

    async def read(self, max_bytes: int) -> bytes:
        """Return 1..max_bytes bytes, or ``b""`` at end of stream."""
        ...

    async def write(self, data: bytes | memoryview) -> None: ...


def encode_header(size: int) -> bytes:
    if not 0 <= size <= MAX_FRAME_LIMIT:
        raise WireError(f"frame of {size} bytes cannot be framed")
    return size.to_bytes(HEADER_SIZE, "big")


async def write_frame(
    stream: ByteStream, payload: bytes | memoryview, *, max_size: int, prefix: bytes = b""
) -> None:
    """Write one frame of ``prefix + payload`` (the prefix spares the caller a copy of a large
    payload); refuses frames above ``max_size`` (the peer would reject them)."""
    view = memoryview(payload).cast("B")
    size = len(prefix) + len(view)
    if size > max_size:
        raise WireError(f"frame too large to send: size={size} max={max_size}")
    # One write for small frames: fewer muxer frames and syscalls.
    if size <= 64 * 1024:
        await stream.write(encode_header(size) + prefix + view)
    else:
        # The header rides with the first chunk; the other chunks are views, not copies.
        first = READ_CHUNK - HEADER_SIZE - len(prefix)
        await stream.write(encode_header(size) + prefix + view[:first])
        for offset in range(first, len(view), READ_CHUNK):
            await stream.write(view[offset : offset + READ_CHUNK])


class StreamEndedError(WireError):
    """The stream ended before a whole frame arrived.

    To a server reading a request this is a malformed request. To a client reading a reply it
    means the peer went away (yamux reports a dead remote as a normal end of stream), which
    :func:`walrus_p2p.net.rpc.exchange` reports as :class:`PeerUnreachableError`.
    """


async def read_exactly(
    stream: ByteStream, size: int, what: str, *, start: bytes = b""
) -> bytes | bytearray:
    """``start`` (bytes of this frame already read) and then the next ``size - len(start)``
    bytes of ``stream``: ``bytes`` below :data:`memory.MIN_HUGE_BYTES`, a ``bytearray`` from
    there on (see :func:`_read_growing`). Memory grows with the bytes that arrive, never with
    the size announced: a header is only a claim."""
    if size >= memory.MIN_HUGE_BYTES:
        return await _read_growing(stream, size, what, start)
    # The chunks are joined once at the end: a growing bytearray copied a multi-megabyte
    # sliver several times over, and then once more into bytes.
    chunks: list[bytes] = [start] if start else []
    got = len(start)
    while got < size:
        chunk = await stream.read(min(size - got, READ_CHUNK))
        if not chunk:
            raise StreamEndedError(f"stream ended inside a frame {what}: got={got} expected={size}")
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _read_growing(stream: ByteStream, size: int, what: str, start: bytes) -> bytearray:
    """A big frame (a sliver) appended chunk by chunk to a ``bytearray`` this reader owns.

    The buffer grows as data arrives (CPython over-allocates a growing ``bytearray`` by an
    eighth, and glibc moves a big one with ``mremap``, without copying it), so a sender that
    announces a 32 MiB frame and sends one byte costs this reader one chunk, not 32 MiB; and
    there is one copy per byte, as when joining the chunks, without holding chunks and result
    at once. Up to 32 MiB, glibc serves such buffers from memory the process freed before (its
    ``mmap`` threshold rises to the size of the blocks it frees), so a peer receiving sliver
    after sliver does not fault in fresh pages for each. The caller gets the ``bytearray``
    itself: a StoreSliver request keeps its sliver as a view of it
    (``wire.decode(view_tail=True)``)."""
    received = bytearray(start)
    while len(received) < size:
        chunk = await stream.read(min(size - len(received), READ_CHUNK))
        if not chunk:
            raise StreamEndedError(
                f"stream ended inside a frame {what}: got={len(received)} expected={size}"
            )
        received += chunk
    return received


async def read_header(stream: ByteStream, *, max_size: int) -> int:
    """Read and check a frame header; a frame above ``max_size`` raises before allocation."""
    header = await read_exactly(stream, HEADER_SIZE, "header")
    size = int.from_bytes(header, "big")
    if size > max_size:
        raise WireError(f"frame too large: size={size} max={max_size}")
    return size


async def read_frame(stream: ByteStream, *, max_size: int, timeout: float) -> bytes | bytearray:
    """Read one whole frame within ``timeout`` seconds (``math.inf`` for no deadline); see
    :func:`read_exactly` for its type."""
    with trio.move_on_after(timeout):
        size = await read_header(stream, max_size=max_size)
        return await read_exactly(stream, size, "body")
    raise RequestTimeoutError(f"no complete frame within {timeout:g}s")


__all__ = [
    "HEADER_SIZE",
    "MAX_FRAME_LIMIT",
    "ByteStream",
    "StreamEndedError",
    "encode_header",
    "read_exactly",
    "read_frame",
    "read_header",
    "write_frame",
]
