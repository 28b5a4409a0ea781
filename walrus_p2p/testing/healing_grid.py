"""The healing preset of the in-process network builder, and writers that misbehave.

Who uses it: ``tests/node/test_healing.py`` and ``bench/repair.py``. The network is built by
:func:`walrus_p2p.testing.network.open_network` (stop a peer, wipe its store keeping its
identity and address, start it again: :meth:`TestNetwork.stop` / :meth:`TestNetwork.start`);
:func:`open_healing_grid` only picks the options: short healing delays, a large store, epochs
of a week. The rest of the module are test writers: one that skips some peers (so they must
sync after the certificate) and one whose encoding is inconsistent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
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
from walrus_p2p.core.encoding import (
    EncodedBlob,
    EncodingConfig,
    SliverType,
    encode,
    expand_sliver,
    pair_secondary_index,
    pair_to_shard,
)
from walrus_p2p.core.genesis import Limits
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
from walrus_p2p.node.epochs import EpochOptions
from walrus_p2p.node.healing_options import HealingOptions
from walrus_p2p.node.peer import PeerOptions
from walrus_p2p.node.protocol import owned_pairs
from walrus_p2p.testing.network import NetworkOptions, TestNetwork, TestPeer, open_network
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

GridPeer = TestPeer
HealingGrid = TestNetwork


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
) -> AsyncIterator[TestNetwork]:
    """``peers`` running peers with short healing delays; the genesis is now with week-long
    epochs, so the grid stays in epoch 0 (epoch changes are not its topic)."""
    options = NetworkOptions(
        n_shards=n_shards,
        network=network,
        epochs=EpochOptions(),
        epoch_seconds=EPOCH_SECONDS,
        healing=healing,
        limits=limits,
        capacity_bytes=CAPACITY_BYTES,
        inline_limit=inline_limit,
        request_timeout=PeerOptions(listen_addrs=()).request_timeout,
    )
    async with open_network(peers, options, directory=directory) as grid:
        yield grid


def owner_identity(grid: TestNetwork) -> Identity:
    return grid.owner


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


def holder_of_pair(grid: TestNetwork, blob_id: BlobId, pair: int) -> TestPeer:
    n_shards = grid.genesis.n_shards
    return grid.peer(grid.genesis.committee.peer_of(pair_to_shard(blob_id, pair, n_shards)))
