"""Catch-up: the blob records a peer missed while it was down or lost its disk (docs/design.md §5).

Gossip carries news, not history. A peer serves every blob's records it keeps, in blob id
order, a page at a time (:class:`~walrus_p2p.core.blob_messages.ListBlobRecordsRequest`,
bounded by blob count and bytes); a peer catching up pages through the listing of a few random
committee members, verifies every record itself (a lying source can withhold records, not
invent them: asking several sources covers withholding) and merges what verifies. Merging a
certificate of a blob it must hold queues a blob sync through the peer's record listeners;
after the round, a scan of the store queues every blob it should hold but lacks.
"""

from __future__ import annotations

import bisect
import logging
import math
import random
from collections.abc import Callable, Sequence

import blake3
import trio

from walrus_p2p.core import records
from walrus_p2p.core.blob_messages import (
    MAX_RECORDS_PER_MESSAGE,
    BlobRecordsEntry,
    ListBlobRecordsReply,
    ListBlobRecordsRequest,
    decode_records,
)
from walrus_p2p.errors import VerificationError, WalrusError, WireError
from walrus_p2p.node.context import PeerContext
from walrus_p2p.node.healing_metrics import HealingMetrics
from walrus_p2p.node.healing_options import HealingOptions
from walrus_p2p.node.peer_calls import PeerCaller
from walrus_p2p.node.protocol import RECORDS_NAMESPACE, ProtocolRefusal
from walrus_p2p.types import BlobId, PeerId, short_id

logger = logging.getLogger(__name__)

PAGE_BYTE_BUDGET = 1024 * 1024
"""A reply page stops growing past this many record bytes (always at least one blob)."""
KEY_CACHE_SECONDS = 30.0
"""How long the sorted record keys serve consecutive pages before they are read again."""


def record_key(encoded: bytes) -> bytes:
    """The record-hash part of a stored record's key (as ``RecordBook.merge``)."""
    return blake3.blake3(encoded).digest()[:16]


def list_page(
    keys: Sequence[bytes],
    value_of: Callable[[bytes], bytes | None],
    after: bytes | None,
    limit: int,
) -> tuple[list[BlobRecordsEntry], BlobId | None]:
    """One page of the listing over the sorted keys of the records namespace (blob id + record
    hash); ``value_of`` reads one record (None if it vanished meanwhile).

    Pure over its input so it can be tested alone; the caller runs it in a thread.
    """
    start = 0 if after is None else bisect.bisect_right(keys, bytes(after) + b"\xff" * 32)
    page: list[BlobRecordsEntry] = []
    current: bytes | None = None
    current_records: list[bytes] = []
    size = 0
    more = False
    for key in keys[start:]:
        blob_id = key[:32]
        if len(blob_id) != 32:
            continue
        if blob_id != current:
            if current is not None and current_records:
                page.append(BlobRecordsEntry(BlobId(current), tuple(current_records)))
                size += sum(len(item) for item in current_records)
            if len(page) >= limit or (page and size >= PAGE_BYTE_BUDGET):
                more = True
                current = None
                break
            current, current_records = blob_id, []
        if len(current_records) < MAX_RECORDS_PER_MESSAGE:
            value = value_of(key)
            if value is not None:
                current_records.append(value)
    if current is not None and current_records:
        page.append(BlobRecordsEntry(BlobId(current), tuple(current_records)))
    next_after = page[-1].blob_id if more and page else None
    return page, next_after


