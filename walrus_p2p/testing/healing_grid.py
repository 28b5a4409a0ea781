"""A restartable in-process network for the healing tests and ``bench/repair.py``.

:mod:`walrus_p2p.testing.network` starts a fixed set of peers; healing needs more: stop one
peer, wipe its store (keeping its identity and address), start it again; peers with short
healing delays; and writers that misbehave — one that skips some peers (so they must sync
after the certificate) and one whose encoding is inconsistent. Identities, genesis and ports
come from :mod:`walrus_p2p.testing.network`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trio

from walrus_p2p.client.network import LightPeer
from walrus_p2p.client.store import verify_confirmation
from walrus_p2p.core import merkle, records, wire
from walrus_p2p.core.blob_messages import (
    PostBlobRecordsReply,
    PostBlobRecordsRequest,
    encode_records,
)
from walrus_p2p.core.committee import Member
from walrus_p2p.core.encoding import (
    EncodedBlob,
    EncodingConfig,
    SliverType,
    encode,
    expand_sliver,
    pair_secondary_index,
    pair_to_shard,
)
from walrus_p2p.core.genesis import Genesis, Limits, create_genesis_toml, parse_genesis
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.metadata import (
    ENCODING_RED_STUFF,
    EncodedBlobWithMetadata,
    Metadata,
    SliverPairMetadata,
    compute_blob_id,
    encode_blob,
)
from walrus_p2p.errors import QuorumError, WalrusError
from walrus_p2p.node.healing import HealingService
from walrus_p2p.node.healing_options import HealingOptions
from walrus_p2p.node.peer import PeerOptions, StoragePeerService
from walrus_p2p.node.protocol import owned_pairs
from walrus_p2p.storage import DEFAULT_INLINE_LIMIT, DiskStore, open_store
from walrus_p2p.testing.network import free_tcp_port, make_identities, seed_for
from walrus_p2p.types import BlobId, Epoch, PeerId, SliverKind

CAPACITY_BYTES = 8 << 30
EPOCH_SECONDS = 7 * 24 * 3600

FAST_HEALING = HealingOptions(
    sync_delay=0.3,
    sync_backoff_initial=0.3,
    sync_backoff_max=2.0,
    request_timeout=10.0,
    catch_up_interval=3600.0,
    scrub_first_delay=3600.0,
    scrub_interval=3600.0,
    scrub_bytes_per_second=256 * 1024 * 1024,
    gc_first_delay=3600.0,
    gc_interval=3600.0,
    attestation_timeout=10.0,
)
"""Short delays; scrub and GC are run by the tests themselves (long intervals here)."""


@dataclass
class GridPeer:
    """One slot of the grid: identity and address stay, the service changes on restart."""

    index: int
    identity: Identity
    address: str
    store_dir: Path
    service: StoragePeerService | None = None
    store: DiskStore | None = None
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def peer_id(self) -> PeerId:
        return self.identity.peer_id

    @property
    def running(self) -> StoragePeerService:
        if self.service is None:
            raise RuntimeError(f"peer {self.index} is not running")
        return self.service

    @property
    def healing(self) -> HealingService:
        healing = self.running.healing
        if healing is None:
            raise RuntimeError(f"peer {self.index} has no healing service yet")
        return healing


class HealingGrid:
    """Storage peers that can be stopped, wiped and restarted inside one trio run."""

    def __init__(
        self,
        genesis: Genesis,
        peers: list[GridPeer],
        nursery: trio.Nursery,
        healing: HealingOptions,
        inline_limit: int | None,
    ) -> None:
        self.genesis = genesis
        self.peers = peers
        self._nursery = nursery
        self.healing = healing
        self.inline_limit = inline_limit

    def peer(self, peer_id: PeerId) -> GridPeer:
        for slot in self.peers:
            if slot.peer_id == peer_id:
                return slot
        raise KeyError(peer_id)

    async def _serve(self, slot: GridPeer, task_status: trio.TaskStatus[None]) -> None:
        store = open_store(
            slot.store_dir,
            capacity_bytes=CAPACITY_BYTES,
            fsync=False,
            inline_limit=DEFAULT_INLINE_LIMIT if self.inline_limit is None else self.inline_limit,
        )
        service = StoragePeerService(
            identity=slot.identity,
            genesis=self.genesis,
            store=store,
            options=PeerOptions(listen_addrs=(slot.address,), healing=self.healing),
        )
        slot.stopped = trio.Event()
        try:
            with trio.CancelScope() as scope:
                slot.scope, slot.service, slot.store = scope, service, store
                async with trio.open_nursery() as inner:
                    await inner.start(service.run)
                    task_status.started()
        finally:
            slot.service = slot.store = slot.scope = None
            store.close()
            slot.stopped.set()

    async def start(self, index: int) -> None:
        await self._nursery.start(self._serve, self.peers[index])

    async def stop(self, index: int, *, wipe: bool = False, timeout: float = 20.0) -> None:
        slot = self.peers[index]
        if slot.scope is not None:
            slot.scope.cancel()
            with trio.fail_after(timeout):
                await slot.stopped.wait()
        if wipe:
            shutil.rmtree(slot.store_dir, ignore_errors=True)


@asynccontextmanager
async def open_healing_grid(
    peers: int = 4,
    n_shards: int = 10,
    *,
    network: str = "healing-grid",
    healing: HealingOptions = FAST_HEALING,
    limits: Limits | None = None,
    inline_limit: int | None = None,
    directory: Path | None = None,
) -> AsyncIterator[HealingGrid]:
    identities = make_identities(network, peers)
    addresses = [f"/ip4/127.0.0.1/tcp/{free_tcp_port()}" for _ in identities]
    # Genesis now with long epochs: the grid stays in epoch 0 (epoch changes are not its topic).
    members = [
        Member.from_public_key(identity.public_key.raw, 1, [address])
        for identity, address in zip(identities, addresses, strict=True)
    ]
    genesis = parse_genesis(
        create_genesis_toml(
            network=network,
            n_shards=n_shards,
            members=members,
            genesis_time=int(time.time()),
            epoch_duration_seconds=EPOCH_SECONDS,
            limits=limits,
        ),
        source=f"<healing grid {network}>",
    )
    async with AsyncExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="walrus-")))
        slots = [
            GridPeer(index, identity, address, directory / f"peer-{index:02d}" / "store")
            for index, (identity, address) in enumerate(zip(identities, addresses, strict=True))
        ]
        async with trio.open_nursery() as nursery:
            grid = HealingGrid(genesis, slots, nursery, healing, inline_limit)
            for index in range(peers):
                await grid.start(index)
            try:
                yield grid
            finally:
                nursery.cancel_scope.cancel()


def owner_identity(grid: HealingGrid) -> Identity:
    return Identity.from_seed(seed_for(grid.genesis.network, "owner"))


# -- writers ---------------------------------------------------------------------------------


def _sliver(encoded: EncodedBlob, kind: SliverKind, pair: int) -> bytes:
    n_shards = encoded.config.n
    if kind is SliverKind.PRIMARY:
        return bytes(encoded.sliver(SliverType.PRIMARY, pair))
    return bytes(encoded.sliver(SliverType.SECONDARY, pair_secondary_index(pair, n_shards)))


@dataclass(frozen=True, slots=True)
class Written:
    blob_id: BlobId
    metadata: Metadata
    register: records.BlobRegister
    certificate: records.BlobCertificate
    skipped: frozenset[PeerId]


async def push_to_all(
    light: LightPeer, blob_id: BlobId, items: list[records.BlobRecord], *, timeout: float = 20.0
) -> int:
    encoded = encode_records(items)
    delivered = 0

    async def push(peer_id: PeerId) -> None:
        nonlocal delivered
        try:
            await light.call(
                peer_id,
                PostBlobRecordsRequest(blob_id=blob_id, records=encoded),
                PostBlobRecordsReply,
                timeout=timeout,
            )
            delivered += 1
        except WalrusError:
            pass

    async with trio.open_nursery() as nursery:
        for peer_id in light.committee.peer_ids:
            nursery.start_soon(push, peer_id)
    return delivered


async def write_blob(
    light: LightPeer,
    owner: Identity,
    encoded: EncodedBlobWithMetadata,
    *,
    epochs: int = 3,
    skip: Iterable[PeerId] = (),
    timeout: float = 30.0,
) -> Written:
    """Register, upload to every peer but ``skip``, certify, push the records to everyone.

    Unlike the client's store flow it never sends a sliver to a skipped peer, so those peers
    can only get their slivers by blob sync.
    """
    skipped = frozenset(skip)
    genesis = light.genesis
    blob_id = encoded.blob_id
    size = encoded.metadata.unencoded_length
    register = records.sign_register(
        owner,
        network_id=genesis.network_id,
        blob_id=blob_id,
        size=size,
        start_epoch=light.epoch,
        end_epoch=light.epoch + epochs,
        deletable=True,
    )
    confirmations: dict[PeerId, wire.SignedStorageConfirmation] = {}

    async def upload(peer_id: PeerId) -> None:
        await light.call(
            peer_id,
            PostBlobRecordsRequest(blob_id=blob_id, records=encode_records([register])),
            PostBlobRecordsReply,
            timeout=timeout,
        )
        await light.call(
            peer_id,
            wire.StoreMetadataRequest(blob_id=blob_id, metadata=encoded.metadata),
            wire.StoreMetadataReply,
            timeout=timeout,
        )
        for pair in owned_pairs(light.committee, peer_id, blob_id):
            for kind in (SliverKind.PRIMARY, SliverKind.SECONDARY):
                await light.call(
                    peer_id,
                    wire.StoreSliverRequest(
                        blob_id=blob_id,
                        pair_index=pair,
                        sliver_kind=kind,
                        data=_sliver(encoded.encoded, kind, pair),
                    ),
                    wire.StoreSliverReply,
                    timeout=timeout,
                )
        reply = await light.call(
            peer_id,
            wire.GetConfirmationRequest(blob_id=blob_id, epoch=light.epoch, permanent=False),
            wire.GetConfirmationReply,
            timeout=timeout,
        )
        verify_confirmation(light, peer_id, reply.confirmation, blob_id=blob_id, permanent=False)
        confirmations[peer_id] = reply.confirmation

    async with trio.open_nursery() as nursery:
        for peer_id in light.committee.peer_ids:
            if peer_id not in skipped:
                nursery.start_soon(upload, peer_id)
    if not light.committee.is_quorum(confirmations):
        raise QuorumError("the test writer did not reach a quorum of confirmations")
    certificate = records.BlobCertificate(
        network_id=genesis.network_id,
        blob_id=blob_id,
        epoch=Epoch(light.epoch),
        permanent=False,
        confirmations=tuple(records.confirmation_signature(c) for c in confirmations.values()),
    )
    certificate.verify(genesis.network_id, light.committee)
    await push_to_all(light, blob_id, [register, certificate], timeout=timeout)
    return Written(blob_id, encoded.metadata, register, certificate, skipped)


def honest_encoding(data: bytes, n_shards: int) -> EncodedBlobWithMetadata:
    return encode_blob(data, EncodingConfig.for_shards(n_shards))


def _root(values: np.ndarray, symbol_size: int) -> bytes:
    return merkle.root_of_leaf_hashes(
        merkle.leaf_hashes_of_symbols(np.ascontiguousarray(values).reshape(-1).data, symbol_size)
    )


def inconsistent_encoding(
    data: bytes, n_shards: int, liar_pair: int, fake_seed: int = 7
) -> EncodedBlobWithMetadata:
    """A writer that replaces primary sliver ``liar_pair`` (a parity row, ``liar_pair >= kp``)
    by another codeword and commits to it, and commits honestly to everything else.

    Every sliver verifies against its own hash, so every peer stores and confirms; but
    rebuilding primary sliver ``liar_pair`` from the (honest) secondary slivers gives the honest
    row, which contradicts the committed one: an inconsistency proof.
    """
    config = EncodingConfig.for_shards(n_shards)
    if liar_pair < config.kp:
        raise ValueError("the liar's row must be a parity row (>= kp)")
    honest = encode(data, config)
    size = config.symbol_size(len(data))
    rng = np.random.default_rng(fake_seed)
    fake = rng.integers(0, 256, size=config.ks * size, dtype=np.uint8).tobytes()
    fake_row = expand_sliver(config, SliverType.PRIMARY, fake, size)
    pairs = []
    for pair in range(n_shards):
        if pair == liar_pair:
            primary_hash = _root(fake_row, size)
        else:
            primary_hash = _root(
                expand_sliver(
                    config, SliverType.PRIMARY, honest.sliver(SliverType.PRIMARY, pair), size
                ),
                size,
            )
        column = pair_secondary_index(pair, n_shards)
        secondary = honest.sliver(SliverType.SECONDARY, column)
        secondary_hash = _root(expand_sliver(config, SliverType.SECONDARY, secondary, size), size)
        pairs.append(SliverPairMetadata(primary_hash, secondary_hash))
    metadata = Metadata(ENCODING_RED_STUFF, len(data), tuple(pairs))
    blob_id = compute_blob_id(metadata)
    tampered = _TamperedBlob(honest, liar_pair, fake)
    return EncodedBlobWithMetadata(tampered, metadata, blob_id)  # type: ignore[arg-type]


class _TamperedBlob:
    """An :class:`EncodedBlob` look-alike whose one primary sliver is replaced."""

    def __init__(self, honest: EncodedBlob, liar_pair: int, fake: bytes) -> None:
        self.config = honest.config
        self._honest = honest
        self._liar = liar_pair
        self._fake = fake

    def sliver(self, sliver_type: SliverType, index: int) -> memoryview:
        if sliver_type is SliverType.PRIMARY and index == self._liar:
            return memoryview(self._fake)
        return self._honest.sliver(sliver_type, index)


def holder_of_pair(grid: HealingGrid, blob_id: BlobId, pair: int) -> GridPeer:
    n_shards = grid.genesis.n_shards
    return grid.peer(grid.genesis.committee.peer_of(pair_to_shard(blob_id, pair, n_shards)))
