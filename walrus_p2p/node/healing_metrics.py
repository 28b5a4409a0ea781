"""Metrics of the healing services, registered in the peer's own registry.

Label sets are bounded: shards (n ≤ 256) times two sliver kinds, a handful of outcomes. Bytes
per blob would be unbounded as a label, so they are kept in a small in-memory ledger of the
most recent blobs instead (for tests, the bench and the health summary), and the totals go to
the peer's ``walrus_recovery_bytes_received`` counter.
"""

from __future__ import annotations

from collections import OrderedDict

from prometheus_client import Counter, Gauge

from walrus_p2p.node.metrics import PeerMetrics
from walrus_p2p.types import BlobId

LEDGER_BLOBS = 1024
"""Blobs whose recovery traffic is remembered (least recently updated dropped first)."""


class HealingMetrics:
    def __init__(self, peer_metrics: PeerMetrics) -> None:
        registry = peer_metrics.registry
        self.total = peer_metrics.recovery_bytes
        self.symbol_bytes_received = Counter(
            "walrus_recovery_symbol_bytes_received",
            "Recovery symbol reply bytes received, by shard being rebuilt and sliver kind",
            ["shard", "sliver_kind"],
            registry=registry,
        )
        self.metadata_bytes_received = Counter(
            "walrus_recovery_metadata_bytes_received",
            "Metadata reply bytes received while recovering",
            registry=registry,
        )
        self.slivers_recovered = Counter(
            "walrus_slivers_recovered",
            "Slivers rebuilt from recovery symbols and stored",
            ["sliver_kind"],
            registry=registry,
        )
        self.bad_symbols = Counter(
            "walrus_recovery_bad_symbols",
            "Recovery symbols that failed verification (their sender is skipped)",
            registry=registry,
        )
        self.sync_runs = Counter(
            "walrus_blob_sync_runs",
            "Blob sync attempts by outcome",
            ["outcome"],
            registry=registry,
        )
        self.records_caught_up = Counter(
            "walrus_catch_up_records_merged",
            "Blob records merged by catch-up",
            registry=registry,
        )
        self.scrub_checked = Counter(
            "walrus_scrub_slivers_checked", "Slivers re-read and re-verified", registry=registry
        )
        self.scrub_bytes = Counter(
            "walrus_scrub_bytes_read", "Sliver bytes read by the scrubber", registry=registry
        )
        self.scrub_damaged = Counter(
            "walrus_scrub_slivers_damaged",
            "Slivers found missing, corrupt or not matching their hash",
            registry=registry,
        )
        self.gc_removed = Counter(
            "walrus_gc_blobs_removed",
            "Blobs whose data garbage collection removed, by why",
            ["why"],
            registry=registry,
        )
        self.blobs_invalidated = Counter(
            "walrus_blobs_marked_invalid",
            "Blobs this peer proved inconsistent and got an invalid-blob record for",
            registry=registry,
        )
        self.migration_slivers = Counter(
            "walrus_migration_slivers",
            "Slivers pulled from a shard's previous owner, by outcome "
            "(stored, held, not_live, bad, no_metadata)",
            ["outcome"],
            registry=registry,
        )
        self.migration_bytes_received = Counter(
            "walrus_migration_bytes_received",
            "Pull reply bytes received from previous shard owners",
            registry=registry,
        )
        self.migration_slivers_served = Counter(
            "walrus_migration_slivers_served",
            "Slivers sent to new shard owners",
            registry=registry,
        )
        self.migration_slivers_released = Counter(
            "walrus_migration_slivers_released",
            "Slivers of moved shards dropped after the new owner reported them in place",
            registry=registry,
        )
        self.shards_in_place = Gauge(
            "walrus_shards_in_place",
            "Shards this peer reported in place for the current epoch",
            registry=registry,
        )
        self.migration_received_total = 0
        self._per_blob: OrderedDict[BlobId, int] = OrderedDict()
        self.received_total = 0
        """Every recovery byte received (symbols and metadata) since the peer started."""

    def symbol_bytes(self, blob_id: BlobId, shard: int, sliver_kind: str, size: int) -> None:
        self.symbol_bytes_received.labels(shard=str(shard), sliver_kind=sliver_kind).inc(size)
        self.total.inc(size)
        self.received_total += size
        self._per_blob[blob_id] = self._per_blob.pop(blob_id, 0) + size
        while len(self._per_blob) > LEDGER_BLOBS:
            self._per_blob.popitem(last=False)

    def metadata_bytes(self, size: int) -> None:
        self.metadata_bytes_received.inc(size)
        self.total.inc(size)
        self.received_total += size

    def migration_bytes(self, size: int) -> None:
        self.migration_bytes_received.inc(size)
        self.migration_received_total += size

    def recovery_bytes_of(self, blob_id: BlobId) -> int:
        """Symbol bytes received for ``blob_id`` (0 if unknown or forgotten)."""
        return self._per_blob.get(blob_id, 0)