class CatchUp:
    """Serves the record listing and pulls other peers' listings."""

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
        self.rounds_done = 0
        self._keys: list[bytes] = []
        self._keys_read_at = -math.inf
        self.round_finished = trio.Event()

    async def handle_list(
        self, request: ListBlobRecordsRequest, remote: PeerId
    ) -> ListBlobRecordsReply:

        store = self.ctx.store
        now = trio.current_time()
        if request.after is None or now - self._keys_read_at > KEY_CACHE_SECONDS:
            # The store has no range query: read the namespace's keys once per listing
            # (and at most every KEY_CACHE_SECONDS), then serve pages from the sorted keys.
            self._keys = await trio.to_thread.run_sync(
                lambda: [key for key, _ in store.iter_values(RECORDS_NAMESPACE)]
            )
            self._keys_read_at = now
        keys = self._keys

        def read() -> tuple[list[BlobRecordsEntry], BlobId | None]:
            return list_page(
                keys,
                lambda key: store.get_value(RECORDS_NAMESPACE, key),
                request.after,
                request.limit,
            )

        entries, next_after = await trio.to_thread.run_sync(read)
        return ListBlobRecordsReply(entries=tuple(entries), next_after=next_after)

    async def _merge_entry(self, entry: BlobRecordsEntry, source: PeerId) -> int:
        blob_id = BlobId(entry.blob_id)
        try:
            items = decode_records(entry.records, blob_id)
        except WireError as error:
            logger.warning("catch-up source sent bad records peer=%s error=%s", source[:12], error)
            return 0

        store = self.ctx.store

        def unknown(raw: tuple[bytes, ...]) -> list[bool]:
            # The peer keys a record by blob id + blake3 of its canonical encoding; the raw
            # bytes decoded above are canonical, so known records are skipped unverified.
            return [
                store.get_value(RECORDS_NAMESPACE, bytes(blob_id) + record_key(item)) is None
                for item in raw
            ]

        fresh = await trio.to_thread.run_sync(unknown, entry.records)
        good: list[records.BlobRecord] = []
        for item, is_new in zip(items, fresh, strict=True):
            if not is_new:
                continue
            try:
                records.verify_blob_record(
                    item, self.ctx.genesis.network_id, self.ctx.committees.committee_of
                )
            except VerificationError as error:
                logger.warning(
                    "catch-up record failed verification blob=%s peer=%s error=%s",
                    short_id(blob_id),
                    source[:12],
                    error,
                )
                continue
            good.append(item)
        if not good:
            return 0
        try:
            return await self.ctx.records.merge(blob_id, good)
        except ProtocolRefusal as error:
            # An owner record this peer finds unpaid (docs/economics.md, "Paid storage"): the
            # blob's other records are merged, and the listing goes on.
            logger.info(
                "catch-up record refused blob=%s peer=%s reason=%s",
                short_id(blob_id),
                source[:12],
                error.reason,
            )
            return 0

    async def pull_from(self, source: PeerId) -> int:
        """Page through one source's listing; returns how many records were new here."""
        after: BlobId | None = None
        merged = 0
        for _page in range(self.options.catch_up_max_pages):
            reply = await self.caller.call(
                source,
                ListBlobRecordsRequest(after=after, limit=self.options.catch_up_page_blobs),
                ListBlobRecordsReply,
                timeout=self.options.request_timeout,
            )
            for entry in reply.entries:
                if after is not None and entry.blob_id <= after:
                    raise WireError("catch-up listing went backwards")
                merged += await self._merge_entry(entry, source)
            if reply.next_after is None:
                break
            if after is not None and reply.next_after <= after:
                raise WireError("catch-up cursor did not advance")
            after = reply.next_after
        return merged

    async def run_round(self, sources: int | None = None) -> int:
        """Pull from ``sources`` (default ``catch_up_sources``) random peers at once; returns
        how many records were new here."""
        wanted = self.options.catch_up_sources if sources is None else sources
        others = [p for p in self.ctx.committee.peer_ids if p != self.ctx.peer_id]
        random.shuffle(others)
        merged = 0
        answered = 0
        # Try sources until enough answered (bounded by the committee size).
        while others and answered < wanted:
            batch = others[: wanted - answered]
            del others[: len(batch)]

            async def pull(source: PeerId) -> None:
                nonlocal merged, answered
                try:
                    count = await self.pull_from(source)
                except WalrusError as error:
                    logger.info(
                        "catch-up source failed peer=%s reason=%s detail=%s",
                        source[:12],
                        error.reason,
                        error,
                    )
                    return
                merged += count
                answered += 1

            async with trio.open_nursery() as nursery:
                for source in batch:
                    nursery.start_soon(pull, source)
        self.metrics.records_caught_up.inc(merged)
        self.rounds_done += 1
        self.round_finished.set()
        self.round_finished = trio.Event()
        logger.info("catch-up round done sources=%d records_merged=%d", answered, merged)
        return merged
