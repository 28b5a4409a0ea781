"""The one in-process network builder: storage peers on 127.0.0.1 in one trio run.

Who uses it: every in-process test of a storage peer (``tests/node``: the persona fixtures of
``conftest.py``, the epoch, migration, healing, sliver and fault tests) and ``bench/repair.py``,
directly or through the presets :func:`open_test_network` (here), :func:`walrus_p2p.testing.
epochs.open_epoch_network` and :func:`walrus_p2p.testing.healing_grid.open_healing_grid`; and the
host-level tests (``test_dht``, ``test_gossip``, ``test_rpc``, ``test_libp2p_patches``) through
:func:`open_test_host`. Multi-process networks are :mod:`walrus_p2p.testing.processes`.

:func:`open_network` is the only place that builds a network: deterministic identities (the seed
of peer i is a hash of the network name and ``peer<i>``), a free loopback port each (picked
before any host listens: the genesis must list dialable addresses), the genesis
(:func:`make_genesis`), one temporary store per peer and one :class:`StoragePeerService` per peer
started in a nursery with ``nursery.start``, so the network is serving when the context is
entered. :class:`NetworkOptions` says how: epochs off (the default; epoch 0 lasts a day) or on
with their options and epoch length, healing options, limits, weights, shard cap, inline limit,
request timeout, fsync, and a fault per peer (``faults``: peer index -> a fault of
:mod:`walrus_p2p.node.faults`, a byzantine peer). Every peer runs under its own cancel scope:
:meth:`TestNetwork.stop` stops one (optionally wiping its store), :meth:`TestNetwork.start`
starts it again on the same store and port, :meth:`TestNetwork.join` starts a peer that is not
in the genesis committee. Leaving the context cancels every peer and closes its store.
Light peers and clients: :func:`open_test_light_peer`, :func:`open_test_client`.

The builder does not wait for the DHT: storage requests dial the addresses the committee lists,
so a light peer can talk to every peer as soon as the context is entered.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from walrus_p2p.client.cache import CacheOptions
from walrus_p2p.client.network import LightPeer, open_light_peer
from walrus_p2p.client.read import ReadOptions
from walrus_p2p.client.service import WalrusClient, open_client
from walrus_p2p.client.store import StoreOptions
from walrus_p2p.core.committee import Member
from walrus_p2p.core.genesis import (
    EconomyGenesis,
    Genesis,
    Limits,
    create_genesis_toml,
    parse_genesis,
)
from walrus_p2p.core.identity import Identity
from walrus_p2p.devnet import free_tcp_port
from walrus_p2p.net.discovery import DhtMode, Discovery, DiscoveryConfig, open_discovery
from walrus_p2p.net.gossip import Gossip, GossipConfig, open_gossip
from walrus_p2p.net.host import Host, HostConfig, open_host
from walrus_p2p.node.challenges import ChallengeOptions
from walrus_p2p.node.economy import EconomyOptions
from walrus_p2p.node.epochs import EpochOptions
from walrus_p2p.node.faults import peer_service_class
from walrus_p2p.node.healing import HealingService
from walrus_p2p.node.healing_options import HealingOptions
from walrus_p2p.node.peer import PeerOptions, StoragePeerService
from walrus_p2p.storage import DEFAULT_INLINE_LIMIT, DiskStore, open_store
from walrus_p2p.types import PeerId

EPOCH_DURATION_SECONDS = 86_400
"""Epoch 0 lasts a day from the genesis time: no epoch change happens during a test."""
DEFAULT_CAPACITY_BYTES = 1 << 30
STOP_TIMEOUT = 20.0
"""Upper bound for a stopped peer's tasks to finish (its host closes, its store closes)."""
WAIT_EPOCH_TIMEOUT = 300.0
STEP = 20.0
"""Deadline for one network step of the host-level tests: generous for a loaded 2-core machine."""


def genesis_time_now() -> int:
    """The genesis time tests use: now. A time in the past would make the peers' epoch service
    run one agreement per overdue epoch as fast as it can (hundreds since a fixed date), and
    blobs registered for epoch 0 would expire under the test's feet."""
    return int(time.time())


