"""The storage protocol's names and pure helpers, shared by the peer and its services.

Kept apart from :mod:`walrus_p2p.node.peer` so the services (catch-up, recovery, maintenance,
migration, invalid blobs, healing) can use them without importing the peer, and the peer can
import its services without an import cycle (docs/design.md §11).
"""

from __future__ import annotations

from walrus_p2p.core import wire
from walrus_p2p.core.committee import Committee
from walrus_p2p.core.encoding import SliverType, pair_secondary_index, shard_to_pair
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.errors import WalrusError
from walrus_p2p.net.names import protocol_id
from walrus_p2p.types import PeerId, SliverKind

RECORDS_NAMESPACE = "blob-records"
"""Store namespace of the signed blob records a peer keeps: key = blob id + record hash."""

STORAGE_PROTOCOL = "storage"
RECORDS_TOPIC = "blob-records"


class ProtocolRefusal(WalrusError):
    """A well-formed request the peer refuses; ``reason`` says why (sent to the client)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, reason=reason)


def kind_of(sliver_type: SliverType) -> SliverKind:
    return SliverKind.PRIMARY if sliver_type is SliverType.PRIMARY else SliverKind.SECONDARY


def type_of(kind: SliverKind) -> SliverType:
    return SliverType.PRIMARY if kind is SliverKind.PRIMARY else SliverType.SECONDARY


def pair_of_sliver(sliver_type: SliverType, index: int, n_shards: int) -> int:
    """The sliver pair that holds primary sliver ``index`` or secondary sliver ``index``."""
    if sliver_type is SliverType.PRIMARY:
        return index
    return pair_secondary_index(index, n_shards)


def sliver_of_pair(kind: SliverKind, pair_index: int, n_shards: int) -> int:
    """The sliver index a pair holds: primary p, or secondary n-1-p."""
    if kind is SliverKind.PRIMARY:
        return pair_index
    return pair_secondary_index(pair_index, n_shards)


def owned_pairs(committee: Committee, peer_id: PeerId, blob_id: bytes) -> list[int]:
    """The sliver pairs of ``blob_id`` this peer must hold in the committee's epoch."""
    n_shards = committee.n_shards
    return sorted(shard_to_pair(blob_id, shard, n_shards) for shard in committee.shards_of(peer_id))


def storage_protocol_id(genesis: Genesis) -> str:
    return protocol_id(genesis.network_id_text, STORAGE_PROTOCOL)


def wire_limits_for(genesis: Genesis) -> wire.WireLimits:
    max_sliver = genesis.limits.max_sliver_size or wire.DEFAULT_LIMITS.max_sliver_size
    return wire.WireLimits(max_sliver_size=max_sliver, max_symbol_size=max_sliver)


def max_frame_for(genesis: Genesis) -> int:
    """Largest request or reply frame: one sliver plus the message around it."""
    return wire_limits_for(genesis).max_sliver_size + 64 * 1024
