"""In-process peers on 127.0.0.1 for the net/ tests: real libp2p hosts in one trio run."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import trio

from walrus_p2p.net.discovery import DhtMode, Discovery, DiscoveryConfig, open_discovery
from walrus_p2p.net.gossip import Gossip, GossipConfig, open_gossip
from walrus_p2p.net.host import Host, HostConfig, open_host

STEP = 20.0
"""Deadline for one network step in these tests: generous for a loaded 2-core machine."""


def seed_for(name: str) -> bytes:
    return hashlib.sha256(b"walrus-p2p test peer " + name.encode()).digest()


@dataclass
class Peer:
    name: str
    host: Host
    discovery: Discovery | None = None
    gossip: Gossip | None = None


@asynccontextmanager
async def open_peer(
    name: str,
    *,
    dht: DhtMode | None = None,
    gossip: bool = False,
    gossip_config: GossipConfig | None = None,
) -> AsyncIterator[Peer]:
    async with AsyncExitStack() as stack:
        # No deadline around entering these: a cancel scope must not interleave with the
        # nurseries they open. Starting them does no network I/O.
        host = await stack.enter_async_context(open_host(HostConfig(seed=seed_for(name))))
        peer = Peer(name, host)
        if dht is not None:
            peer.discovery = await stack.enter_async_context(
                open_discovery(host, DiscoveryConfig(mode=dht, refresh_interval=None))
            )
        if gossip:
            peer.gossip = await stack.enter_async_context(open_gossip(host, gossip_config))
        yield peer


@asynccontextmanager
async def open_peers(
    count: int, *, prefix: str = "peer", dht: DhtMode | None = None, gossip: bool = False
) -> AsyncIterator[list[Peer]]:
    async with AsyncExitStack() as stack:
        peers = [
            await stack.enter_async_context(open_peer(f"{prefix}{i}", dht=dht, gossip=gossip))
            for i in range(count)
        ]
        yield peers


async def bootstrap_all(peers: list[Peer]) -> None:
    """Every peer but the first bootstraps from the first, concurrently."""
    entries = peers[0].host.peer_addrs
    with trio.fail_after(STEP):
        async with trio.open_nursery() as nursery:
            for peer in peers[1:]:
                assert peer.discovery is not None
                nursery.start_soon(peer.discovery.bootstrap, entries)
