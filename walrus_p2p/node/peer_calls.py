"""Requests from one storage peer to another, on the peer's own libp2p host.

Healing (blob sync, catch-up, scrub repair, invalid-blob attestations) needs peers to ask peers:
the same one-stream request/reply as a light peer's, but from the storage peer's host, so the
remote sees a committee member and no second identity is created. The request itself is
:func:`walrus_p2p.net.messages.call_message`, shared with the light peer; what differs is how a
peer is reached (committee addresses, then the running DHT).

Every call has a deadline that covers the dial, the request and the reply; replies are decoded
against the one message type the request expects. The reply's size is returned next to the
message so callers can account the bytes they pulled (recovery traffic metrics).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from walrus_p2p.core import wire
from walrus_p2p.core.committee import Committee
from walrus_p2p.errors import NetworkError, PeerUnreachableError, WalrusError
from walrus_p2p.net.discovery import Discovery
from walrus_p2p.net.host import Host
from walrus_p2p.net.messages import call_message
from walrus_p2p.types import PeerId

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=wire.Message)


class PeerCaller:
    """Calls other committee members from a storage peer's host.

    ``committee`` gives the current committee on every call (addresses to dial), so an epoch
    change is picked up without rebuilding the caller.
    """

    def __init__(
        self,
        host: Host,
        *,
        protocol: str,
        limits: wire.WireLimits,
        max_frame: int,
        committee: Callable[[], Committee] | None = None,
        discovery: Discovery | None = None,
    ) -> None:
        self.host = host
        self.protocol = protocol
        self.limits = limits
        self.max_frame = max_frame
        self.committee = committee
        self.discovery = discovery

    async def _ensure_connected(self, peer_id: PeerId, timeout: float) -> None:
        if self.host.is_connected(peer_id):
            return
        addresses: list[str] = []
        committee = None if self.committee is None else self.committee()
        if committee is not None and peer_id in committee:
            addresses = list(committee.member(peer_id).addresses)
        try:
            await self.host.connect(peer_id, addresses, timeout=timeout)
            return
        except NetworkError as error:
            if self.discovery is None:
                raise
            logger.debug("direct dial failed peer=%s error=%s", peer_id[:12], error)
        found = await self.discovery.find_peer(peer_id, timeout=timeout)
        if not found:
            raise PeerUnreachableError(f"peer={peer_id[:12]} has no known address")
        await self.host.connect(peer_id, found, timeout=timeout)

    async def call_sized(
        self,
        peer_id: PeerId,
        request: wire.Message,
        expected: type[M],
        *,
        timeout: float,
    ) -> tuple[M, int]:
        """One request/reply; returns the reply and its size in bytes. Raises ``WalrusError``."""
        if peer_id == self.host.peer_id:
            raise PeerUnreachableError("a peer does not call itself")
        return await call_message(
            self.host,
            self._ensure_connected,
            peer_id,
            self.protocol,
            request,
            expected,
            timeout=timeout,
            limits=self.limits,
            max_frame=self.max_frame,
        )

    async def call(
        self,
        peer_id: PeerId,
        request: wire.Message,
        expected: type[M],
        *,
        timeout: float,
    ) -> M:
        """One request/reply with ``peer_id``; raises a ``WalrusError`` on any failure."""
        message, _ = await self.call_sized(peer_id, request, expected, timeout=timeout)
        return message


async def call_quietly(
    caller: PeerCaller,
    peer_id: PeerId,
    request: wire.Message,
    expected: type[M],
    *,
    timeout: float,
) -> M | None:
    """``caller.call`` that logs and returns None on failure (for fan-out to many peers)."""
    try:
        return await caller.call(peer_id, request, expected, timeout=timeout)
    except WalrusError as error:
        logger.info(
            "peer call failed type=%s peer=%s reason=%s",
            type(request).__name__,
            peer_id[:12],
            error.reason,
        )
        return None
