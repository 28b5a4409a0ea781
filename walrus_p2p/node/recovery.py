"""Rebuilding lost slivers from recovery symbols, and blob sync (docs/design.md §3, §6.3).

A lost primary sliver ``p`` is rebuilt from ``ks`` symbols ``E[p, c]``, one from each of ``ks``
holders of secondary slivers ``c``; a lost secondary sliver ``c`` from ``kp`` symbols
``E[r, c]`` of holders of primary slivers ``r``. Each helper proves its symbol against its own
sliver hash in the (verified) metadata, so a lying or rotten helper is caught symbol by symbol
and skipped; the rebuilt sliver is then checked against its own hash. When verified symbols
decode to a sliver that contradicts its hash, the writer encoded the blob inconsistently and
:class:`~walrus_p2p.core.metadata.InconsistentSliverError` carries the proof upwards.

Traffic: the needed symbols plus ``extra_fraction`` of them (rounded down) in flight, a
replacement for every failed helper, and one more request after each ``hedge_delay`` while
helpers are slow; so rebuilding a whole sliver pair moves about ``(kp + ks) * S`` bytes plus
Merkle paths, O(blob / n), never the whole blob.

:class:`BlobSync` runs the per-blob loop: a certificate (or a scan) names a blob this peer must
hold; after ``sync_delay`` (the writer may still be uploading) it fetches and verifies the
metadata if missing and rebuilds every owned sliver it lacks. Failures retry with exponential
backoff; the set of blobs still to sync lives in the store (namespace ``healing-sync``), so a
restart midway resumes where it stopped (slivers already rebuilt are durable and skipped).
"""

from __future__ import annotations

import enum
import logging
import math
import random
import struct
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

import trio

from walrus_p2p.core import wire
from walrus_p2p.core.encoding import SliverType, pair_to_shard
from walrus_p2p.core.merkle import MerkleProof
from walrus_p2p.core.metadata import (
    InconsistentSliverError,
    Metadata,
    RecoverySymbol,
    make_recovery_symbol,
    recover_sliver,
    verify_metadata,
    verify_recovery_symbol,
)
from walrus_p2p.errors import (
    NotFoundError,
    QuorumError,
    VerificationError,
    WalrusError,
)
from walrus_p2p.node.context import PeerContext
from walrus_p2p.node.healing_metrics import HealingMetrics
from walrus_p2p.node.healing_options import HealingOptions
from walrus_p2p.node.peer_calls import PeerCaller
from walrus_p2p.node.protocol import kind_of, owned_pairs, pair_of_sliver, sliver_of_pair, type_of
from walrus_p2p.storage import CorruptDataError
from walrus_p2p.types import BlobId, PeerId, SliverKind, short_id

logger = logging.getLogger(__name__)

SYNC_NAMESPACE = "healing-sync"
"""Store namespace: key = blob id, value = u32 failed attempts (blobs still to sync)."""

T = TypeVar("T")


class SyncOutcome(enum.Enum):
    DONE = "done"
    """Every owned sliver is stored (nothing was missing, or it was rebuilt)."""
    NOT_NEEDED = "not_needed"
    """Not certified, expired, deleted, invalid, or no shard of this peer: nothing to do."""
    INVALID = "invalid"
    """Recovery proved the blob inconsistent (and the invalid-blob flow was started)."""


