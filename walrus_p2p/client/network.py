"""The light peer: a libp2p host that talks to storage peers and stores nothing for others.

It learns the committee from the genesis file (epoch 0's committee is fixed there), dials each
storage peer at the addresses the committee lists and, when that fails, asks the DHT (client
mode) where the peer is now. Every call has a deadline; every reply is decoded against the one
message type the request expects, so a peer cannot answer one question with another.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import trio

from walrus_p2p.core import wire
from walrus_p2p.core.committee import Committee
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.errors import NetworkError, RequestTimeoutError, WalrusError
from walrus_p2p.net.discovery import Discovery, DiscoveryConfig, open_discovery
from walrus_p2p.net.host import Host, HostConfig, open_host
from walrus_p2p.net.names import protocol_id
from walrus_p2p.types import PeerId

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=wire.Message)

STORAGE_PROTOCOL = "storage"
FRAME_OVERHEAD = 64 * 1024


class LightPeer:
    """A connected light peer; build it with :func:`open_light_peer`."""

    def __init__(self, host: Host, genesis: Genesis, discovery: Discovery) -> None:
        self.host = host
        self.genesis = genesis
        self.discovery = discovery
        self.committee: Committee = genesis.committee
        self.protocol = protocol_id(genesis.network_id_text, STORAGE_PROTOCOL)
        max_sliver = genesis.limits.max_sliver_size or wire.DEFAULT_LIMITS.max_sliver_size
        self.limits = wire.WireLimits(max_sliver_size=max_sliver, max_symbol_size=max_sliver)
        self.max_frame = max_sliver + FRAME_OVERHEAD
        self._dht_joined = False
        self._dht_lock = trio.Lock()
        self._dialled: set[PeerId] = set()

    @property
    def epoch(self) -> int:
        return int(self.committee.epoch)

    async def _ensure_connected(self, peer_id: PeerId, timeout: float) -> None:
        if self.host.is_connected(peer_id):
            return
        addresses = list(self.committee.member(peer_id).addresses)
        try:
            await self.host.connect(peer_id, addresses, timeout=timeout)
            return
        except NetworkError as error:
            logger.info("direct dial failed peer=%s error=%s", peer_id[:12], error)
        found = await self._find_in_dht(peer_id, timeout)
        await self.host.connect(peer_id, found, timeout=timeout)

    async def _find_in_dht(self, peer_id: PeerId, timeout: float) -> list[str]:
        async with self._dht_lock:
            if not self._dht_joined:
                entries = [
                    (member.peer_id, address)
                    for member in self.committee.members
                    for address in member.addresses[:1]
                ]
                try:
                    await self.discovery.bootstrap(entries, timeout=min(timeout, 5.0))
                    self._dht_joined = True
                except WalrusError as error:
                    logger.info("dht bootstrap failed error=%s", error)
        return await self.discovery.find_peer(peer_id, timeout=timeout)

    async def call(
        self,
        peer_id: PeerId,
        request: wire.Message,
        expected: type[M],
        *,
        timeout: float,
    ) -> M:
        """One request/reply with ``peer_id``; raises a ``WalrusError`` on any failure."""
        payload = wire.encode(request, limits=self.limits)
        reply: bytes | None = None
        with trio.move_on_after(timeout):
            await self._ensure_connected(peer_id, timeout)
            reply = await self.host.request(
                peer_id,
                self.protocol,
                payload,
                timeout=timeout,
                max_request=self.max_frame,
                max_reply=self.max_frame,
            )
        if reply is None:
            raise RequestTimeoutError(
                f"{type(request).__name__} to peer={peer_id[:12]} timed out after {timeout:g}s"
            )
        return wire.decode(reply, expected, limits=self.limits)


@asynccontextmanager
async def open_light_peer(
    genesis: Genesis, *, seed: bytes | None = None
) -> AsyncIterator[LightPeer]:
    """Start a light peer (a fresh identity unless ``seed`` is given) for the network."""
    config = HostConfig(
        seed=seed or secrets.token_bytes(32), listen_addrs=("/ip4/127.0.0.1/tcp/0",)
    )
    async with (
        open_host(config) as host,
        open_discovery(host, DiscoveryConfig(mode="client", refresh_interval=None)) as discovery,
    ):
        yield LightPeer(host, genesis, discovery)