def seed_for(network: str, name: str) -> bytes:
    """The deterministic 32-byte identity seed of a named test identity."""
    return hashlib.sha256(f"walrus-p2p test identity {network} {name}".encode()).digest()


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
    epoch_seconds: int = EPOCH_DURATION_SECONDS,
    max_shards_per_peer: int | None = None,
    economy: EconomyGenesis | None = None,
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
        epoch_duration_seconds=epoch_seconds,
        limits=limits,
        max_shards_per_peer=max_shards_per_peer,
        economy=economy,
    )
    return parse_genesis(text, source=f"<test genesis {network}>")


@dataclass(frozen=True, slots=True)
class NetworkOptions:
    """How :func:`open_network` builds the network and runs each peer."""

    n_shards: int = 10
    network: str = "testnet-inproc"
    epochs: EpochOptions | None = None
    """None: the epoch service is off. Otherwise the peers run it with these options."""
    epoch_seconds: int = EPOCH_DURATION_SECONDS
    start_in: float = 0.0
    """The genesis time is this many seconds from now."""
    healing: HealingOptions = field(default_factory=HealingOptions)
    limits: Limits | None = None
    weights: list[int] | None = None
    max_shards_per_peer: int | None = None
    capacity_bytes: int = DEFAULT_CAPACITY_BYTES
    inline_limit: int | None = None
    """None: the store's default inline limit."""
    request_timeout: float = 30.0
    fsync: bool = False
    """False keeps the tests fast; durability across kills is the multi-process tests' subject."""
    faults: Mapping[int, str] = field(default_factory=dict)
    """Peer index -> the fault it runs with (:mod:`walrus_p2p.node.faults`)."""
    economy: EconomyGenesis | None = None
    """The genesis's ``[economy]`` table (initial balances); None: none."""
    economy_options: EconomyOptions = field(default_factory=EconomyOptions)
    challenges: ChallengeOptions = field(default_factory=ChallengeOptions)
    """How the peers run storage challenges (they run only with epochs on, from epoch 1)."""


@dataclass(eq=False)
class TestPeer:
    """One peer of a test network: identity, address and store stay; the service changes each
    time it starts (None while it is stopped)."""

    __test__ = False  # not a pytest test class

    index: int
    name: str
    identity: Identity
    address: str
    store_dir: Path
    fault: str | None = None
    service: StoragePeerService | None = None
    store: DiskStore | None = None
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def peer_id(self) -> PeerId:
        return self.identity.peer_id

    @property
    def running(self) -> StoragePeerService:
        """The running service (``RuntimeError`` while stopped)."""
        if self.service is None or self.scope is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.service

    @property
    def epoch(self) -> int:
        return self.running.epoch

    @property
    def healing(self) -> HealingService:
        healing = self.running.healing
        if healing is None:
            raise RuntimeError(f"{self.name} has no healing service yet")
        return healing

    def stop(self) -> None:
        """Stop this peer now (its host and store close); the others keep running. Use
        :meth:`TestNetwork.stop` to wait until it has stopped."""
        if self.scope is not None:
            self.scope.cancel()


