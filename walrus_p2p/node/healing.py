"""Self-healing of a storage peer: blob sync, catch-up, scrub, garbage collection, invalid blobs.

:class:`HealingService` is composed into :class:`~walrus_p2p.node.peer.StoragePeerService`
(which builds it once its host exists and runs it next to the request handlers). It wires:

- :class:`~walrus_p2p.node.peer_calls.PeerCaller` — requests to other peers from this host;
- :class:`~walrus_p2p.node.recovery.Recovery` and :class:`~walrus_p2p.node.recovery.BlobSync`
  — rebuild owned slivers from verified recovery symbols after a certificate or a scan;
- :class:`~walrus_p2p.node.catchup.CatchUp` — the record listing (served and pulled);
- :class:`~walrus_p2p.node.maintenance.Maintenance` — scrub and garbage collection;
- :class:`~walrus_p2p.node.invalid.InvalidBlobs` — attestations and the BlobInvalid record;
- :class:`~walrus_p2p.node.migration.ShardMigration` — shards pulled from their previous owner
  at an epoch change, the "shards in place" reports, and the release of moved shards.

The peer tells it about merged records through a listener (a certificate queues a sync, a
delete or invalid record drops data at once). See ``docs/healing.md``.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable

import trio

from walrus_p2p.core import records, wire
from walrus_p2p.core.blob_messages import AttestInvalidBlobRequest, ListBlobRecordsRequest
from walrus_p2p.core.metadata import InconsistentSliverError, Metadata
from walrus_p2p.errors import WalrusError
from walrus_p2p.node.catchup import CatchUp
from walrus_p2p.node.context import PeerContext
from walrus_p2p.node.healing_metrics import HealingMetrics
from walrus_p2p.node.healing_options import HealingOptions
from walrus_p2p.node.invalid import InvalidBlobs
from walrus_p2p.node.maintenance import Maintenance
from walrus_p2p.node.migration import ShardMigration
from walrus_p2p.node.peer_calls import PeerCaller
from walrus_p2p.node.protocol import max_frame_for, owned_pairs, storage_protocol_id
from walrus_p2p.node.recovery import BlobSync, Recovery
from walrus_p2p.types import BlobId, PeerId, SliverKind, short_id

logger = logging.getLogger(__name__)

DROP_QUEUE_SIZE = 1024
SLIVER_KINDS = (SliverKind.PRIMARY, SliverKind.SECONDARY)
REACHABILITY_WINDOW = 6
REACHABILITY_MIN_PINGS = 4


class HealingService:
    """Every healing task of one storage peer; ``await run()`` until cancelled."""

    def __init__(self, ctx: PeerContext, options: HealingOptions) -> None:
        self.ctx = ctx
        self.options = options
        self.metrics = HealingMetrics(ctx.metrics)
        self.caller = PeerCaller(
            ctx.host,
            protocol=storage_protocol_id(ctx.genesis),
            limits=ctx.limits,
            max_frame=max_frame_for(ctx.genesis),
            committee=lambda: ctx.committee,
            discovery=ctx.discovery,
        )
        self.recovery = Recovery(ctx, self.caller, options, self.metrics)
        self.invalid = InvalidBlobs(ctx, self.caller, self.recovery, options, self.metrics)
        self.sync = BlobSync(
            ctx,
            self.recovery,
            options,
            self.metrics,
            self._on_inconsistent,
            migrating=lambda: self.migration.migrating(),
        )
        self.catch_up = CatchUp(ctx, self.caller, options, self.metrics)
        self.maintenance = Maintenance(ctx, self.sync, options, self.metrics)
        self.migration = ShardMigration(
            ctx,
            self.caller,
            self.recovery,
            self.lacking,
            lambda blob_id: self.sync.notice(blob_id, delay=0.0),
            self.sync.wait_idle,
            options,
            self.metrics,
        )
        self._drop_send, self._drop_receive = trio.open_memory_channel[BlobId](DROP_QUEUE_SIZE)
        self.caught_up = trio.Event()
        """Set after the first catch-up round and the scan that follows it."""
        self._catch_up_lock = trio.Lock()
        ctx.router.add(ListBlobRecordsRequest, self.catch_up.handle_list)
        ctx.router.add(AttestInvalidBlobRequest, self.invalid.handle_attest)
        ctx.records.subscribe(self._on_records)

    # -- reactions -----------------------------------------------------------------------

    def _on_records(self, blob_id: BlobId, state: records.BlobState) -> None:
        peer = self.ctx
        if not self.options.enabled:
            return
        if state.is_invalid or state.is_deleted:
            try:
                self._drop_send.send_nowait(blob_id)
            except trio.WouldBlock:
                logger.info("drop queue full; gc will collect blob=%s", short_id(blob_id))
            return
        if (
            state.certificate is not None
            and state.is_stored_in(peer.epoch)
            and owned_pairs(peer.committee, peer.peer_id, blob_id)
        ):
            self.sync.notice(blob_id)

    async def _on_inconsistent(
        self, blob_id: BlobId, metadata: Metadata, error: InconsistentSliverError
    ) -> None:
        await self.invalid.mark_invalid(blob_id, metadata, error)

    async def lacking(self) -> list[BlobId]:
        """Live certified blobs of which this peer lacks metadata or an owned sliver."""
        peer = self.ctx
        store = peer.store
        epoch = peer.epoch
        committee = peer.committee

        def find() -> list[BlobId]:
            found: list[BlobId] = []
            for info in store.iter_blobs():
                summary = info.state
                if summary.invalid or summary.certified_epoch is None:
                    continue
                if summary.end_epoch is None or summary.end_epoch <= epoch:
                    continue
                pairs = owned_pairs(committee, peer.peer_id, info.blob_id)
                if not pairs:
                    continue
                if info.has_metadata and info.sliver_count >= 2 * len(pairs):
                    # Slivers of shards this peer lost may be among them (kept until the new
                    # owner is in place): check the owned ones exactly.
                    held = {(key.pair_index, key.kind) for key in store.list_slivers(info.blob_id)}
                    if all((pair, kind) in held for pair in pairs for kind in SLIVER_KINDS):
                        continue
                found.append(info.blob_id)
            return found

        return await trio.to_thread.run_sync(find)

    async def scan(self) -> int:
        """Queue every blob this peer must hold but lacks something of; returns how many."""
        queued = 0
        for blob_id in await self.lacking():
            if self.sync.notice(blob_id, delay=0.0):
                queued += 1
        self.sync.overflowed = False
        if queued:
            logger.info("scan queued blobs for sync count=%d", queued)
        return queued

    async def catch_up_now(self, sources: int | None = None) -> None:
        """One catch-up round, then a scan for blobs to sync (failures are logged); returns at
        once if a round is already running."""
        if self._catch_up_lock.locked():
            return
        async with self._catch_up_lock:
            await self._catch_up_round(sources)

    async def _catch_up_round(self, sources: int | None) -> None:
        try:
            await self.catch_up.run_round(sources)
        except WalrusError as error:
            logger.info("catch-up round failed reason=%s detail=%s", error.reason, error)
        except Exception:  # a bug must not take the peer down
            logger.exception("catch-up round crashed")
        try:
            await self.scan()
        except WalrusError as error:
            logger.warning("scan failed reason=%s detail=%s", error.reason, error)
        except Exception:
            logger.exception("scan crashed")

    # -- tasks ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.sync.run)
            nursery.start_soon(self._drop_loop)
            task_status.started()
            if not self.options.enabled:
                self.caught_up.set()
                await trio.sleep_forever()
            await self.sync.resume()
            nursery.start_soon(self._catch_up_loop)
            nursery.start_soon(self._migrate_after_catch_up)
            if self.options.stall_catch_up_seconds > 0:
                nursery.start_soon(self._catch_up_after_stalls)
            if self.options.reachability_interval > 0:
                nursery.start_soon(self._catch_up_after_isolation)
            nursery.start_soon(
                self._periodic,
                "gc",
                self.options.gc_first_delay,
                self.options.gc_interval,
                self.maintenance.collect_garbage,
            )
            nursery.start_soon(
                self._periodic,
                "scrub",
                self.options.scrub_first_delay,
                self.options.scrub_interval,
                self.maintenance.scrub,
            )

    async def _catch_up_loop(self) -> None:
        try:
            await self.catch_up_now(None if self.options.catch_up_on_start else 0)
        finally:
            self.caught_up.set()

        async def periodic_round() -> None:
            # Later rounds only cover gossip losses: one source is enough (and costs a full
            # listing; see docs/healing.md).
            await self.catch_up_now(sources=1)

        await self._periodic(
            "catch-up",
            self.options.catch_up_interval,
            self.options.catch_up_interval,
            periodic_round,
        )

    async def _migrate_after_catch_up(self) -> None:
        # The records first: a pulled sliver is kept only for a blob known to be live.
        await self.caught_up.wait()
        await self.migration.run()

    async def _catch_up_after_stalls(self) -> None:
        """Catch up at once when this process was not running for a while (SIGSTOP, a laptop
        that slept, a VM paused): the monotonic clock kept going, so a sleep that ends much
        later than asked says the peer missed whatever was pushed or gossiped meanwhile (its
        certificates among them) and would otherwise wait for the next periodic round."""
        interval = self.options.stall_check_interval
        await self.caught_up.wait()
        while True:
            before = trio.current_time()
            await trio.sleep(interval)
            stalled = trio.current_time() - before - interval
            if stalled >= self.options.stall_catch_up_seconds:
                logger.info("event loop stalled seconds=%.1f; catching up", stalled)
                await self.catch_up_now()

    async def _catch_up_after_isolation(self) -> None:
        """Catch up at once when this peer was cut off from most of the committee while it kept
        running (a partition, a lost link): nothing stalled, TCP connections may even look alive,
        but the pushes and gossip of that time never arrived. A random committee member is pinged
        every ``reachability_interval``; with half or more of the last pings failed the peer
        counts as cut off, and when three pings in a row succeed again after at least
        ``stall_catch_up_seconds`` cut off, a catch-up round (then a scan) runs."""
        window: deque[bool] = deque(maxlen=REACHABILITY_WINDOW)
        cut_off_since: float | None = None
        await self.caught_up.wait()
        while True:
            healthy = len(window) >= REACHABILITY_MIN_PINGS and all(window)
            interval = self.options.reachability_interval
            if healthy and cut_off_since is None:
                interval = max(interval, self.options.reachability_idle_interval)
            await trio.sleep(interval)
            others = [p for p in self.ctx.committee.peer_ids if p != self.ctx.peer_id]
            if not others:
                continue
            window.append(await self._ping(random.choice(others)))
            failed = window.count(False)
            now = trio.current_time()
            if cut_off_since is None:
                if len(window) >= REACHABILITY_MIN_PINGS and 2 * failed >= len(window):
                    cut_off_since = now
                    logger.info(
                        "most committee members unreachable failed=%d of %d", failed, len(window)
                    )
            elif list(window)[-3:] == [True, True, True]:
                cut_off = now - cut_off_since
                cut_off_since = None
                window.clear()
                if cut_off >= self.options.stall_catch_up_seconds:
                    logger.info(
                        "committee reachable again after seconds=%.1f; catching up", cut_off
                    )
                    await self.catch_up_now()

    async def _ping(self, peer_id: PeerId) -> bool:
        try:
            await self.caller.call(
                peer_id,
                wire.BlobStatusRequest(blob_id=wire.PING_BLOB_ID),
                wire.BlobStatusReply,
                timeout=self.options.reachability_timeout,
            )
        except WalrusError:
            return False
        return True

    async def _periodic(
        self,
        name: str,
        first_delay: float,
        interval: float,
        action: Callable[[], Awaitable[object]],
    ) -> None:
        await trio.sleep(first_delay)
        while True:
            try:
                await action()
            except WalrusError as error:
                logger.warning("%s pass failed reason=%s detail=%s", name, error.reason, error)
            except Exception:  # a bug in one pass must not take the peer down
                logger.exception("%s pass crashed", name)
            await trio.sleep(interval)

    async def _drop_loop(self) -> None:
        async for blob_id in self._drop_receive:
            try:
                await self.maintenance.drop_if_gone(blob_id)
            except Exception as error:  # logged; the next gc pass collects it
                logger.warning(
                    "dropping blob data failed blob=%s error=%s", short_id(blob_id), error
                )
