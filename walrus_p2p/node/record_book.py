"""The blob records a storage peer keeps: verified once, persisted, merged, announced, watched.

docs/design.md §5 and §11.1. Signed records (register, certificate, extend, delete, invalid,
attribute) are a blob's state; a peer learns them from clients (``PostBlobRecordsRequest``),
from gossip and from catch-up. :class:`RecordBook` is the one place that verifies them (against the
committee of their own epoch, through the :class:`~walrus_p2p.node.committee_view.CommitteeView`),
persists them in the store, keeps each blob's merged :class:`~walrus_p2p.core.records.BlobState`,
tells its listeners (healing) about new ones, and announces records that arrived directly on the
records gossip topic, batched, by one peer per blob.

On a network with an economy, :attr:`RecordBook.payments` is set (the economy's payment check,
docs/economics.md, "Paid storage"): an owner's register or extend record that is not paid for is
not merged, and the merge raises its refusal (``PAYMENT_REQUIRED``, ``PAYMENT_MISMATCH``) after
merging the other records it was given.

A shared blob's extensions are not records: the settlements of the epoch chain carry them
(docs/economics.md, "Shared blobs"), and the economy gives each to :meth:`RecordBook.add_shared_end`
as a record of the chain becomes current (and for the whole chain at start), so every blob state
and stored summary here counts them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import blake3
import trio

from walrus_p2p.core import records, wire
from walrus_p2p.core.blob_messages import (
    MAX_GOSSIP_BATCH_BYTES,
    BlobRecordsBatch,
    GetBlobRecordsReply,
    GetBlobRecordsRequest,
    PostBlobRecordsReply,
    PostBlobRecordsRequest,
    decode_any_records,
    decode_records,
)
from walrus_p2p.errors import VerificationError, WalrusError, WireError
from walrus_p2p.net.gossip import Gossip, GossipMessage, Subscription
from walrus_p2p.node.committee_view import CommitteeView
from walrus_p2p.node.protocol import RECORDS_NAMESPACE, ProtocolRefusal
from walrus_p2p.node.router import Router
from walrus_p2p.storage import BlobState, BlobStore
from walrus_p2p.types import BlobId, PeerId, short_id

logger = logging.getLogger(__name__)

GOSSIP_BATCH_SECONDS = 2.0
VERIFIED_RECORDS_KEPT = 4096
"""Digests of verified blob records a peer remembers (32 bytes each)."""
GOSSIP_BATCH_RECORDS = 64

RecordListener = Callable[[BlobId, records.BlobState], None]
"""Called (synchronously, must not block) after new records of a blob were merged."""
PaymentCheck = Callable[[records.BlobRecord, records.BlobState, bool], Awaitable[None]]
"""(record, the blob's state with the records being merged, whether to wait for a missing
payment): raises ``ProtocolRefusal`` if the record is not paid for."""
UNPAID_REMEMBERED = 1024
"""Blobs whose last refused record's payment refusal is remembered (for store_metadata)."""