class Recovery:
    """Fetching metadata and rebuilding single slivers for one storage peer."""

    def __init__(
        self,
        ctx: PeerContext,
        caller: PeerCaller,
        options: HealingOptions,
        metrics: HealingMetrics,
    ) -> None:
        self.ctx = ctx
        self.caller = caller
        self.options = options
        self.metrics = metrics

    async def _in_thread(self, function: Callable[..., T], *arguments: Any) -> T:
        return await trio.to_thread.run_sync(function, *arguments)

    # -- metadata ------------------------------------------------------------------------

    async def load_metadata(self, blob_id: BlobId) -> Metadata | None:
        """The stored metadata, or None if absent or damaged (then it is fetched again)."""
        try:
            raw = await self._in_thread(self.ctx.store.get_metadata, blob_id)
        except CorruptDataError as error:
            logger.warning("stored metadata corrupt blob=%s error=%s", short_id(blob_id), error)
            return None
        except NotFoundError:
            return None
        return wire.decode(raw, wire.GetMetadataReply).metadata

    async def fetch_metadata(self, blob_id: BlobId) -> Metadata:
        """Metadata from other peers, verified against the blob id; QuorumError if none."""
        committee = self.ctx.committee
        peers = [peer_id for peer_id in committee.peer_ids if peer_id != self.ctx.peer_id]
        random.shuffle(peers)
        found: list[Metadata] = []
        sizes = {
            reg.size for reg in (await self.ctx.records.blob_state(blob_id)).registrations.values()
        }

        async def ask(peer_id: PeerId, nursery: trio.Nursery) -> None:
            try:
                reply, size = await self.caller.call_sized(
                    peer_id,
                    wire.GetMetadataRequest(blob_id=blob_id),
                    wire.GetMetadataReply,
                    timeout=self.options.request_timeout,
                )
                self.metrics.metadata_bytes(size)
                verify_metadata(reply.metadata, blob_id)
            except VerificationError:
                logger.warning(
                    "peer sent wrong metadata blob=%s peer=%s", short_id(blob_id), peer_id[:12]
                )
                return
            except WalrusError as error:
                logger.debug("metadata fetch failed peer=%s reason=%s", peer_id[:12], error.reason)
                return
            metadata = reply.metadata
            if metadata.shards != committee.n_shards:
                return
            if sizes and metadata.unencoded_length not in sizes:
                logger.warning("metadata length differs from the registered size")
                return
            found.append(metadata)
            nursery.cancel_scope.cancel()

        # A few at a time: metadata is small, and the first verified copy is enough.
        for start in range(0, len(peers), 3):
            async with trio.open_nursery() as nursery:
                for peer_id in peers[start : start + 3]:
                    nursery.start_soon(ask, peer_id, nursery)
            if found:
                return found[0]
        raise QuorumError(f"no peer served verifiable metadata of blob {short_id(blob_id)}")

    async def ensure_metadata(self, blob_id: BlobId, *, keep: bool = True) -> Metadata:
        """Stored metadata, or fetched and verified (and stored when ``keep``)."""
        metadata = await self.load_metadata(blob_id)
        if metadata is not None:
            return metadata
        metadata = await self.fetch_metadata(blob_id)
        if keep:
            encoded = wire.encode(wire.GetMetadataReply(metadata=metadata), limits=self.ctx.limits)
            await self._in_thread(self.ctx.store.put_metadata, blob_id, encoded)
            logger.info("metadata recovered blob=%s", short_id(blob_id))
        return metadata

    # -- symbols -------------------------------------------------------------------------

    def _holder(self, blob_id: BlobId, source_type: SliverType, source_index: int) -> PeerId:
        n_shards = self.ctx.committee.n_shards
        pair = pair_of_sliver(source_type, source_index, n_shards)
        return self.ctx.committee.peer_of(pair_to_shard(blob_id, pair, n_shards))

    async def _local_symbol(
        self,
        blob_id: BlobId,
        metadata: Metadata,
        source_type: SliverType,
        source_index: int,
        target_index: int,
    ) -> RecoverySymbol | None:
        """A symbol from a sliver this peer holds itself (free); None if it is not intact."""
        pair = pair_of_sliver(source_type, source_index, metadata.shards)
        try:
            sliver = await self._in_thread(
                self.ctx.store.get_sliver, blob_id, pair, kind_of(source_type)
            )
            return await self._in_thread(
                make_recovery_symbol, metadata, source_type, source_index, sliver, target_index
            )
        except (NotFoundError, VerificationError):
            return None

    async def collect_symbols(
        self,
        blob_id: BlobId,
        metadata: Metadata,
        target_type: SliverType,
        target_index: int,
        *,
        shard: int,
        bad_peers: set[PeerId],
    ) -> list[RecoverySymbol]:
        """Verified symbols for one target from distinct helpers: ``needed`` of them, or fewer
        if too few helpers answered correctly (the caller decides what that means)."""
        n_shards = metadata.shards
        needed = metadata.config.source_symbols(target_type)
        source_type = target_type.other
        got: dict[int, RecoverySymbol] = {}
        remote: list[int] = []
        for source_index in range(n_shards):
            holder = self._holder(blob_id, source_type, source_index)
            if holder == self.ctx.peer_id:
                local = await self._local_symbol(
                    blob_id, metadata, source_type, source_index, target_index
                )
                if local is not None:
                    got[source_index] = local
            else:
                remote.append(source_index)
        if len(got) >= needed:
            return list(got.values())[:needed]
        # One request per helper for every source sliver it holds (docs/healing.md, "Blob
        # sync"): at n = 100 a helper holds ~5 of the 34-67 slivers asked, so ~5x fewer streams.
        by_holder: dict[PeerId, list[int]] = {}
        for source_index in remote:
            holder = self._holder(blob_id, source_type, source_index)
            by_holder.setdefault(holder, []).append(source_index)
        queue = [holder for holder in by_holder if holder not in bad_peers]
        random.shuffle(queue)
        per_holder = max(1.0, len(remote) / max(1, len(by_holder)))
        kind_label = kind_of(target_type).name.lower()

        async def fetch(holder: PeerId) -> None:
            if holder in bad_peers:
                return
            index_of_pair = {
                pair_of_sliver(source_type, index, n_shards): index for index in by_holder[holder]
            }
            request = wire.GetRecoverySymbolsRequest(
                blob_id=blob_id,
                source_kind=kind_of(source_type),
                source_pair_indices=tuple(sorted(index_of_pair)),
                target_index=target_index,
            )
            try:
                reply, size = await self.caller.call_sized(
                    holder,
                    request,
                    wire.GetRecoverySymbolsReply,
                    timeout=self.options.request_timeout,
                )
            except WalrusError as error:
                logger.debug(
                    "symbol request failed blob=%s peer=%s reason=%s",
                    short_id(blob_id),
                    holder[:12],
                    error.reason,
                )
                return
            self.metrics.symbol_bytes(blob_id, shard, kind_label, size)
            for item in reply.symbols:
                source_index = index_of_pair.get(item.source_pair_index)
                if source_index is None or source_index in got:
                    continue  # not asked of this helper (ignored), or already had
                symbol = RecoverySymbol(
                    target_type=target_type,
                    target_index=target_index,
                    source_index=source_index,
                    symbol=item.symbol,
                    proof=MerkleProof(tuple(item.proof)),
                )
                try:
                    verify_recovery_symbol(metadata, symbol)
                except VerificationError as error:
                    bad_peers.add(holder)
                    self.metrics.bad_symbols.inc()
                    logger.warning(
                        "peer sent a bad recovery symbol blob=%s peer=%s error=%s",
                        short_id(blob_id),
                        holder[:12],
                        error,
                    )
                    return
                got[source_index] = symbol

        active = 0
        finished = trio.Event()

        async def worker(nursery: trio.Nursery) -> None:
            nonlocal active
            active += 1
            try:
                # Bounded: each iteration consumes one candidate.
                while queue and len(got) < needed:
                    await fetch(queue.pop())
                if len(got) >= needed:
                    nursery.cancel_scope.cancel()
            finally:
                active -= 1
                if active == 0:
                    finished.set()

        async def hedge(nursery: trio.Nursery) -> None:
            # Slow helpers: after a while, one more request in flight (at most twice).
            for _ in range(2):
                with trio.move_on_after(self.options.hedge_delay):
                    await finished.wait()
                if finished.is_set() or not queue or len(got) >= needed:
                    return
                nursery.start_soon(worker, nursery)

        missing = needed - len(got)
        extra = math.floor(missing * self.options.extra_fraction)
        if queue:
            async with trio.open_nursery() as nursery:
                for _ in range(min(len(queue), math.ceil((missing + extra) / per_holder))):
                    nursery.start_soon(worker, nursery)
                nursery.start_soon(hedge, nursery)
        return list(got.values())

    async def rebuild_sliver(
        self,
        blob_id: BlobId,
        metadata: Metadata,
        pair_index: int,
        kind: SliverKind,
        *,
        bad_peers: set[PeerId] | None = None,
    ) -> bytes:
        """Rebuild one owned sliver from other peers' symbols and store it durably.

        Raises :class:`InconsistentSliverError` (with its proof) for an inconsistent blob and
        :class:`QuorumError` when too few helpers answered with verified symbols.
        """
        bad_peers = set() if bad_peers is None else bad_peers
        n_shards = metadata.shards
        target_type = type_of(kind)
        target_index = sliver_of_pair(kind, pair_index, n_shards)
        needed = metadata.config.source_symbols(target_type)
        shard = pair_to_shard(blob_id, pair_index, n_shards)
        symbols = await self.collect_symbols(
            blob_id, metadata, target_type, target_index, shard=shard, bad_peers=bad_peers
        )
        if len(symbols) < needed:
            raise QuorumError(
                f"only {len(symbols)} of {needed} recovery symbols for {target_type.value} "
                f"sliver {target_index} of blob {short_id(blob_id)}"
            )
        sliver = await self._in_thread(recover_sliver, metadata, target_type, target_index, symbols)
        await self._in_thread(self.ctx.store.put_sliver, blob_id, pair_index, kind, sliver)
        self.metrics.slivers_recovered.labels(sliver_kind=kind.name.lower()).inc()
        logger.info(
            "sliver recovered blob=%s pair=%d kind=%s bytes=%d",
            short_id(blob_id),
            pair_index,
            kind.name.lower(),
            len(sliver),
        )
        return sliver


