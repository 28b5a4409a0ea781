"""An in-process network for epoch-change tests: short epochs, peers that stop, restart and join.

Owner: tests of :mod:`walrus_p2p.node.epochs`. Unlike :func:`walrus_p2p.testing.network.
open_test_network` (a fixed genesis time far in the past and day-long epochs), the genesis here
starts a second from now with epochs of a few seconds, and every peer runs under its own cancel
scope so a test can stop it (``stop``), start it again on the same store and port (``restart``)
or start a peer that is not in the genesis committee (``join``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from walrus_p2p.core.committee import Member
from walrus_p2p.core.consensus import TimeoutPolicy
from walrus_p2p.core.genesis import Genesis, create_genesis_toml, parse_genesis
from walrus_p2p.core.identity import Identity
from walrus_p2p.node.epochs import EpochOptions
from walrus_p2p.node.healing_options import HealingOptions
from walrus_p2p.node.peer import PeerOptions, StoragePeerService
from walrus_p2p.storage import BlobStore, open_store
from walrus_p2p.testing.network import free_tcp_port, seed_for
from walrus_p2p.types import PeerId

FAST_TIMEOUTS = TimeoutPolicy(propose=1.5, prevote=0.7, precommit=0.7, increment=0.5)


@dataclass(slots=True)
class EpochPeer:
    """A storage peer of the test network (running or stopped)."""

    name: str
    identity: Identity
    address: str
    store_dir: Path
    service: StoragePeerService | None = None
    store: BlobStore | None = None
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def peer_id(self) -> PeerId:
        return self.identity.peer_id

    @property
    def running(self) -> StoragePeerService:
        assert self.service is not None and self.scope is not None, f"{self.name} is stopped"
        return self.service

    @property
    def epoch(self) -> int:
        return self.running.epoch


class EpochTestNetwork:
    """Peers under one nursery; build it with :func:`open_epoch_network`."""

    __test__ = False

    def __init__(
        self,
        nursery: trio.Nursery,
        genesis: Genesis,
        directory: Path,
        options: EpochOptions,
        healing: HealingOptions | None = None,
    ) -> None:
        self.healing = healing or HealingOptions()
        self.nursery = nursery
        self.genesis = genesis
        self.directory = directory
        self.options = options
        self.peers: dict[str, EpochPeer] = {}

    def __getitem__(self, name: str) -> EpochPeer:
        return self.peers[name]

    def running(self) -> list[EpochPeer]:
        return [peer for peer in self.peers.values() if peer.scope is not None]

    async def start(self, peer: EpochPeer) -> EpochPeer:
        """Start (or restart) ``peer`` on its store and port; returns once it serves."""
        assert peer.scope is None, f"{peer.name} is already running"
        store = open_store(peer.store_dir, capacity_bytes=1 << 30, fsync=False)
        service = StoragePeerService(
            identity=peer.identity,
            genesis=self.genesis,
            store=store,
            options=PeerOptions(
                listen_addrs=(peer.address,),
                request_timeout=20.0,
                epochs=self.options,
                healing=self.healing,
            ),
        )
        peer.service, peer.store, peer.stopped = service, store, trio.Event()

        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[None]) -> None:
            try:
                with scope:
                    await service.run(task_status=task_status)
            finally:
                store.close()
                peer.stopped.set()

        await self.nursery.start(run)
        peer.scope = scope
        return peer

    async def stop(self, name: str) -> None:
        """Stop a peer as a crash would (no goodbye); its store stays on disk."""
        peer = self.peers[name]
        assert peer.scope is not None
        peer.scope.cancel()
        await peer.stopped.wait()
        peer.scope = None
        peer.service = None

    def add(self, name: str, identity: Identity, address: str | None = None) -> EpochPeer:
        peer = EpochPeer(
            name=name,
            identity=identity,
            address=address or f"/ip4/127.0.0.1/tcp/{free_tcp_port()}",
            store_dir=self.directory / name / "store",
        )
        self.peers[name] = peer
        return peer

    async def join(self, name: str) -> EpochPeer:
        """Start a peer that is not in the genesis committee (it announces its candidacy)."""
        identity = Identity.from_seed(seed_for(self.genesis.network, name))
        return await self.start(self.add(name, identity))

    async def wait_epoch(self, epoch: int, names: list[str] | None = None) -> None:
        """Wait until the named running peers (all running ones by default) reach ``epoch``."""
        for peer in self.running() if names is None else [self.peers[n] for n in names]:
            service = peer.running
            while service.epoch < epoch:
                await service.epochs.changed.wait()


def epoch_genesis(
    identities: list[Identity],
    addresses: list[str],
    *,
    network: str,
    n_shards: int,
    epoch_seconds: int,
    start_in: float = 1.0,
    weights: list[int] | None = None,
    max_shards_per_peer: int | None = None,
) -> Genesis:
    members = [
        Member.from_public_key(
            identity.public_key.raw, 1 if weights is None else weights[index], [address]
        )
        for index, (identity, address) in enumerate(zip(identities, addresses, strict=True))
    ]
    text = create_genesis_toml(
        network=network,
        n_shards=n_shards,
        members=members,
        genesis_time=int(time.time() + start_in),
        epoch_duration_seconds=epoch_seconds,
        max_shards_per_peer=max_shards_per_peer,
    )
    return parse_genesis(text, source=f"<epoch test genesis {network}>")


@asynccontextmanager
async def open_epoch_network(
    peers: int = 4,
    n_shards: int = 8,
    *,
    epoch_seconds: int = 6,
    network: str = "epochs-inproc",
    options: EpochOptions | None = None,
    weights: list[int] | None = None,
    max_shards_per_peer: int | None = None,
    start: bool = True,
    healing: HealingOptions | None = None,
) -> AsyncIterator[EpochTestNetwork]:
    """Genesis peers ``peer0``.. of a network whose epoch 1 starts ``epoch_seconds`` from now."""
    options = options or EpochOptions(timeouts=FAST_TIMEOUTS)
    identities = [Identity.from_seed(seed_for(network, f"peer{index}")) for index in range(peers)]
    addresses = [f"/ip4/127.0.0.1/tcp/{free_tcp_port()}" for _ in identities]
    genesis = epoch_genesis(
        identities,
        addresses,
        network=network,
        n_shards=n_shards,
        epoch_seconds=epoch_seconds,
        weights=weights,
        max_shards_per_peer=max_shards_per_peer,
    )
    async with AsyncExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="walrus-ep-")))
        async with trio.open_nursery() as nursery:
            test_network = EpochTestNetwork(nursery, genesis, directory, options, healing)
            for index, (identity, address) in enumerate(zip(identities, addresses, strict=True)):
                test_network.add(f"peer{index}", identity, address)
            if start:
                for peer in list(test_network.peers.values()):
                    await test_network.start(peer)
            try:
                yield test_network
            finally:
                nursery.cancel_scope.cancel()


__all__ = [
    "FAST_TIMEOUTS",
    "EpochPeer",
    "EpochTestNetwork",
    "epoch_genesis",
    "open_epoch_network",
]
