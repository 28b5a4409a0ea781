"""Scrub and garbage collection: the storage peer's periodic passes over its own disk.

Scrub re-reads every sliver this peer must hold (the store checks its checksum and flags a
damaged one) and re-verifies it against the blob's metadata; a missing, corrupt or mismatching
sliver is deleted and rebuilt by recovery. The pass keeps to an I/O budget
(``scrub_bytes_per_second``) by sleeping after each read, so it never starves requests.

Garbage collection removes the data of blobs that no longer need storing: slivers and metadata
of expired blobs (end epoch reached) and deleted blobs; only the slivers of invalid blobs (the
metadata and state stay, so reads can report "invalid"). Records are kept: they are small and
answer status questions after the data is gone.
"""

from __future__ import annotations

import logging

import trio

from walrus_p2p.core import wire
from walrus_p2p.core.metadata import Metadata, verify_sliver
from walrus_p2p.errors import NotFoundError, StorageError, VerificationError
from walrus_p2p.node.context import PeerContext
from walrus_p2p.node.healing_metrics import HealingMetrics
from walrus_p2p.node.healing_options import HealingOptions
from walrus_p2p.node.protocol import owned_pairs, sliver_of_pair, type_of
from walrus_p2p.node.recovery import BlobSync
from walrus_p2p.storage import BlobInfo, CorruptDataError
from walrus_p2p.types import BlobId, SliverKind, short_id

logger = logging.getLogger(__name__)