class RecordBook:
    """Verified blob records of one peer: the merge per blob, its listeners and announcements."""

    def __init__(
        self,
        *,
        store: BlobStore,
        network_id: bytes,
        peer_id: PeerId,
        committees: CommitteeView,
    ) -> None:
        self.store = store
        self.network_id = network_id
        self.peer_id = peer_id
        self.committees = committees
        self._states: dict[BlobId, records.BlobState] = {}
        self._lock = trio.Lock()
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        """Digests of the encodings of blob records that verified (see :meth:`verify`)."""
        self._listeners: list[RecordListener] = []
        self._announce: list[bytes] = []
        self._announce_ready = trio.Event()
        self.payments: PaymentCheck | None = None
        """The payment check of owner records; None: storage is free (no economy)."""
        self._unpaid: OrderedDict[BlobId, ProtocolRefusal] = OrderedDict()
        self._shared: dict[BlobId, dict[bytes, int]] = {}
        """Ends of shared blobs from the epoch chain: blob id -> owner -> end."""
        self._summaries_due: set[BlobId] = set()
        self._summaries_ready = trio.Event()

    @property
    def remembered(self) -> int:
        """How many verified record digests are remembered now."""
        return len(self._verified)

    def subscribe(self, listener: RecordListener) -> None:
        """Call ``listener`` after new records of a blob were merged."""
        self._listeners.append(listener)

    def load(self, blob_id: BlobId) -> list[bytes]:
        """The encodings of every record stored for the blob (blocking: call in a thread)."""
        return [
            value for _, value in self.store.iter_values(RECORDS_NAMESPACE, prefix=bytes(blob_id))
        ]

    async def blob_state(self, blob_id: BlobId) -> records.BlobState:
        """The merge of every verified record this peer keeps for the blob (cached)."""
        cached = self._states.get(blob_id)
        if cached is not None:
            return cached
        state = records.BlobState.empty(blob_id).with_shared_ends(self._shared.get(blob_id, {}))
        stored = await trio.to_thread.run_sync(self.load, blob_id)
        if not stored:
            # Not cached: anyone may ask about any blob id, and a cache of the empty states of
            # ids nobody stored would grow with every question (docs/security.md, "State kept
            # for strangers").
            return state
        for raw in stored:
            try:
                (record,) = decode_records((raw,), blob_id)
            except WireError as error:
                logger.warning(
                    "stored record unreadable blob=%s error=%s", short_id(blob_id), error
                )
                continue
            state = state.with_record(record)
        self._states[blob_id] = state
        return state

    def add_shared_end(self, blob_id: BlobId, owner: bytes, end: int) -> None:
        """A settlement of the epoch chain extended ``owner``'s shared blob of ``blob_id`` to
        ``end``; the stored summary follows in the background (:meth:`run`)."""
        ends = self._shared.setdefault(blob_id, {})
        if ends.get(owner, 0) >= end:
            return
        ends[owner] = end
        cached = self._states.get(blob_id)
        if cached is not None:
            self._states[blob_id] = cached.with_shared_ends({owner: end})
        self._summaries_due.add(blob_id)
        self._summaries_ready.set()

    async def _write_summaries(self) -> None:
        """Store the summaries of blobs whose shared end moved (what expiry and healing read)."""
        while True:
            await self._summaries_ready.wait()
            self._summaries_ready = trio.Event()
            due, self._summaries_due = self._summaries_due, set()
            for blob_id in sorted(due):
                async with self._lock:
                    state = await self.blob_state(blob_id)
                    if state.end_epoch is not None:
                        await trio.to_thread.run_sync(
                            self.store.set_blob_state, blob_id, _summary(state)
                        )

    def verify(self, record: records.BlobRecord, encoded: bytes | None = None) -> bytes:
        """``records.verify_blob_record``, done once per distinct record.

        A record's validity never changes: its signatures are over its own bytes, and a
        certificate is checked against the committee of its own epoch, which is fixed once
        known. The same certificate reaches a peer several times (pushed by the client, then on
        gossip, where the topic validator and the merge each checked it), each time 2f+1
        Ed25519 signatures. So the digests of the last :data:`VERIFIED_RECORDS_KEPT` records
        that verified are kept, and only a record not among them is checked. A record that
        fails is never kept. ``encoded`` is the record's encoding when the caller has it;
        returns the digest of that encoding.
        """
        digest = blake3.blake3(wire.encode(record) if encoded is None else encoded).digest()
        if digest in self._verified:
            self._verified.move_to_end(digest)
            return digest
        records.verify_blob_record(record, self.network_id, self.committees.committee_of)
        self._verified[digest] = None
        while len(self._verified) > VERIFIED_RECORDS_KEPT:
            self._verified.popitem(last=False)
        return digest

    def payment_refusal(self, blob_id: BlobId) -> ProtocolRefusal | None:
        """The refusal of the last unpaid record of the blob, if one was refused here."""
        return self._unpaid.get(blob_id)

    async def _paid(
        self, blob_id: BlobId, items: list[records.BlobRecord], wait: bool
    ) -> tuple[list[int], ProtocolRefusal | None]:
        """The indices of ``items`` that are paid for (or need no payment), and the first
        refusal."""
        if self.payments is None:
            return list(range(len(items))), None
        state = records.merge_records(blob_id, items).join(await self.blob_state(blob_id))
        kept: list[int] = []
        refusal: ProtocolRefusal | None = None
        for index, record in enumerate(items):
            try:
                await self.payments(record, state, wait)
            except ProtocolRefusal as error:
                refusal = refusal or error
                self._unpaid[blob_id] = error
                self._unpaid.move_to_end(blob_id)
                while len(self._unpaid) > UNPAID_REMEMBERED:
                    self._unpaid.popitem(last=False)
                continue
            kept.append(index)
        return kept, refusal

    async def merge(
        self,
        blob_id: BlobId,
        items: list[records.BlobRecord],
        *,
        announce: bool = True,
        wait_for_payment: bool = True,
    ) -> int:
        """Verify, persist and merge records; returns how many were new. Bad ones raise.

        New records that arrived directly (not by gossip) are announced on gossip by one peer
        per blob (see :meth:`_is_announcer`), batched, so the news costs one message per blob
        rather than one per peer. With :attr:`payments` set, unpaid owner records are left out
        and their refusal is raised once the others are merged; ``wait_for_payment`` lets a
        missing payment be fetched and awaited first (bounded; gossip does not wait).
        """
        # Attributes last: one needs its registration, which may be in the same batch.
        items = sorted(items, key=lambda record: isinstance(record, records.BlobAttribute))
        encodings = [wire.encode(record) for record in items]
        digests = [
            self.verify(record, encoded) for record, encoded in zip(items, encodings, strict=True)
        ]
        kept, refusal = await self._paid(blob_id, items, wait_for_payment)
        if refusal is not None:
            items = [items[index] for index in kept]
            encodings = [encodings[index] for index in kept]
            digests = [digests[index] for index in kept]
        accepted = 0
        async with self._lock:
            state = await self.blob_state(blob_id)
            for record, encoded, digest in zip(items, encodings, digests, strict=True):
                key = bytes(blob_id) + digest[:16]
                superseded: bytes | None = None
                if isinstance(record, records.BlobAttribute):
                    kept_attribute, superseded = self._attribute_place(state, record)
                    if not kept_attribute:
                        refusal = refusal or ProtocolRefusal(
                            "ATTRIBUTE_UNREGISTERED",
                            "blob attributes need a registration of their owner and start "
                            "epoch known here (send the register record first)",
                        )
                        continue
                    if superseded == key:
                        continue
                existing = await trio.to_thread.run_sync(
                    self.store.get_value, RECORDS_NAMESPACE, key
                )
                if existing is not None:
                    continue
                await trio.to_thread.run_sync(self.store.put_value, RECORDS_NAMESPACE, key, encoded)
                if superseded is not None:
                    # One attribute record per registration is kept (docs/attributes.md).
                    await trio.to_thread.run_sync(
                        self.store.delete_value, RECORDS_NAMESPACE, superseded
                    )
                state = state.with_record(record)
                accepted += 1
                if announce and self._is_announcer(blob_id):
                    self._announce.append(encoded)
                    self._announce_ready.set()
            if accepted or blob_id in self._states:
                self._states[blob_id] = state
            if accepted:
                summary = _summary(state)
                await trio.to_thread.run_sync(self.store.set_blob_state, blob_id, summary)
        if accepted:
            for listener in self._listeners:
                listener(blob_id, state)
        if refusal is not None:
            raise refusal
        return accepted

    @staticmethod
    def _attribute_place(
        state: records.BlobState, record: records.BlobAttribute
    ) -> tuple[bool, bytes | None]:
        """Whether an attribute record may be kept, and the store key of the one it replaces.

        Refused (False) when its registration is unknown here: a key could otherwise sign
        attribute sets for registrations that never existed and make peers keep them. A record
        that is not newer than the kept one "replaces" itself (its own key comes back), so it
        is neither stored nor counted as new.
        """
        registration_key = (bytes(record.body.owner), int(record.body.start_epoch))
        registration = state.registrations.get(registration_key)
        if registration is None or not registration.registered:
            return False, None
        current = state.attributes.get(registration_key)
        if current is None:
            return True, None
        winner = records.newer_attribute(current, record)
        loser = record if winner is current else current
        digest = blake3.blake3(wire.encode(loser)).digest()
        return True, bytes(state.blob_id) + digest[:16]

    def _is_announcer(self, blob_id: BlobId) -> bool:
        """The holder of shard ``blob_id mod n`` announces the blob's records on gossip."""
        committee = self.committees.current
        shard = int.from_bytes(blob_id, "big") % committee.n_shards
        return committee.peer_of(shard) == self.peer_id

    # -- requests ------------------------------------------------------------------------

    def register(self, router: Router) -> None:
        router.add(PostBlobRecordsRequest, self.post_records)
        router.add(GetBlobRecordsRequest, self.get_records)

    async def post_records(
        self, request: PostBlobRecordsRequest, remote: PeerId
    ) -> PostBlobRecordsReply:
        blob_id = BlobId(request.blob_id)
        items = decode_records(request.records, blob_id)
        try:
            accepted = await self.merge(blob_id, items)
        except VerificationError as error:
            raise ProtocolRefusal("RECORD_INVALID", str(error)) from error
        if accepted:
            logger.info(
                "blob records merged blob=%s accepted=%d peer=%s",
                short_id(blob_id),
                accepted,
                remote[:12],
            )
        return PostBlobRecordsReply(accepted=accepted)

    async def get_records(
        self, request: GetBlobRecordsRequest, remote: PeerId
    ) -> GetBlobRecordsReply:
        blob_id = BlobId(request.blob_id)
        raw = await trio.to_thread.run_sync(self.load, blob_id)
        return GetBlobRecordsReply(records=tuple(raw[:64]))

    # -- gossip --------------------------------------------------------------------------

    async def run(
        self,
        gossip: Gossip,
        topic: str,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Validate, read and publish the records topic until cancelled."""
        gossip.set_validator(topic, self._validate_gossip)
        subscription = await gossip.subscribe(topic)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_gossip, subscription)
            nursery.start_soon(self._publish_gossip, gossip, topic)
            nursery.start_soon(self._write_summaries)
            task_status.started()

    def _validate_gossip(self, message: GossipMessage) -> bool:
        """Gossip topic validator: every record in the batch must verify, or none is relayed;
        an empty batch is never relayed (as in the certified-orders topic)."""
        batch = wire.decode(message.data, BlobRecordsBatch)
        if not batch.records:
            return False
        for record in decode_any_records(batch.records):
            self.verify(record)
        return True

    async def _read_gossip(self, subscription: Subscription) -> None:
        await subscription.handle_each(self._merge_gossip, what="blob records")

    async def _merge_gossip(self, message: GossipMessage) -> None:
        batch = wire.decode(message.data, BlobRecordsBatch)
        by_blob: dict[BlobId, list[records.BlobRecord]] = {}
        for record in decode_any_records(batch.records):
            by_blob.setdefault(BlobId(record.blob_id), []).append(record)
        for blob_id, items in by_blob.items():
            try:
                await self.merge(blob_id, items, announce=False, wait_for_payment=False)
            except ProtocolRefusal as error:
                # Unpaid (or paid by a certificate not here yet: the client delivers records
                # directly, and catch-up brings them again): the rest of the batch still counts.
                logger.debug(
                    "gossiped record refused blob=%s reason=%s", short_id(blob_id), error.reason
                )

    async def _publish_gossip(self, gossip: Gossip, topic: str) -> None:
        while True:
            await self._announce_ready.wait()
            await trio.sleep(GOSSIP_BATCH_SECONDS)
            self._announce_ready = trio.Event()
            pending, self._announce = self._announce, []
            while pending:
                batch: list[bytes] = []
                size = 0
                while (
                    pending
                    and len(batch) < GOSSIP_BATCH_RECORDS
                    and size + len(pending[0]) < MAX_GOSSIP_BATCH_BYTES
                ):
                    size += len(pending[0])
                    batch.append(pending.pop(0))
                if not batch:
                    pending.pop(0)
                    continue
                try:
                    await gossip.publish(topic, wire.encode(BlobRecordsBatch(records=tuple(batch))))
                    logger.info("records announced on gossip count=%d", len(batch))
                except WalrusError as error:
                    logger.info("records gossip publish failed error=%s", error)


def _summary(state: records.BlobState) -> BlobState:
    """What the store keeps of a blob's state (for expiry and healing)."""
    return BlobState(
        certified_epoch=state.certified_epoch,
        end_epoch=state.end_epoch,
        deletable=not state.is_permanent,
        invalid=state.is_invalid,
    )
