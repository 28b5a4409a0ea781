"""Bounds on what strangers can make a host hold: request streams and request bytes in flight.

docs/network.md, "Inbound limits". Anyone can open streams to a storage peer. Framing already
caps one frame and reads it as its bytes arrive (:func:`walrus_p2p.net.framing.read_exactly`),
so a header alone costs nothing; but many streams that each send part of a big frame, slowly,
would still add up. :class:`InboundBudget` is one per host and counts, for every remote peer and
in total:

* **request streams being served** (read, handled or answered): a stream beyond
  ``max_streams_per_peer`` or ``max_streams`` is refused at once with ``BUSY``, before any byte
  of it is read. A peer with fewer than ``guaranteed_streams_per_peer`` streams is admitted
  even when the total is spent, so many strangers together cannot lock an honest peer out;
  each stream waiting for its body costs the host up to one yamux receive window (256 KiB)
  of buffered data, which is why the total is kept small;
* **request bytes granted**: once a request's header is read, the size it announces is granted
  (credit) before any byte of the body is read, and given back when the request is done. The
  grant is only accounting: memory is still taken as the bytes arrive. When ``max_bytes`` (all
  peers) or ``max_bytes_per_peer`` is spent, the reader waits before reading, so the sender's
  flow-control window fills up and it stops sending (backpressure); the stream's read deadline
  runs meanwhile, so a stream that waits or stalls too long is cut. A stream that waits holds
  nothing, so waiting streams never block each other; a peer that holds nothing is not held
  back by the per-peer budget, and nobody is held back while nothing is granted at all, so one
  request of any size the protocol allows always progresses. Requests of at most
  :data:`SMALL_REQUEST_BYTES` (metadata, status, records, symbols, consensus) are granted at
  once and only counted: they cannot be starved by strangers' big frames, and the stream
  limits bound what they hold.

What was refused or throttled, and why, is counted in :attr:`InboundBudget.counts` (exported as
``walrus_inbound_total{outcome,reason}``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields

import trio

from walrus_p2p.errors import ConfigError
from walrus_p2p.types import PeerId

SMALL_REQUEST_BYTES = 64 * 1024
"""Requests up to this size are granted without waiting (they are counted all the same)."""


@dataclass(frozen=True, slots=True)
class InboundLimits:
    """Limits on inbound request streams (defaults sized for a home machine; docs/network.md)."""

    max_streams: int = 128
    """Request streams served at once, from all remote peers."""
    max_streams_per_peer: int = 64
    """Request streams served at once for one remote peer."""
    guaranteed_streams_per_peer: int = 2
    """A peer serving fewer streams than this is admitted even above ``max_streams``."""
    max_bytes: int = 128 << 20
    """Request bytes granted at once (being received or handled), from all remote peers."""
    max_bytes_per_peer: int = 64 << 20
    """Request bytes granted at once for one remote peer."""
    max_connections: int = 128
    """Inbound connections at once, handshakes included (libp2p's inbound cap: a connection
    beyond it is closed before its handshake)."""
    max_connections_per_peer: int = 3
    """Connections to one remote peer; libp2p trims the extra ones (fewest streams first)
    once they are older than its 20 s grace period."""

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            name = item.name
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"inbound limit {name} must be a positive integer, not {value!r}")


class InboundBudget:
    """Streams and bytes held per remote peer and in total (one per host)."""

    def __init__(self, limits: InboundLimits) -> None:
        self.limits = limits
        self._streams: Counter[PeerId] = Counter()
        self._bytes: Counter[PeerId] = Counter()
        self._streams_total = 0
        self._bytes_total = 0
        self._released = trio.Event()
        self.counts: Counter[tuple[str, str]] = Counter()
        """(outcome, reason) -> how many times: ``refused`` streams and ``throttled`` grants."""

    @property
    def streams(self) -> int:
        return self._streams_total

    @property
    def held_bytes(self) -> int:
        return self._bytes_total

    def held_by(self, peer: PeerId) -> tuple[int, int]:
        """(streams, bytes) the remote peer holds now."""
        return self._streams[peer], self._bytes[peer]

    def admit(self, peer: PeerId) -> str | None:
        """Count one more stream of ``peer``, or return why it is refused (then nothing is
        counted but the refusal)."""
        reason = None
        if self._streams[peer] >= self.limits.max_streams_per_peer:
            reason = "streams_per_peer"
        elif (
            self._streams_total >= self.limits.max_streams
            and self._streams[peer] >= self.limits.guaranteed_streams_per_peer
        ):
            reason = "streams"
        if reason is not None:
            self.counts["refused", reason] += 1
            return reason
        self._streams[peer] += 1
        self._streams_total += 1
        return None

    def leave(self, peer: PeerId, held: int) -> None:
        """A stream of ``peer`` admitted before is done; the ``held`` bytes granted to it go
        back."""
        self._streams[peer] -= 1
        if self._streams[peer] <= 0:
            del self._streams[peer]
        self._streams_total -= 1
        self.release(peer, held)

    def release(self, peer: PeerId, size: int) -> None:
        if size <= 0:
            return
        self._bytes[peer] -= size
        if self._bytes[peer] <= 0:
            del self._bytes[peer]
        self._bytes_total -= size
        released, self._released = self._released, trio.Event()
        released.set()

    def _blocked_by(self, peer: PeerId, size: int) -> str | None:
        held = self._bytes[peer]
        if held and held + size > self.limits.max_bytes_per_peer:
            return "bytes_per_peer"
        if self._bytes_total and self._bytes_total + size > self.limits.max_bytes:
            return "bytes"
        return None

    async def reserve(self, peer: PeerId, size: int) -> None:
        """Grant ``size`` bytes to a stream of ``peer``, waiting while a budget is spent (the
        caller's deadline bounds the wait)."""
        reason = None if size <= SMALL_REQUEST_BYTES else self._blocked_by(peer, size)
        if reason is not None:
            self.counts["throttled", reason] += 1
            while self._blocked_by(peer, size) is not None:
                await self._released.wait()
        self._bytes[peer] += size
        self._bytes_total += size


__all__ = ["SMALL_REQUEST_BYTES", "InboundBudget", "InboundLimits"]
