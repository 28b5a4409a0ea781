"""What every service of a storage peer works with, built once the peer's host is open.

docs/design.md §11.1. :class:`~walrus_p2p.node.peer.StoragePeerService` opens the host, the DHT
and gossip, then builds one :class:`PeerContext` and hands it to each service it composes
(slivers, epochs, healing with recovery, catch-up, maintenance, invalid blobs and migration).
Nothing in it is optional: a service never checks whether the host exists yet, and it reads the
committee through the :class:`~walrus_p2p.node.committee_view.CommitteeView` (only the epoch
service writes it), records through the :class:`~walrus_p2p.node.record_book.RecordBook`, and
registers its request handlers on the :class:`~walrus_p2p.node.router.Router`.
"""

from __future__ import annotations

from dataclasses import dataclass

from walrus_p2p.core import wire
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.core.identity import Identity
from walrus_p2p.net.discovery import Discovery
from walrus_p2p.net.gossip import Gossip
from walrus_p2p.net.host import Host
from walrus_p2p.node.committee_view import CommitteeView, ReadsCommittee
from walrus_p2p.node.metrics import PeerMetrics
from walrus_p2p.node.record_book import RecordBook
from walrus_p2p.node.router import Router
from walrus_p2p.storage import BlobStore


@dataclass(frozen=True, slots=True)
class PeerContext(ReadsCommittee):
    """One running storage peer, as its services see it."""

    identity: Identity
    genesis: Genesis
    store: BlobStore
    metrics: PeerMetrics
    limits: wire.WireLimits
    """Wire decoding limits of this network (sliver and symbol caps from the genesis)."""
    protocol: str
    """The storage protocol id of this network."""
    max_frame: int
    """The biggest frame on the storage protocol (request or reply)."""
    committees: CommitteeView
    records: RecordBook
    router: Router
    host: Host
    discovery: Discovery
    gossip: Gossip
    announce_addrs: tuple[str, ...] | None = None
    """Addresses the operator configured to announce instead of the listen addresses."""
