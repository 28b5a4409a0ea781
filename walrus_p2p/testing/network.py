"""An in-process test network: N storage peers on 127.0.0.1 in one trio run, and light peers.

Owner: tests. :func:`open_test_network` makes deterministic identities (the seed of peer i is a
hash of the network name and i), picks a free loopback port for each (bind port 0, read it,
close: the genesis must list dialable addresses before any host listens), writes the genesis,
opens one temporary store per peer and starts every :class:`StoragePeerService` in a nursery
with ``nursery.start(service.run)``, so the network is serving when the context is entered.
Leaving the context cancels the peers and closes their stores.

The builder does not wait for the DHT: storage requests dial the addresses the committee lists,
so a light peer can talk to every peer as soon as the context is entered.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from walrus_p2p.client.network import LightPeer, open_light_peer
from walrus_p2p.client.read import ReadOptions
from walrus_p2p.client.service import WalrusClient, open_client
from walrus_p2p.client.store import StoreOptions
from walrus_p2p.core.committee import Member
from walrus_p2p.core.genesis import Genesis, Limits, create_genesis_toml, parse_genesis
from walrus_p2p.core.identity import Identity
from walrus_p2p.devnet import free_tcp_port
from walrus_p2p.node.epochs import EpochOptions
from walrus_p2p.node.peer import PeerOptions, StoragePeerService
from walrus_p2p.storage import BlobStore, open_store
from walrus_p2p.types import PeerId

EPOCH_DURATION_SECONDS = 86_400
"""Epoch 0 lasts a day from the genesis time: no epoch change happens during a test."""


def genesis_time_now() -> int:
    """The genesis time tests use: now. A time in the past would make the peers' epoch service
    run one agreement per overdue epoch as fast as it can (hundreds since a fixed date), and
    blobs registered for epoch 0 would expire under the test's feet."""
    return int(time.time())


DEFAULT_CAPACITY_BYTES = 1 << 30


def seed_for(network: str, name: str) -> bytes:
    """The deterministic 32-byte identity seed of a named test identity."""
    return hashlib.sha256(f"walrus-p2p test identity {network} {name}".encode()).digest()


@dataclass(frozen=True, slots=True)
class TestPeer:
    """One running in-process storage peer."""

    __test__ = False  # not a pytest test class

    name: str
    identity: Identity
    service: StoragePeerService
    store: BlobStore
    store_dir: Path
    address: str
    scope: trio.CancelScope

    @property
    def peer_id(self) -> PeerId:
        return self.identity.peer_id

    def stop(self) -> None:
        """Stop this peer (its host closes, its store stays open); the others keep running."""
        self.scope.cancel()


@dataclass(frozen=True, slots=True)
class TestNetwork:
    """The peers of a running test network, its genesis, and a blob owner's key."""

    __test__ = False  # not a pytest test class

    genesis: Genesis
    peers: tuple[TestPeer, ...]
    owner: Identity
    directory: Path

    def peer(self, peer_id: PeerId) -> TestPeer:
        for candidate in self.peers:
            if candidate.peer_id == peer_id:
                return candidate
        raise KeyError(peer_id)

    def peer_of_shard(self, shard: int) -> TestPeer:
        return self.peer(self.genesis.committee.peer_of(shard))


def make_identities(network: str, count: int, *, prefix: str = "peer") -> list[Identity]:
    return [Identity.from_seed(seed_for(network, f"{prefix}{index}")) for index in range(count)]


def make_genesis(
    identities: list[Identity],
    addresses: list[str],
    *,
    network: str,
    n_shards: int,
    limits: Limits | None = None,
    weights: list[int] | None = None,
    genesis_time: int | None = None,
) -> Genesis:
    """A genesis for these identities at these addresses (through the TOML text, as on disk)."""
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
        genesis_time=genesis_time_now() if genesis_time is None else genesis_time,
        epoch_duration_seconds=EPOCH_DURATION_SECONDS,
        limits=limits,
    )
    return parse_genesis(text, source=f"<test genesis {network}>")


async def _serve(
    service: StoragePeerService,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with scope:
        await service.run(task_status=task_status)


@asynccontextmanager
async def open_test_network(
    peers: int = 4,
    n_shards: int = 10,
    *,
    network: str = "testnet-inproc",
    directory: Path | None = None,
    limits: Limits | None = None,
    weights: list[int] | None = None,
    request_timeout: float = 30.0,
    fsync: bool = False,
) -> AsyncIterator[TestNetwork]:
    """Start ``peers`` storage peers of an ``n_shards`` network; stop them on exit.

    ``directory`` holds one store per peer (a temporary directory, removed on exit, if None).
    ``fsync=False`` keeps the tests fast; durability across kills is the multi-process tests'
    subject.
    """
    identities = make_identities(network, peers)
    addresses = [f"/ip4/127.0.0.1/tcp/{free_tcp_port()}" for _ in identities]
    genesis = make_genesis(
        identities, addresses, network=network, n_shards=n_shards, limits=limits, weights=weights
    )
    owner = Identity.from_seed(seed_for(network, "owner"))
    async with AsyncExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="walrus-")))
        running: list[TestPeer] = []
        stores: list[BlobStore] = []
        try:
            async with trio.open_nursery() as nursery:
                for index, (identity, address) in enumerate(
                    zip(identities, addresses, strict=True)
                ):
                    store_dir = directory / f"peer-{index:02d}" / "store"
                    store = open_store(
                        store_dir, capacity_bytes=DEFAULT_CAPACITY_BYTES, fsync=fsync
                    )
                    stores.append(store)
                    service = StoragePeerService(
                        identity=identity,
                        genesis=genesis,
                        store=store,
                        options=PeerOptions(
                            listen_addrs=(address,),
                            request_timeout=request_timeout,
                            # No epoch changes in these tests (epoch 0 lasts a day anyway);
                            # epoch tests use walrus_p2p.testing.epochs instead.
                            epochs=EpochOptions(enabled=False),
                        ),
                    )
                    scope = trio.CancelScope()
                    await nursery.start(_serve, service, scope)
                    running.append(
                        TestPeer(
                            name=f"peer{index}",
                            identity=identity,
                            service=service,
                            store=store,
                            store_dir=store_dir,
                            address=address,
                            scope=scope,
                        )
                    )
                try:
                    yield TestNetwork(
                        genesis=genesis, peers=tuple(running), owner=owner, directory=directory
                    )
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            for opened in stores:
                opened.close()


@asynccontextmanager
async def open_test_light_peer(
    network: TestNetwork, name: str = "light"
) -> AsyncIterator[LightPeer]:
    """A light peer of the network with a deterministic identity."""
    async with open_light_peer(
        network.genesis, seed=seed_for(network.genesis.network, name)
    ) as light:
        yield light


@asynccontextmanager
async def open_test_client(
    network: TestNetwork,
    owner: Identity | None = None,
    *,
    store_options: StoreOptions | None = None,
    read_options: ReadOptions | None = None,
) -> AsyncIterator[WalrusClient]:
    """A full client (store, read, status) owned by ``owner`` (the network's owner by default)."""
    async with open_client(
        network.genesis,
        owner or network.owner,
        store_options=store_options,
        read_options=read_options,
    ) as client:
        yield client


__all__ = [
    "EPOCH_DURATION_SECONDS",
    "TestNetwork",
    "TestPeer",
    "free_tcp_port",
    "genesis_time_now",
    "make_genesis",
    "make_identities",
    "open_test_client",
    "open_test_light_peer",
    "open_test_network",
    "seed_for",
]
