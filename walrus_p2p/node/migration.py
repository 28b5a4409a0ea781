"""Shard migration at an epoch change, and the "shards in place" reports (docs/healing.md).

:class:`ShardMigration` is composed into the healing service. Per epoch e (> 0) of this peer:

1. **Pull** every shard it gained at e from that shard's owner in e-1
   (:func:`walrus_p2p.core.migration.gained_shards`): a signed
   :class:`~walrus_p2p.core.migration.PullShardRequest` per page, whole slivers in (blob id,
   kind) order up to ``migration_page_bytes``. Each sliver is checked against the blob's
   records (fetched from the source and verified when unknown) and its metadata (verified
   against the blob id) before it is stored; a bad one is counted and left to recovery. The
   cursor is kept in the store after every page, so a restart resumes the pull. While a shard is
   being pulled, blob sync leaves its slivers alone (``ShardMigration.migrating``).
2. **Recover** whatever the pull did not bring (source down, killed midway, lying): once the
   pulls end, a scan queues every blob still lacking owned slivers for blob sync, which rebuilds
   them from recovery symbols; repeated until nothing is missing.
3. **Report**: with every owned sliver of every live certified blob in place, sign a
   :class:`~walrus_p2p.core.migration.ShardsInPlace` for all its shards, gossip it on the
   ``shards`` topic (republished periodically, for peers that restarted) and serve it on request.

As the previous owner of a shard it serves pulls (to the shard's owner in the epoch named by
the request only) and keeps the shard's slivers, serving reads, until the new owner's in-place
report for the current epoch arrives; ``release_grace`` seconds later it drops them.
"""

from __future__ import annotations

import bisect
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from walrus_p2p.core import wire
from walrus_p2p.core.blob_messages import GetBlobRecordsReply, GetBlobRecordsRequest, decode_records
from walrus_p2p.core.committee import Committee
from walrus_p2p.core.encoding import pair_to_shard, shard_to_pair
from walrus_p2p.core.metadata import verify_sliver
from walrus_p2p.core.migration import (
    GetShardsInPlaceReply,
    GetShardsInPlaceRequest,
    PullShardReply,
    PullShardRequest,
    ShardsInPlace,
    ShardSliver,
    cursor_of,
    gained_shards,
)
from walrus_p2p.errors import (
    NotFoundError,
    VerificationError,
    WalrusError,
    WireError,
)
from walrus_p2p.net.gossip import GossipMessage, Subscription
from walrus_p2p.net.names import topic
from walrus_p2p.node.context import PeerContext
from walrus_p2p.node.healing_metrics import HealingMetrics
from walrus_p2p.node.healing_options import HealingOptions
from walrus_p2p.node.peer_calls import PeerCaller
from walrus_p2p.node.protocol import ProtocolRefusal, sliver_of_pair, type_of
from walrus_p2p.node.recovery import Recovery
from walrus_p2p.types import BlobId, PeerId, SliverKind, short_id

logger = logging.getLogger(__name__)

SHARDS_TOPIC = "shards"
MIGRATION_NAMESPACE = "migration"
"""Pull progress: key = 8-byte epoch + 2-byte shard; value = the cursor, or DONE."""
DONE = b"done"
KINDS = (SliverKind.PRIMARY, SliverKind.SECONDARY)
LISTING_CACHE_SECONDS = 10.0


def progress_key(epoch: int, shard: int) -> bytes:
    return int(epoch).to_bytes(8, "big") + int(shard).to_bytes(2, "big")