class Maintenance:
    def __init__(
        self,
        ctx: PeerContext,
        sync: BlobSync,
        options: HealingOptions,
        metrics: HealingMetrics,
    ) -> None:
        self.ctx = ctx
        self.sync = sync
        self.options = options
        self.metrics = metrics

    async def _blobs(self) -> list[BlobInfo]:
        return await trio.to_thread.run_sync(lambda: list(self.ctx.store.iter_blobs()))

    # -- garbage collection --------------------------------------------------------------

    async def collect_garbage(self, epoch: int | None = None) -> int:
        """One pass; ``epoch`` defaults to the peer's current one. Returns blobs cleaned."""
        current = self.ctx.epoch if epoch is None else epoch
        cleaned = 0
        for info in await self._blobs():
            if await self.collect_blob(info, current):
                cleaned += 1
        return cleaned

    async def collect_blob(self, info: BlobInfo, epoch: int) -> bool:
        blob_id = info.blob_id
        summary = info.state
        if not summary.invalid and summary.end_epoch is not None and summary.end_epoch > epoch:
            return False  # live by the store's summary: skip loading its records
        state = await self.ctx.records.blob_state(blob_id)
        store = self.ctx.store
        if state.is_invalid:
            if info.sliver_count == 0:
                return False
            dropped = await trio.to_thread.run_sync(store.delete_slivers, blob_id)
            self.metrics.gc_removed.labels(why="invalid").inc()
            logger.info("invalid blob data dropped blob=%s slivers=%d", short_id(blob_id), dropped)
            return True
        end = state.end_epoch
        if state.is_deleted:
            why = "deleted"
        elif end is not None and end <= epoch:
            why = "expired"
        else:
            return False
        if not info.has_metadata and info.sliver_count == 0:
            return False
        await trio.to_thread.run_sync(store.delete_blob, blob_id)
        await self.sync.forget(blob_id)
        self.metrics.gc_removed.labels(why=why).inc()
        logger.info("blob data removed blob=%s why=%s", short_id(blob_id), why)
        return True

    async def drop_if_gone(self, blob_id: BlobId) -> bool:
        """Collect one blob now (after a delete or invalid record was merged)."""
        store = self.ctx.store
        state = await self.ctx.records.blob_state(blob_id)
        if state.is_invalid:
            dropped = await trio.to_thread.run_sync(store.delete_slivers, blob_id)
            if dropped:
                self.metrics.gc_removed.labels(why="invalid").inc()
                logger.info(
                    "invalid blob data dropped blob=%s slivers=%d", short_id(blob_id), dropped
                )
            await self.sync.forget(blob_id)
            return dropped > 0
        if state.is_deleted:
            removed = await trio.to_thread.run_sync(store.delete_blob, blob_id)
            await self.sync.forget(blob_id)
            if removed:
                self.metrics.gc_removed.labels(why="deleted").inc()
                logger.info("blob data removed blob=%s why=deleted", short_id(blob_id))
            return removed
        return False

    # -- scrub ---------------------------------------------------------------------------

    async def scrub(self) -> tuple[int, int]:
        """One rate-limited pass; returns (slivers checked, slivers damaged)."""

        peer = self.ctx
        checked = damaged = 0
        for info in await self._blobs():
            summary = info.state  # the store's copy of the merged state: no record scan
            if summary.invalid or summary.certified_epoch is None:
                continue
            if summary.end_epoch is None or summary.end_epoch <= peer.epoch:
                continue
            pairs = owned_pairs(peer.committee, peer.peer_id, info.blob_id)
            if not pairs:
                continue
            metadata = await self._metadata(info.blob_id)
            bad = False
            for pair in pairs:
                for kind in (SliverKind.PRIMARY, SliverKind.SECONDARY):
                    checked += 1
                    if not await self.check_sliver(info.blob_id, metadata, pair, kind):
                        damaged += 1
                        bad = True
            if bad or metadata is None:
                self.sync.notice(info.blob_id, delay=0.0)
        logger.info("scrub pass done checked=%d damaged=%d", checked, damaged)
        return checked, damaged

    async def _metadata(self, blob_id: BlobId) -> Metadata | None:
        try:
            raw = await trio.to_thread.run_sync(self.ctx.store.get_metadata, blob_id)
        except NotFoundError:  # includes CorruptDataError
            logger.warning("scrub: metadata missing or corrupt blob=%s", short_id(blob_id))
            return None
        return wire.decode(raw, wire.GetMetadataReply).metadata

    async def check_sliver(
        self, blob_id: BlobId, metadata: Metadata | None, pair: int, kind: SliverKind
    ) -> bool:
        """Re-read and re-verify one sliver; a bad one is deleted (for recovery). True if good."""
        store = self.ctx.store
        self.metrics.scrub_checked.inc()
        try:
            data = await trio.to_thread.run_sync(store.get_sliver, blob_id, pair, kind)
        except CorruptDataError as error:
            logger.warning("scrub: corrupt sliver %s", error)
            await self._discard(blob_id, pair, kind)
            return False
        except NotFoundError:
            logger.warning(
                "scrub: sliver missing blob=%s pair=%d kind=%s",
                short_id(blob_id),
                pair,
                kind.name.lower(),
            )
            self.metrics.scrub_damaged.inc()
            return False
        self.metrics.scrub_bytes.inc(len(data))
        good = True
        if metadata is not None:
            index = sliver_of_pair(kind, pair, metadata.shards)
            try:
                await trio.to_thread.run_sync(verify_sliver, metadata, type_of(kind), index, data)
            except VerificationError as error:
                logger.warning(
                    "scrub: sliver does not match metadata blob=%s pair=%d error=%s",
                    short_id(blob_id),
                    pair,
                    error,
                )
                await self._discard(blob_id, pair, kind)
                good = False
        # The I/O budget: this read "costs" len/rate seconds.
        await trio.sleep(len(data) / max(1.0, self.options.scrub_bytes_per_second))
        return good

    async def _discard(self, blob_id: BlobId, pair: int, kind: SliverKind) -> None:
        self.metrics.scrub_damaged.inc()
        try:
            await trio.to_thread.run_sync(self.ctx.store.delete_sliver, blob_id, pair, kind)
        except StorageError as error:
            logger.warning("scrub: could not delete a bad sliver error=%s", error)