InconsistencyHandler = Callable[[BlobId, Metadata, InconsistentSliverError], Awaitable[None]]


def _encode_attempts(attempts: int) -> bytes:
    return struct.pack("<I", min(attempts, 0xFFFFFFFF))


def _decode_attempts(raw: bytes) -> int:
    return int(struct.unpack("<I", raw)[0]) if len(raw) == 4 else 0


class BlobSync:
    """The queue of blobs to sync and the workers that sync them (see the module docstring)."""

    def __init__(
        self,
        ctx: PeerContext,
        recovery: Recovery,
        options: HealingOptions,
        metrics: HealingMetrics,
        on_inconsistent: InconsistencyHandler,
        migrating: Callable[[], Collection[int]],
    ) -> None:
        self.ctx = ctx
        self._migrating = migrating
        """Shards being pulled by shard migration now (its query): their slivers are left alone."""
        self.recovery = recovery
        self.options = options
        self.metrics = metrics
        self.on_inconsistent = on_inconsistent
        self._send, self._receive = trio.open_memory_channel[tuple[BlobId, float]](
            options.sync_queue_size
        )
        self._queued: set[BlobId] = set()
        self._nursery: trio.Nursery | None = None
        self.overflowed = False
        """Notices were dropped for a full queue; the next scan must find those blobs."""
        self.idle = trio.Event()
        self.idle.set()

    # -- queue ---------------------------------------------------------------------------

    def notice(self, blob_id: BlobId, *, delay: float | None = None) -> bool:
        """Ask for a sync of ``blob_id`` after ``delay`` (default ``sync_delay``); never blocks."""
        if blob_id in self._queued:
            return False
        wait = self.options.sync_delay if delay is None else delay
        try:
            self._send.send_nowait((blob_id, trio.current_time() + wait))
        except trio.WouldBlock:
            self.overflowed = True
            return False
        self._queued.add(blob_id)
        self.idle = trio.Event() if self.idle.is_set() else self.idle
        return True

    @property
    def pending(self) -> int:
        """Blobs queued or being synced now."""
        return len(self._queued)

    async def wait_idle(self) -> None:
        """Until nothing is queued or running (for tests and the catch-up report)."""
        while self._queued:
            await self.idle.wait()

    # -- progress in the store -----------------------------------------------------------

    async def _remember(self, blob_id: BlobId, attempts: int) -> None:
        await trio.to_thread.run_sync(
            self.ctx.store.put_value, SYNC_NAMESPACE, bytes(blob_id), _encode_attempts(attempts)
        )

    async def forget(self, blob_id: BlobId) -> None:
        await trio.to_thread.run_sync(self.ctx.store.delete_value, SYNC_NAMESPACE, bytes(blob_id))

    async def _attempts(self, blob_id: BlobId) -> int:
        raw = await trio.to_thread.run_sync(
            self.ctx.store.get_value, SYNC_NAMESPACE, bytes(blob_id)
        )
        return 0 if raw is None else _decode_attempts(raw)

    async def resume(self) -> int:
        """Queue every blob a previous run left unfinished; returns how many."""
        entries = await trio.to_thread.run_sync(
            lambda: list(self.ctx.store.iter_values(SYNC_NAMESPACE))
        )
        count = 0
        for key, _ in entries:
            if len(key) == 32 and self.notice(BlobId(key), delay=0.0):
                count += 1
        if count:
            logger.info("blob sync resumed blobs=%d", count)
        return count

    # -- workers -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for _ in range(max(1, self.options.sync_workers)):
                nursery.start_soon(self._worker)
            task_status.started()
            await trio.sleep_forever()

    async def _worker(self) -> None:
        async for blob_id, not_before in self._receive:
            await trio.sleep_until(not_before)
            try:
                await self._sync_with_retry(blob_id)
            finally:
                self._queued.discard(blob_id)
                if not self._queued:
                    self.idle.set()

    async def _retry_later(self, blob_id: BlobId, delay: float) -> None:
        await trio.sleep(delay)
        self.notice(blob_id, delay=0.0)

    async def _sync_with_retry(self, blob_id: BlobId) -> None:
        attempts = await self._attempts(blob_id)
        await self._remember(blob_id, attempts)
        try:
            outcome = await self.sync_blob(blob_id)
        except Exception as error:  # a bug must not take the peer down: log, retry later
            if not isinstance(error, WalrusError):
                logger.exception("blob sync crashed blob=%s", short_id(blob_id))
                error = WalrusError(f"unexpected {type(error).__name__}")
            attempts += 1
            self.metrics.sync_runs.labels(outcome="failed").inc()
            logger.info(
                "blob sync failed blob=%s attempt=%d reason=%s detail=%s",
                short_id(blob_id),
                attempts,
                error.reason,
                error,
            )
            await self._remember(blob_id, attempts)
            if attempts < self.options.sync_max_attempts and self._nursery is not None:
                delay = min(
                    self.options.sync_backoff_max,
                    self.options.sync_backoff_initial * 2 ** (attempts - 1),
                )
                self._nursery.start_soon(
                    self._retry_later, blob_id, delay * random.uniform(1, 1.25)
                )
            return
        self.metrics.sync_runs.labels(outcome=outcome.value).inc()
        await self.forget(blob_id)

    async def sync_blob(self, blob_id: BlobId) -> SyncOutcome:
        """One attempt to hold every owned sliver of ``blob_id``; raises to be retried."""
        peer = self.ctx
        state = await peer.records.blob_state(blob_id)
        if state.certificate is None or not state.is_stored_in(peer.epoch):
            return SyncOutcome.NOT_NEEDED
        n_shards = peer.committee.n_shards
        migrating = self._migrating()
        # Shards being pulled from their previous owner (node/migration.py) are left alone:
        # the migration scans for whatever the pull did not bring once it ends.
        pairs = [
            pair
            for pair in owned_pairs(peer.committee, peer.peer_id, blob_id)
            if pair_to_shard(blob_id, pair, n_shards) not in migrating
        ]
        if not pairs:
            return SyncOutcome.NOT_NEEDED

        def missing_slivers() -> list[tuple[int, SliverKind]]:
            return [
                (pair, kind)
                for pair in pairs
                for kind in (SliverKind.PRIMARY, SliverKind.SECONDARY)
                if not peer.store.has_sliver(blob_id, pair, kind)
            ]

        missing = await trio.to_thread.run_sync(missing_slivers)
        stored = await self.recovery.load_metadata(blob_id)  # None if absent or corrupt
        if not missing and stored is not None:
            return SyncOutcome.DONE
        metadata = stored or await self.recovery.ensure_metadata(blob_id)
        bad_peers: set[PeerId] = set()
        failures: list[WalrusError] = []
        inconsistent: list[InconsistentSliverError] = []
        limiter = trio.CapacityLimiter(max(1, self.options.slivers_in_parallel))

        async def rebuild(pair: int, kind: SliverKind) -> None:
            async with limiter:
                if inconsistent:
                    return
                try:
                    await self.recovery.rebuild_sliver(
                        blob_id, metadata, pair, kind, bad_peers=bad_peers
                    )
                except InconsistentSliverError as error:
                    inconsistent.append(error)
                except WalrusError as error:
                    failures.append(error)

        async with trio.open_nursery() as nursery:
            for pair, kind in missing:
                nursery.start_soon(rebuild, pair, kind)
        if inconsistent:
            logger.warning(
                "blob is inconsistent blob=%s detail=%s", short_id(blob_id), inconsistent[0]
            )
            await self.on_inconsistent(blob_id, metadata, inconsistent[0])
            return SyncOutcome.INVALID
        if failures:
            raise failures[0]
        logger.info("blob synced blob=%s slivers=%d", short_id(blob_id), len(missing))
        return SyncOutcome.DONE