class ShardMigration:
    """Pull, report and release shards across epoch changes (see the module docstring)."""

    def __init__(
        self,
        ctx: PeerContext,
        caller: PeerCaller,
        recovery: Recovery,
        lacking: Callable[[], Awaitable[list[BlobId]]],
        queue_sync: Callable[[BlobId], bool],
        wait_sync_idle: Callable[[], Awaitable[None]],
        options: HealingOptions,
        metrics: HealingMetrics,
    ) -> None:
        self.ctx = ctx
        self.caller = caller
        self.recovery = recovery
        self._lacking = lacking
        self._queue_sync = queue_sync
        self._wait_sync_idle = wait_sync_idle
        self.options = options
        self.metrics = metrics
        self.topic = topic(ctx.genesis.network_id_text, SHARDS_TOPIC)
        self.reports: dict[int, dict[PeerId, ShardsInPlace]] = {}
        """Verified in-place reports by epoch (the current and the previous one are kept)."""
        self.in_place = trio.Event()
        """Set once this peer reported its shards in place for the current epoch."""
        self.in_place_epoch = -1
        self._migrating: set[int] = set()
        self._released = trio.Event()
        self._listing: tuple[float, list[BlobId]] | None = None
        ctx.router.add(PullShardRequest, self.serve_pull)
        ctx.router.add(GetShardsInPlaceRequest, self.serve_reports)

    def migrating(self) -> frozenset[int]:
        """Shards being pulled from their previous owner now (blob sync leaves them alone)."""
        return frozenset(self._migrating)

    # -- reports -----------------------------------------------------------------------------

    def shards_in_place(self, epoch: int) -> set[int]:
        """Shards whose owner in ``epoch`` reported them in place (verified reports)."""
        return {
            shard
            for report in self.reports.get(int(epoch), {}).values()
            for shard in report.body.shards
        }

    def accept_report(self, report: ShardsInPlace) -> bool:
        """Verify and keep a report for the current or previous epoch; True if it was new."""
        epoch = report.epoch
        if epoch < self.ctx.epoch - 1 or epoch > self.ctx.epoch:
            return False
        committee = self.ctx.committees.committee_of(epoch)
        if committee is None:
            return False
        report.verify(self.ctx.genesis.network_id, committee)
        known = self.reports.setdefault(epoch, {})
        before = known.get(report.peer_id)
        if before is not None and set(report.body.shards) <= set(before.body.shards):
            return False
        known[report.peer_id] = report
        for old in [e for e in self.reports if e < self.ctx.epoch - 1]:
            del self.reports[old]
        if epoch == self.ctx.epoch and report.peer_id != self.ctx.peer_id:
            self._released.set()
        return True

    def _validate_gossip(self, message: GossipMessage) -> bool:
        report = wire.decode(message.data, ShardsInPlace)
        committee = self.ctx.committees.committee_of(report.epoch)
        if committee is None or not self.ctx.epoch - 1 <= report.epoch <= self.ctx.epoch:
            return False
        report.verify(self.ctx.genesis.network_id, committee)
        return True

    async def _read_gossip(self, subscription: Subscription) -> None:
        await subscription.handle_each(self._accept_gossip, what="in-place reports")

    async def _accept_gossip(self, message: GossipMessage) -> None:
        self.accept_report(wire.decode(message.data, ShardsInPlace))

    async def serve_reports(
        self, request: GetShardsInPlaceRequest, remote: PeerId
    ) -> GetShardsInPlaceReply:
        reports = self.reports.get(int(request.epoch), {})
        return GetShardsInPlaceReply(reports=tuple(reports[key] for key in sorted(reports)))

    async def _publish(self, report: ShardsInPlace) -> None:
        gossip = self.ctx.gossip
        if gossip is None:
            return
        try:
            await gossip.publish(self.topic, wire.encode(report))
        except WalrusError as error:
            logger.info("in-place report publish failed error=%s", error)

    # -- serving pulls (the previous owner) ---------------------------------------------------

    async def serve_pull(self, request: PullShardRequest, remote: PeerId) -> PullShardReply:
        body = request.body
        committee = self.ctx.committees.committee_of(int(body.epoch))
        if committee is None:
            raise ProtocolRefusal(
                "WRONG_EPOCH", f"epoch {body.epoch} is not known here (current {self.ctx.epoch})"
            )
        try:
            request.verify(self.ctx.genesis.network_id, committee, remote)
        except VerificationError as error:
            raise ProtocolRefusal("PULL_REFUSED", str(error)) from error
        blob_ids = await self._blob_listing()
        page, next_after = await trio.to_thread.run_sync(
            self._read_page, blob_ids, committee, body.shard, body.after, body.max_bytes
        )
        self.metrics.migration_slivers_served.inc(len(page))
        logger.info(
            "shard pull served shard=%d epoch=%d slivers=%d peer=%s more=%s",
            body.shard,
            body.epoch,
            len(page),
            remote[:12],
            next_after is not None,
        )
        return PullShardReply(slivers=tuple(page), next_after=next_after)

    async def _blob_listing(self) -> list[BlobId]:
        now = time.monotonic()
        if self._listing is not None and now - self._listing[0] < LISTING_CACHE_SECONDS:
            return self._listing[1]
        store = self.ctx.store

        def listing() -> list[BlobId]:
            return [
                info.blob_id
                for info in store.iter_blobs()
                if info.sliver_count and not info.state.invalid
            ]

        blob_ids = sorted(await trio.to_thread.run_sync(listing))
        self._listing = (now, blob_ids)
        return blob_ids

    def _read_page(
        self,
        blob_ids: list[BlobId],
        committee: Committee,
        shard: int,
        after: bytes | None,
        budget: int,
    ) -> tuple[list[ShardSliver], bytes | None]:
        """Slivers of ``shard`` after the cursor, whole, up to ``budget`` bytes (one at least)."""
        store = self.ctx.store
        n_shards = committee.n_shards
        page: list[ShardSliver] = []
        used = 0
        start = 0
        if after is not None:
            start = bisect.bisect_left(blob_ids, after[:32])
        for blob_id in blob_ids[start:]:
            pair = shard_to_pair(blob_id, shard, n_shards)
            for kind in KINDS:
                cursor = cursor_of(blob_id, kind)
                if after is not None and cursor <= after:
                    continue
                try:
                    data = store.get_sliver(blob_id, pair, kind)
                except NotFoundError:
                    continue
                if page and (used + len(data) > budget or len(page) >= 256):
                    last = page[-1]
                    return page, cursor_of(last.blob_id, last.kind)
                page.append(ShardSliver(blob_id=blob_id, kind=kind, data=data))
                used += len(data)
        return page, None

    # -- pulling (the new owner) ---------------------------------------------------------------

    async def run(self) -> None:
        """Subscribe to reports, then migrate at every epoch change (until cancelled)."""
        gossip = self.ctx.gossip
        async with trio.open_nursery() as nursery:
            if gossip is not None:
                gossip.set_validator(self.topic, self._validate_gossip)
                subscription = await gossip.subscribe(self.topic)
                nursery.start_soon(self._read_gossip, subscription)
            nursery.start_soon(self._release_loop)
            await self.ctx.committees.synced.wait()
            while True:
                changed = self.ctx.committees.changed
                epoch = self.ctx.epoch
                if self.in_place_epoch != epoch and self.in_place.is_set():
                    self.in_place = trio.Event()
                    self.metrics.shards_in_place.set(0)
                with trio.CancelScope() as scope:
                    nursery.start_soon(self._cancel_on, changed, scope)
                    await self.migrate(epoch)
                    await self._republish_until_cancelled(epoch)
                await changed.wait()

    @staticmethod
    async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
        await event.wait()
        scope.cancel()

    async def migrate(self, epoch: int) -> None:
        """Pull the gained shards of ``epoch``, recover the rest, report in place."""
        peer = self.ctx
        committee = peer.committee
        previous = peer.committees.committee_of(epoch - 1) if epoch > 0 else None
        gained = {} if previous is None else gained_shards(previous, committee, peer.peer_id)
        if gained:
            logger.info(
                "shard migration started epoch=%d shards=%s",
                epoch,
                ",".join(str(shard) for shard in sorted(gained)),
            )
            self._migrating.update(gained)
            limiter = trio.CapacityLimiter(max(1, self.options.migration_parallel_shards))
            try:
                async with trio.open_nursery() as nursery:
                    for shard, source in sorted(gained.items()):
                        nursery.start_soon(self._pull_limited, limiter, epoch, shard, source)
            finally:
                self._migrating.difference_update(gained)
        await self._complete(epoch, announce=bool(gained))

    async def _pull_limited(
        self, limiter: trio.CapacityLimiter, epoch: int, shard: int, source: PeerId
    ) -> None:
        async with limiter:
            try:
                await self.pull_shard(epoch, shard, source)
            except WalrusError as error:
                logger.info(
                    "shard pull stopped shard=%d reason=%s detail=%s", shard, error.reason, error
                )
            except Exception:  # a bug must not stop the migration of the other shards
                logger.exception("shard pull crashed shard=%d", shard)
            finally:
                self._migrating.discard(shard)

    async def pull_shard(self, epoch: int, shard: int, source: PeerId) -> int:
        """Pull one shard from ``source`` page by page; returns slivers stored. Gives up on the
        source after ``migration_attempts`` failed calls in a row (recovery takes over)."""
        peer = self.ctx
        key = progress_key(epoch, shard)
        progress = await trio.to_thread.run_sync(peer.store.get_value, MIGRATION_NAMESPACE, key)
        if progress == DONE:
            return 0
        cursor: bytes | None = progress or None
        stored = 0
        failures = 0
        for _page in range(self.options.migration_max_pages):
            request = PullShardRequest.create(
                peer.identity,
                network_id=peer.genesis.network_id,
                epoch=epoch,
                shard=shard,
                after=cursor,
                max_bytes=self.options.migration_page_bytes,
            )
            try:
                reply, size = await self.caller.call_sized(
                    source, request, PullShardReply, timeout=self.options.request_timeout
                )
            except WalrusError as error:
                failures += 1
                logger.info(
                    "shard pull failed shard=%d source=%s attempt=%d reason=%s",
                    shard,
                    source[:12],
                    failures,
                    error.reason,
                )
                if failures >= self.options.migration_attempts:
                    raise
                await trio.sleep(self.options.migration_retry_delay * failures)
                continue
            failures = 0
            self.metrics.migration_bytes(size)
            last = cursor
            for sliver in reply.slivers:
                position = cursor_of(sliver.blob_id, sliver.kind)
                if last is not None and position <= last:
                    raise VerificationError("the source sent slivers out of order")
                last = position
                if await self._accept(epoch, shard, source, sliver):
                    stored += 1
            if reply.next_after is None:
                await trio.to_thread.run_sync(peer.store.put_value, MIGRATION_NAMESPACE, key, DONE)
                logger.info(
                    "shard pulled shard=%d epoch=%d source=%s stored=%d",
                    shard,
                    epoch,
                    source[:12],
                    stored,
                )
                return stored
            if last is None or reply.next_after < last or (cursor and reply.next_after <= cursor):
                raise VerificationError("the source's cursor does not advance")
            cursor = reply.next_after
            await trio.to_thread.run_sync(peer.store.put_value, MIGRATION_NAMESPACE, key, cursor)
        raise VerificationError("the shard listing did not end")

    async def _accept(self, epoch: int, shard: int, source: PeerId, sliver: ShardSliver) -> bool:
        """Verify and store one pulled sliver; False (and counted) if skipped or bad."""
        peer = self.ctx
        blob_id = BlobId(sliver.blob_id)
        n_shards = peer.committee.n_shards
        pair = shard_to_pair(blob_id, shard, n_shards)
        if await trio.to_thread.run_sync(peer.store.has_sliver, blob_id, pair, sliver.kind):
            self.metrics.migration_slivers.labels(outcome="held").inc()
            return False
        state = await peer.records.blob_state(blob_id)
        if not state.registrations:
            await self._fetch_records(blob_id, source)
            state = await peer.records.blob_state(blob_id)
        if state.is_invalid or state.certificate is None or not state.is_stored_in(epoch):
            self.metrics.migration_slivers.labels(outcome="not_live").inc()
            return False
        try:
            metadata = await self.recovery.ensure_metadata(blob_id)
            sliver_type = type_of(sliver.kind)
            index = sliver_of_pair(sliver.kind, pair, n_shards)
            await trio.to_thread.run_sync(verify_sliver, metadata, sliver_type, index, sliver.data)
        except VerificationError as error:
            self.metrics.migration_slivers.labels(outcome="bad").inc()
            logger.warning(
                "pulled sliver does not verify blob=%s shard=%d source=%s error=%s",
                short_id(blob_id),
                shard,
                source[:12],
                error,
            )
            return False
        except WalrusError as error:
            self.metrics.migration_slivers.labels(outcome="no_metadata").inc()
            logger.info("pulled sliver skipped blob=%s reason=%s", short_id(blob_id), error.reason)
            return False
        await trio.to_thread.run_sync(
            peer.store.put_sliver, blob_id, pair, sliver.kind, sliver.data
        )
        self.metrics.migration_slivers.labels(outcome="stored").inc()
        return True

    async def _fetch_records(self, blob_id: BlobId, source: PeerId) -> None:
        """Records of a blob this peer has not heard of, from the source (verified on merge)."""
        try:
            reply = await self.caller.call(
                source,
                GetBlobRecordsRequest(blob_id=blob_id),
                GetBlobRecordsReply,
                timeout=self.options.request_timeout,
            )
            await self.ctx.records.merge(blob_id, decode_records(reply.records, blob_id))
        except (WalrusError, WireError) as error:
            logger.info(
                "records of pulled blob unavailable blob=%s error=%s", short_id(blob_id), error
            )

    async def _complete(self, epoch: int, *, announce: bool) -> None:
        """Recover whatever is still missing, then report every owned shard in place (gossiped
        only by a peer that gained shards: readers care about moved shards alone)."""
        peer = self.ctx
        shards = peer.committee.shards_of(peer.peer_id)
        for round_ in range(1, self.options.in_place_max_rounds + 1):
            lacking = await self._lacking()
            if not lacking:
                break
            for blob_id in lacking:
                self._queue_sync(blob_id)
            logger.info(
                "shards not in place yet epoch=%d blobs_lacking=%d round=%d",
                epoch,
                len(lacking),
                round_,
            )
            with trio.move_on_after(self.options.in_place_check_interval * 10):
                await self._wait_sync_idle()
            await trio.sleep(self.options.in_place_check_interval)
        else:
            logger.warning("shards still not in place epoch=%d; retrying next epoch", epoch)
            return
        if not shards:
            return
        report = ShardsInPlace.create(
            peer.identity, network_id=peer.genesis.network_id, epoch=epoch, shards=shards
        )
        self.accept_report(report)
        self.in_place_epoch = epoch
        self.in_place.set()
        self.metrics.shards_in_place.set(len(shards))
        logger.info("shards in place epoch=%d shards=%d", epoch, len(shards))
        if announce:
            await self._publish(report)

    async def _republish_until_cancelled(self, epoch: int) -> None:
        own = self.reports.get(epoch, {}).get(self.ctx.peer_id)
        previous = self.ctx.committees.committee_of(epoch - 1) if epoch > 0 else None
        if own is None or previous is None:
            return
        if not gained_shards(previous, self.ctx.committee, self.ctx.peer_id):
            return
        while True:
            await trio.sleep(self.options.in_place_republish_interval * random.uniform(0.8, 1.2))
            await self._publish(own)

    # -- releasing (the previous owner) -------------------------------------------------------

    async def _release_loop(self) -> None:
        while True:
            await self._released.wait()
            self._released = trio.Event()
            await trio.sleep(self.options.release_grace)
            try:
                await self.release()
            except WalrusError as error:
                logger.warning("releasing moved shards failed reason=%s", error.reason)

    async def release(self) -> int:
        """Drop slivers of shards this peer no longer owns whose current owner reported them in
        place; returns slivers dropped."""
        peer = self.ctx
        committee = peer.committee
        epoch = peer.epoch
        released = self.shards_in_place(epoch)
        owned = set(committee.shards_of(peer.peer_id))
        releasable = released - owned
        if not releasable:
            return 0
        store = peer.store
        n_shards = committee.n_shards

        def drop() -> int:
            dropped = 0
            for info in list(store.iter_blobs()):
                if not info.sliver_count:
                    continue
                for key in store.list_slivers(info.blob_id):
                    shard = pair_to_shard(info.blob_id, key.pair_index, n_shards)
                    if shard in releasable and store.delete_sliver(
                        info.blob_id, key.pair_index, key.kind
                    ):
                        dropped += 1
            return dropped

        dropped = await trio.to_thread.run_sync(drop)
        if dropped:
            self._listing = None
            self.metrics.migration_slivers_released.inc(dropped)
            logger.info("moved shards released epoch=%d slivers=%d", epoch, dropped)
        return dropped

    def own_shards(self) -> tuple[list[int], list[int]]:
        """This peer's shards of the current epoch: (in place, still arriving). Before its own
        in-place report, the shards it gained from another member this epoch are arriving."""
        epoch = self.ctx.epoch
        committee = self.ctx.committees.committee_of(epoch)
        if committee is None:
            return [], []
        own = sorted(int(shard) for shard in committee.shards_of(self.ctx.identity.peer_id))
        previous = self.ctx.committees.committee_of(epoch - 1) if epoch > 0 else None
        if self.in_place_epoch == epoch or previous is None:
            return own, []
        gained = gained_shards(previous, committee, self.ctx.identity.peer_id)
        arriving = [shard for shard in own if shard in gained]
        return [shard for shard in own if shard not in gained], arriving

    def summary(self) -> dict[str, Any]:
        """For /health and tests: this peer's in-place state and the moved shards it knows of."""
        epoch = self.ctx.epoch
        return {
            "inPlace": self.in_place_epoch == epoch,
            "shardsReportedInPlace": sorted(self.shards_in_place(epoch)),
        }
