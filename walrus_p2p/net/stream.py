"""One libp2p stream behind a small interface that only raises walrus-p2p errors.

py-libp2p's ``INetStream.read`` raises ``StreamEOF`` at end of stream, ``StreamReset`` when the
remote (or the connection) resets it, and a zoo of other errors when the connection underneath
dies. Everything above ``net/`` sees instead: ``read`` returning ``b""`` at a clean end,
:class:`PeerUnreachableError` for a reset or a dead connection, and :class:`NetworkError` for the
rest. ``close`` and ``reset`` never raise: they are what ``finally`` blocks call.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamError, StreamReset

from walrus_p2p.errors import NetworkError, PeerUnreachableError
from walrus_p2p.types import PeerId

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0
DRAIN_CHUNK = 64 * 1024
DRAIN_LIMIT = 1 << 20
"""Bytes of a refused stream read and dropped before it is reset early."""
"""Upper bound on sending a FIN/RST: a wedged connection must not wedge a ``finally``."""


class Stream:
    """A bidirectional byte stream to one remote peer on one protocol."""

    __slots__ = ("_closed", "_raw", "protocol_id", "remote_peer_id")

    def __init__(self, raw: Any, *, remote_peer_id: PeerId, protocol_id: str) -> None:
        self._raw = raw
        self._closed = False
        self.remote_peer_id = remote_peer_id
        self.protocol_id = protocol_id

    async def read(self, max_bytes: int) -> bytes:
        """Return 1..max_bytes bytes, or ``b""`` once the remote has finished writing."""
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        try:
            data = await self._raw.read(max_bytes)
        except StreamEOF:
            return b""
        except StreamReset as error:
            raise PeerUnreachableError(
                f"stream reset by peer={self.remote_peer_id[:12]} protocol={self.protocol_id}"
            ) from error
        except (StreamError, OSError) as error:
            raise PeerUnreachableError(
                f"stream to peer={self.remote_peer_id[:12]} failed: {error}"
            ) from error
        except Exception as error:
            raise NetworkError(
                f"read from peer={self.remote_peer_id[:12]} failed: {error!r}"
            ) from error
        return bytes(data)

    async def write(self, data: bytes | memoryview) -> None:
        try:
            await self._raw.write(data)
        except (StreamClosed, StreamReset, StreamError, OSError) as error:
            raise PeerUnreachableError(
                f"write to peer={self.remote_peer_id[:12]} failed: {error!r}"
            ) from error
        except Exception as error:
            raise NetworkError(
                f"write to peer={self.remote_peer_id[:12]} failed: {error!r}"
            ) from error

    async def close_write(self) -> None:
        """Tell the remote we are done writing (yamux FIN); reading stays possible."""
        try:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self._raw.close_write()
        except Exception as error:
            raise PeerUnreachableError(
                f"half-close to peer={self.remote_peer_id[:12]} failed: {error!r}"
            ) from error

    async def close(self) -> None:
        """Close both directions and release the muxer slot. Never raises."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await self._raw.close()
            except Exception as error:
                logger.debug(
                    "stream close failed peer=%s error=%r", self.remote_peer_id[:12], error
                )
                await self._reset_quietly()

    async def close_then_reset(self, linger: float) -> None:
        """Close (the error reply written before goes out first), then reset after ``linger``
        seconds: a sender whose request was refused before it was read, and who keeps writing,
        must not leave a receive window of its data buffered here. Meanwhile what it sends is
        read and dropped (at most :data:`DRAIN_LIMIT` bytes, then the reset comes at once), so
        a flood of refused streams holds a read chunk each, not a yamux window each
        (docs/network.md, "Inbound limits"). Never raises."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT + linger):
            try:
                await self._raw.close()
            except Exception as error:
                logger.debug(
                    "stream close failed peer=%s error=%r", self.remote_peer_id[:12], error
                )
            with trio.move_on_after(linger):
                await self._drain(DRAIN_LIMIT)
            await self._reset_quietly()

    async def _drain(self, limit: int) -> None:
        """Read and drop until the end of the stream, an error or ``limit`` bytes."""
        dropped = 0
        while dropped < limit:
            try:
                chunk = await self._raw.read(DRAIN_CHUNK)
            except Exception:
                return
            if not chunk:
                return
            dropped += len(chunk)

    async def reset(self) -> None:
        """Abort the stream in both directions (yamux RST). Never raises."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            await self._reset_quietly()

    async def _reset_quietly(self) -> None:
        try:
            await self._raw.reset()
        except Exception as error:
            logger.debug("stream reset failed peer=%s error=%r", self.remote_peer_id[:12], error)