class TestNetwork:
    """The peers of a running test network, its genesis, and a blob owner's key."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        nursery: trio.Nursery,
        genesis: Genesis,
        directory: Path,
        options: NetworkOptions,
    ) -> None:
        self.nursery = nursery
        self.genesis = genesis
        self.directory = directory
        self.options = options
        self.owner = Identity.from_seed(seed_for(genesis.network, "owner"))
        self.peers: list[TestPeer] = []

    @property
    def healing(self) -> HealingOptions:
        return self.options.healing

    def __getitem__(self, key: str | int) -> TestPeer:
        if isinstance(key, int):
            return self.peers[key]
        for candidate in self.peers:
            if candidate.name == key:
                return candidate
        raise KeyError(key)

    def peer(self, peer_id: PeerId) -> TestPeer:
        for candidate in self.peers:
            if candidate.peer_id == peer_id:
                return candidate
        raise KeyError(peer_id)

    def peer_of_shard(self, shard: int) -> TestPeer:
        return self.peer(self.genesis.committee.peer_of(shard))

    def running(self) -> list[TestPeer]:
        return [peer for peer in self.peers if peer.scope is not None]

    def add(self, name: str, identity: Identity, address: str | None = None) -> TestPeer:
        """A (stopped) peer of this network; :meth:`start` starts it."""
        index = len(self.peers)
        peer = TestPeer(
            index=index,
            name=name,
            identity=identity,
            address=address or f"/ip4/127.0.0.1/tcp/{free_tcp_port()}",
            store_dir=self.directory / f"peer-{index:02d}" / "store",
            fault=self.options.faults.get(index),
        )
        self.peers.append(peer)
        return peer

    def _service(self, peer: TestPeer, store: DiskStore) -> StoragePeerService:
        options = self.options
        service_class = peer_service_class(peer.fault)
        return service_class(
            identity=peer.identity,
            genesis=self.genesis,
            store=store,
            options=PeerOptions(
                listen_addrs=(peer.address,),
                request_timeout=options.request_timeout,
                healing=options.healing,
                epochs=EpochOptions(enabled=False) if options.epochs is None else options.epochs,
                economy=options.economy_options,
                challenges=options.challenges,
            ),
        )

    async def _serve(self, peer: TestPeer, task_status: trio.TaskStatus[None]) -> None:
        options = self.options
        store = open_store(
            peer.store_dir,
            capacity_bytes=options.capacity_bytes,
            fsync=options.fsync,
            inline_limit=(
                DEFAULT_INLINE_LIMIT if options.inline_limit is None else options.inline_limit
            ),
        )
        service = self._service(peer, store)
        peer.stopped = trio.Event()
        try:
            with trio.CancelScope() as scope:
                peer.scope, peer.service, peer.store = scope, service, store
                async with trio.open_nursery() as inner:
                    await inner.start(service.run)
                    task_status.started()
        finally:
            peer.service = peer.store = peer.scope = None
            store.close()
            peer.stopped.set()

    async def start(self, which: TestPeer | str | int) -> TestPeer:
        """Start (or restart) a peer on its store and port; returns once it serves."""
        peer = which if isinstance(which, TestPeer) else self[which]
        if peer.scope is not None:
            raise RuntimeError(f"{peer.name} is already running")
        await self.nursery.start(self._serve, peer)
        return peer

    async def stop(
        self, which: TestPeer | str | int, *, wipe: bool = False, timeout: float = STOP_TIMEOUT
    ) -> None:
        """Stop a peer as a crash would (no goodbye) and wait until it has stopped; its store
        stays on disk unless ``wipe``."""
        peer = which if isinstance(which, TestPeer) else self[which]
        if peer.scope is not None:
            peer.scope.cancel()
            with trio.fail_after(timeout):
                await peer.stopped.wait()
        if wipe:
            shutil.rmtree(peer.store_dir, ignore_errors=True)

    async def join(self, name: str) -> TestPeer:
        """Start a peer that is not in the genesis committee (with epochs on, it announces its
        candidacy)."""
        identity = Identity.from_seed(seed_for(self.genesis.network, name))
        return await self.start(self.add(name, identity))

    async def wait_epoch(
        self, epoch: int, names: list[str] | None = None, *, timeout: float = WAIT_EPOCH_TIMEOUT
    ) -> None:
        """Wait until the named running peers (all running ones by default) reach ``epoch``."""
        with trio.fail_after(timeout):
            for peer in self.running() if names is None else [self[n] for n in names]:
                service = peer.running
                while service.epoch < epoch:
                    await service.epochs.changed.wait()


@asynccontextmanager
async def open_network(
    peers: int = 4,
    options: NetworkOptions | None = None,
    *,
    directory: Path | None = None,
    start: bool = True,
) -> AsyncIterator[TestNetwork]:
    """Build a network of ``peers`` genesis peers ``peer0``.. and (with ``start``) start them
    all; stop every peer and close its store on exit.

    ``directory`` holds one store per peer (a temporary directory, removed on exit, if None).
    """
    options = options or NetworkOptions()
    identities = make_identities(options.network, peers)
    addresses = [f"/ip4/127.0.0.1/tcp/{free_tcp_port()}" for _ in identities]
    genesis = make_genesis(
        identities,
        addresses,
        network=options.network,
        n_shards=options.n_shards,
        limits=options.limits,
        weights=options.weights,
        genesis_time=int(time.time() + options.start_in),
        epoch_seconds=options.epoch_seconds,
        max_shards_per_peer=options.max_shards_per_peer,
        economy=options.economy,
    )
    async with AsyncExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="walrus-")))
        async with trio.open_nursery() as nursery:
            network = TestNetwork(nursery, genesis, directory, options)
            for index, (identity, address) in enumerate(zip(identities, addresses, strict=True)):
                network.add(f"peer{index}", identity, address)
            if start:
                for peer in list(network.peers):
                    await network.start(peer)
            try:
                yield network
            finally:
                nursery.cancel_scope.cancel()


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
    faults: Mapping[int, str] | None = None,
) -> AsyncIterator[TestNetwork]:
    """The plain preset: ``peers`` running peers of an ``n_shards`` network, epochs off."""
    options = NetworkOptions(
        n_shards=n_shards,
        network=network,
        limits=limits,
        weights=weights,
        request_timeout=request_timeout,
        fsync=fsync,
        faults=dict(faults or {}),
    )
    async with open_network(peers, options, directory=directory) as running:
        yield running


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
    cache: CacheOptions | None = None,
) -> AsyncIterator[WalrusClient]:
    """A full client (store, read, status) owned by ``owner`` (the network's owner by default)."""
    async with open_client(
        network.genesis,
        owner or network.owner,
        store_options=store_options,
        read_options=read_options,
        cache=cache,
    ) as client:
        yield client


# -- bare hosts (the net/ layer, no storage peer) ----------------------------------------------


def host_seed_for(name: str) -> bytes:
    """The deterministic seed of a named bare test host."""
    return hashlib.sha256(b"walrus-p2p test peer " + name.encode()).digest()


@dataclass
class TestHost:
    """A bare libp2p host on 127.0.0.1, with its DHT and gossip if asked for."""

    __test__ = False  # not a pytest test class

    name: str
    host: Host
    discovery: Discovery | None = None
    gossip: Gossip | None = None


@asynccontextmanager
async def open_test_host(
    name: str,
    *,
    dht: DhtMode | None = None,
    gossip: bool = False,
    gossip_config: GossipConfig | None = None,
) -> AsyncIterator[TestHost]:
    async with AsyncExitStack() as stack:
        # No deadline around entering these: a cancel scope must not interleave with the
        # nurseries they open. Starting them does no network I/O.
        host = await stack.enter_async_context(open_host(HostConfig(seed=host_seed_for(name))))
        peer = TestHost(name, host)
        if dht is not None:
            peer.discovery = await stack.enter_async_context(
                open_discovery(host, DiscoveryConfig(mode=dht, refresh_interval=None))
            )
        if gossip:
            peer.gossip = await stack.enter_async_context(open_gossip(host, gossip_config))
        yield peer


@asynccontextmanager
async def open_test_hosts(
    count: int, *, prefix: str = "peer", dht: DhtMode | None = None, gossip: bool = False
) -> AsyncIterator[list[TestHost]]:
    async with AsyncExitStack() as stack:
        hosts = [
            await stack.enter_async_context(open_test_host(f"{prefix}{i}", dht=dht, gossip=gossip))
            for i in range(count)
        ]
        yield hosts


async def bootstrap_all(hosts: list[TestHost], *, timeout: float = STEP) -> None:
    """Every host but the first bootstraps from the first, concurrently."""
    entries = hosts[0].host.peer_addrs
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            for peer in hosts[1:]:
                if peer.discovery is None:
                    raise RuntimeError(f"{peer.name} was opened without a DHT")
                nursery.start_soon(peer.discovery.bootstrap, entries)


__all__ = [
    "DEFAULT_CAPACITY_BYTES",
    "EPOCH_DURATION_SECONDS",
    "STEP",
    "NetworkOptions",
    "TestHost",
    "TestNetwork",
    "TestPeer",
    "bootstrap_all",
    "free_tcp_port",
    "genesis_time_now",
    "host_seed_for",
    "make_genesis",
    "make_identities",
    "open_network",
    "open_test_client",
    "open_test_host",
    "open_test_hosts",
    "open_test_light_peer",
    "open_test_network",
    "seed_for",
]
