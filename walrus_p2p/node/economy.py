"""The economy of a storage peer: its ledger, its signing rule, and the certified orders it keeps.

docs/economics.md, "The protocol", and docs/design.md §11.1. :class:`EconomyService` is a
composed service like the record book:

- **approvals** (``ApproveOrderRequest``): the member's
  :class:`~walrus_p2p.core.order_signer.OrderSigner` decides, signing the member's current
  epoch, once the member holds the previous committee's locks (the hand-over,
  :mod:`walrus_p2p.node.handover`; ``HANDOVER_PENDING`` until then); a new lock is written to
  the store (an fsynced SQLite commit when the store is durable) *before* the approval is
  sent, so a member that restarts never approves a conflicting order. Approvals asked at the
  same time share one write (group commit: whoever takes the journal lock writes the lock rows
  changed until then, one row per slot, covering every approval made before it);
- **certificates** (``SubmitCertificateRequest``, gossip, catch-up): verified against the
  committee of the epoch that approved them, merged into the peer's
  :class:`~walrus_p2p.core.ledger.Ledger` (which starts from the genesis allocations), stored under
  their listing key (account, sequence), and — when they came directly from a wallet — announced
  on the certified-orders topic in batches by one peer per order;
- **queries**: an account's balance, next sequence, pending lock and recent certificates
  (``GetAccountRequest``), the paged listing of every certificate (``ListCertificatesRequest``)
  that a peer catching up reads, and the ledger's summary with an account's stakes
  (``GetEconomyRequest``);
- **settlements** (:class:`~walrus_p2p.node.epochs.SettlementHooks`): what this peer proposes
  and accepts as the settlement of each epoch value, and the settlement of every record that
  becomes current, added to the ledger (docs/economics.md, "Settlements in the epoch change");
- **votes**: this peer's ``ParameterVote`` of each epoch (``peer.toml`` ``[vote]``), published
  on the certified-orders topic, and the verified votes of the others (docs/economics.md,
  "Votes").

At start the peer loads its journal and every stored certificate; then, in the background, it
pages through the listing of a few other members (bounded) and, while its ledger waits for an
earlier order of some account (a gap: a certificate it never received), asks a member for the
missing ones.

On a network with an economy the record book asks :meth:`EconomyService.check_payment` before it
merges an owner's register or extend record (docs/economics.md, "Paid storage"): the rule is
:func:`walrus_p2p.core.payments.record_payment` on this peer's ledger; a record whose payment is
not known here yet makes the peer fetch the owner's newest certificates from other members and
wait (bounded) for them before it refuses. A release (``ReleaseStorageBody``) is approved only
once the owner's registrations of the resource's blob are deleted here.
"""

from __future__ import annotations

import bisect
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import trio

from walrus_p2p.core import identity, wire
from walrus_p2p.core.committee import Committee
from walrus_p2p.core.economy import VoteSettings
from walrus_p2p.core.economy_messages import (
    MAX_CERTIFICATES_PER_MESSAGE,
    MAX_POOLS_PER_REPLY,
    MAX_RESOURCES_PER_REPLY,
    MAX_SHARED_PER_REPLY,
    MAX_STAKES_PER_REPLY,
    ApproveOrderReply,
    ApproveOrderRequest,
    CertificatesBatch,
    CertifiedOrder,
    ConflictEvidence,
    EpochSettlement,
    GetAccountReply,
    GetAccountRequest,
    GetEconomyReply,
    GetEconomyRequest,
    GetLocksRequest,
    GetSharedBlobReply,
    GetSharedBlobRequest,
    ListCertificatesReply,
    ListCertificatesRequest,
    ParameterVote,
    PoolEntry,
    ReleaseStorageBody,
    ResourceEntry,
    SharedBlobEntry,
    StakeEntry,
    StakeStateCode,
    SubmitCertificateReply,
    SubmitCertificateRequest,
    SubmitOutcome,
    TransferBody,
    VoteEntry,
    decode_certificate,
    decode_order_body,
    order_id,
    order_key,
    sign_parameter_vote,
    verify_certified_order,
    verify_conflict_evidence,
    verify_parameter_vote,
)
from walrus_p2p.core.ledger import Ledger, Outcome
from walrus_p2p.core.order_signer import OrderSigner
from walrus_p2p.core.payments import PaymentRefusal, record_payment
from walrus_p2p.core.records import (
    BlobExtend,
    BlobRecord,
    BlobRegister,
    BlobState,
    EpochRecord,
    EpochValue,
)
from walrus_p2p.core.settlements import (
    check_settlement,
    encode_settlement,
    propose_settlement,
    settlement_of,
)
from walrus_p2p.errors import OrderRefusedError, VerificationError, WalrusError, WireError
from walrus_p2p.net.gossip import Gossip, GossipMessage, Subscription
from walrus_p2p.node.context import PeerContext
from walrus_p2p.node.handover import LockHandover
from walrus_p2p.node.peer_calls import PeerCaller
from walrus_p2p.node.protocol import ProtocolRefusal, max_frame_for
from walrus_p2p.node.router import Router
from walrus_p2p.types import BlobId, Epoch, PeerId

logger = logging.getLogger(__name__)

ORDERS_NAMESPACE = "economy-orders"
"""Store namespace of certified orders: key = account + sequence (8 bytes, big-endian)."""
RECEIVED_NAMESPACE = "economy-received"
"""Transfers received, for an account's history: key = recipient + arrival time (8 bytes,
nanoseconds) + 8 bytes of the order id; value = the order's key in ``ORDERS_NAMESPACE``."""
SIGNER_NAMESPACE = "economy-signer"
"""Where the version before kept the signer's journal (``JOURNAL_KEY``), read once."""
LOCKS_NAMESPACE = "economy-locks"
"""The signer's locks, one row per slot (key: account + sequence), and the completed
hand-overs (``walrus_p2p.core.order_signer.HANDOVERS_KEY``)."""
EVIDENCE_NAMESPACE = "economy-evidence"
"""Verified conflict evidence (docs/economics.md, "Slashing"), keyed by the member's public key,
the account and the sequence."""
JOURNAL_KEY = b"journal"
CERTIFICATES_TOPIC = "certified-orders"

_OUTCOMES = {
    Outcome.APPLIED: SubmitOutcome.APPLIED,
    Outcome.WAITING: SubmitOutcome.WAITING,
    Outcome.DUPLICATE: SubmitOutcome.DUPLICATE,
    Outcome.VOID: SubmitOutcome.VOID,
}


@dataclass(frozen=True, slots=True)
class EconomyOptions:
    """How a peer keeps the economy up to date (defaults suit a home machine)."""

    catch_up_on_start: bool = True
    catch_up_sources: int = 2
    """Members whose listing is read at start (each pages through every certificate)."""
    catch_up_max_pages: int = 4096
    """A listing stops after this many pages (~100 000 certificates) per source and round."""
    catch_up_interval: float = 600.0
    """Seconds between two catch-up rounds after the first; 0 turns them off."""
    gap_interval: float = 5.0
    """Seconds between two looks for gaps (orders waiting for an earlier one); 0: off."""
    gap_accounts: int = 16
    """Accounts whose gap one look tries to fill."""
    request_timeout: float = 20.0
    gossip_batch_seconds: float = 1.0
    """Certificates that arrived directly are announced after at most this long, batched."""
    payment_wait: float = 5.0
    """How long a blob record whose payment is not known here waits for it (fetching the
    owner's newest certificates from other members meanwhile) before it is refused. A client
    delivers its payment's certificates to a quorum before it registers; the others get them
    within seconds."""
    payment_sources: int = 3
    """Members asked, one after another, for an owner's newest certificates."""
    vote_source: Callable[[], VoteSettings | None] | None = None
    """What this peer votes (read at each epoch change: ``peer.toml`` ``[vote]``, so
    ``walrus-peer vote`` takes effect from the next epoch); None: it does not vote."""
    vote_republish_fraction: float = 0.5
    """A vote not in force yet is published at the start of the epoch and again this far into
    it, for peers that (re)started since (docs/economics.md, "Votes")."""


def _vote_values(entry: VoteEntry) -> tuple[int, int, int, int]:
    return entry.storage_price, entry.write_price, entry.capacity, entry.commission_bps


def _epoch_or_none(epoch: int | None) -> Epoch | None:
    return None if epoch is None or epoch < 0 else Epoch(epoch)


class CertificateSource(Protocol):
    """Where the verified availability certificates of an epoch are (the challenge service)."""

    async def certificates(self, epoch: int) -> Mapping[PeerId, object]: ...


class EconomyService:
    """The ledger, signing rule and certified orders of one storage peer."""

    def __init__(self, ctx: PeerContext, options: EconomyOptions | None = None) -> None:
        self.ctx = ctx
        self.options = options or EconomyOptions()
        self.network_id = ctx.genesis.network_id
        self.ledger = Ledger.from_genesis(ctx.genesis)
        self.signer = OrderSigner(ctx.identity, self.network_id)
        self.caller = PeerCaller(
            ctx.host,
            protocol=ctx.protocol,
            limits=ctx.limits,
            max_frame=max_frame_for(ctx.genesis),
            committee=lambda: ctx.committee,
            discovery=ctx.discovery,
        )
        self._known: set[bytes] = set()
        """Ids of the certified orders merged here (a known one is not verified again)."""
        self._journal_lock = trio.Lock()
        self._journal_changes = 0
        self._journal_written = 0
        self._merge_lock = trio.Lock()
        self._announce: list[bytes] = []
        self._announce_ready = trio.Event()
        self._keys: list[bytes] = []
        self._keys_read_at = -math.inf
        self.caught_up = trio.Event()
        """Set when the first catch-up round ended (whatever it found)."""
        self.loaded = False
        self._applied = trio.Event()
        """Set (and replaced) whenever a certificate or a settlement changed the ledger:
        payments wait on it."""
        self.challenges: CertificateSource | None = None
        """The availability certificates a settlement pays by (set by the peer)."""
        self._votes: dict[PeerId, tuple[bytes, ParameterVote]] = {}
        """The newest verified parameter vote of each voter (with its encoding). Of two votes
        of one voter for one epoch the smaller encoding is kept, so every peer that saw both
        keeps the same one."""
        self._vote_wanted = trio.Event()
        self._publish_votes: list[bytes] = []
        self._certified_views: dict[int, Mapping[PeerId, object]] = {}
        self.settlements_added = 0
        self._evidence: dict[bytes, tuple[PeerId, ConflictEvidence]] = {}
        """Verified conflict evidence by (member key, account, sequence): one piece per slot."""
        self._evidence_queue: list[tuple[bytes, bytes, bool]] = []
        """New evidence to store (key, encoding) and, if found here, to publish."""
        self._evidence_ready = trio.Event()
        self.handover = LockHandover(self)
        self.shared_ends: Callable[[BlobId, bytes, int], None] | None = None
        """Where the ends of shared blobs the chain's settlements give go (the record book)."""

    # -- start ---------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the signer's locks and every stored certificate (before requests are served).

        Locks that do not load stop the peer (``WireError``): starting without its locks
        would let this member approve an order conflicting with one it approved before."""
        store = self.ctx.store
        rows = await trio.to_thread.run_sync(lambda: list(store.iter_values(LOCKS_NAMESPACE)))
        journal = await trio.to_thread.run_sync(store.get_value, SIGNER_NAMESPACE, JOURNAL_KEY)
        if rows:
            self.signer = OrderSigner.from_rows(rows, self.ctx.identity, self.network_id)
        elif journal is not None:
            # The version before kept every lock in one record: written as rows, then dropped.
            self.signer = OrderSigner.from_journal(journal, self.ctx.identity, self.network_id)
            await trio.to_thread.run_sync(
                store.put_values, LOCKS_NAMESPACE, self.signer.take_changes()
            )
        if journal is not None:
            await trio.to_thread.run_sync(store.delete_value, SIGNER_NAMESPACE, JOURNAL_KEY)
        stored = await trio.to_thread.run_sync(
            lambda: [value for _, value in store.iter_values(ORDERS_NAMESPACE)]
        )
        for encoded in stored:
            try:
                certificate = decode_certificate(encoded)
                self.ledger.add_order(certificate.order)
            except WalrusError as error:
                # Verified before it was stored: only a damaged store gets here.
                logger.warning("stored certified order unusable error=%s", error)
                continue
            self._known.add(order_id(certificate.order))
        kept = await trio.to_thread.run_sync(
            lambda: [value for _, value in store.iter_values(EVIDENCE_NAMESPACE)]
        )
        for encoded in kept:
            try:
                # Checked against the committees before it was stored.
                self._remember_evidence(wire.decode(encoded, ConflictEvidence), members=False)
            except (WireError, VerificationError) as error:
                logger.warning("stored conflict evidence unusable error=%s", error)
        self.loaded = True
        logger.info(
            "economy loaded orders=%d lock_rows=%d old_journal=%s",
            len(self._known),
            len(rows),
            journal is not None,
        )

    def register(self, router: Router) -> None:
        router.add(ApproveOrderRequest, self.approve)
        router.add(SubmitCertificateRequest, self.submit)
        router.add(GetAccountRequest, self.get_account)
        router.add(ListCertificatesRequest, self.list_certificates)
        router.add(GetEconomyRequest, self.get_economy)
        router.add(GetSharedBlobRequest, self.get_shared_blob)
        router.add(GetLocksRequest, self.handover.get_locks)

    async def run(
        self,
        gossip: Gossip,
        topic: str,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Gossip, catch-up and gap filling, until cancelled."""
        gossip.set_validator(topic, self._validate_gossip)
        subscription = await gossip.subscribe(topic)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_gossip, subscription)
            nursery.start_soon(self._publish_gossip, gossip, topic)
            nursery.start_soon(self._catch_up_loop)
            nursery.start_soon(self._gap_loop)
            nursery.start_soon(self._vote_loop, gossip, topic)
            nursery.start_soon(self._evidence_loop, gossip, topic)
            nursery.start_soon(self.handover.run)
            task_status.started()

    # -- approvals -----------------------------------------------------------------------

    async def approve(self, request: ApproveOrderRequest, remote: PeerId) -> ApproveOrderReply:
        """Approve under the signing rule, in this member's current epoch, once it holds the
        previous committee's locks; the lock is durable before the reply leaves."""
        await self._check_release(request)
        # Read after the last wait: the lock taken below belongs to the epoch it signs, so a
        # hand-over report made after the switch (the epoch left) holds every lock of it.
        epoch = self.ctx.epoch
        if self.handover.pending(epoch):
            raise OrderRefusedError(
                "HANDOVER_PENDING",
                f"this member still collects the locks of committee {epoch - 1}",
            )
        signature = self.signer.approve(request.order, self.ledger, epoch)
        # Also when this order was approved before: its lock may still be on its way to disk
        # (the first request's write), and this reply must not overtake it.
        await self.persist_journal()
        return ApproveOrderReply(epoch=Epoch(epoch), signature=signature)

    async def _check_release(self, request: ApproveOrderRequest) -> None:
        """A release frees a resource for another blob, so it is approved only when the owner's
        registrations of the blob it carries are all deleted here (``RESOURCE_IN_USE``
        otherwise): else one payment could keep a blob stored and pay for another one
        (docs/economics.md, "Paid storage"). The signing rule checks the rest."""
        try:
            body = decode_order_body(request.order)
        except OrderRefusedError:
            return  # the signing rule refuses it with its reason
        if not isinstance(body, ReleaseStorageBody):
            return
        resource = self.ledger.resource(bytes(body.resource))
        if resource is None or resource.blob_id is None or resource.owner != body.account:
            return
        state = await self.ctx.records.blob_state(BlobId(resource.blob_id))
        if any(owner == body.account for owner, _ in state.live_registrations):
            raise OrderRefusedError(
                "RESOURCE_IN_USE",
                "a registration of the resource's blob by this owner is not deleted here",
            )

    async def persist_journal(self) -> None:
        self._journal_changes += 1
        wanted = self._journal_changes
        async with self._journal_lock:
            if self._journal_written >= wanted:
                return  # a write that started after this change covered it
            covered = self._journal_changes
            changes = self.signer.take_changes()
            if changes:
                await trio.to_thread.run_sync(self.ctx.store.put_values, LOCKS_NAMESPACE, changes)
            self._journal_written = covered

    # -- certificates --------------------------------------------------------------------

    # -- settlements (the economy's part of each epoch value) ----------------------------

    async def prepare(self, committee: Committee) -> None:
        """Load the availability certificates of ``committee.epoch`` that proposing and
        checking its settlement read (a live view: certificates kept later show in it)."""
        if self.challenges is not None:
            view = await self.challenges.certificates(committee.epoch)
            self._certified_views = {committee.epoch: view}

    def _certified(self, epoch: int) -> frozenset[PeerId] | None:
        view = self._certified_views.get(epoch)
        return frozenset(view) if view else None

    def propose(self, committee: Committee) -> bytes:
        settlement = propose_settlement(
            self.ledger,
            committee,
            votes=self.votes(),
            certified=self._certified(committee.epoch),
            evidence=self.evidence_counts(),
        )
        logger.info(
            "settlement proposed epoch=%d payout=%d activations=%d requests=%d certified=%s",
            settlement.epoch,
            settlement.payout,
            len(settlement.stake_activations),
            len(settlement.withdrawal_requests),
            "all" if settlement.certified is None else len(settlement.certified),
        )
        return encode_settlement(settlement)

    def accepts(self, committee: Committee, value: EpochValue) -> bool:
        try:
            check_settlement(
                self.ledger,
                committee,
                value,
                certified=self._certified(committee.epoch),
                evidence=self.evidence_counts(),
            )
        except VerificationError as error:
            logger.info("settlement refused epoch=%d error=%s", committee.epoch, error)
            return False
        return True

    def stake_after(self, settlement: bytes | None) -> dict[PeerId, int]:
        if settlement is None:
            return {}
        decoded = wire.decode(settlement, EpochSettlement)
        return self.ledger.stake_after(decoded)

    def voted_out(self, committee: Committee, settlement: bytes | None) -> set[PeerId]:
        if settlement is None:
            return set()
        out = self.ledger.voted_out_after(wire.decode(settlement, EpochSettlement), committee)
        if out:
            logger.info("voted out epoch=%d peers=%s", committee.epoch + 1, sorted(out))
        return out

    def record_applied(self, record: EpochRecord, previous: Committee) -> None:
        """Add the settlement a verified record carries to the ledger (it applies once every
        order it names is known and the fund covers it; docs/economics.md)."""
        self._vote_wanted.set()
        self.handover.epoch_changed()
        try:
            settlement = settlement_of(record.value)
            if settlement is None:
                logger.warning("epoch record %d carries no settlement", record.epoch)
                return
            outcome = self.ledger.add_settlement(settlement, previous, record.committee)
        except (VerificationError, OrderRefusedError) as error:
            # Only a faulty quorum agrees on such a value: the ledger stays as it was.
            logger.warning("settlement unusable epoch=%d error=%s", record.epoch - 1, error)
            return
        if self.shared_ends is not None:
            # The chain states each shared blob's new end (docs/economics.md, "Shared blobs").
            for extension in settlement.shared_extensions:
                self.shared_ends(
                    BlobId(extension.blob_id), extension.owner, int(extension.end_epoch)
                )
        self.settlements_added += 1
        if outcome is not Outcome.WAITING:
            self._applied.set()
            self._applied = trio.Event()
        logger.info(
            "settlement added epoch=%d payout=%d outcome=%s settled=%d",
            settlement.epoch,
            settlement.payout,
            outcome.value,
            self.ledger.settled_epoch,
        )

    async def submit(
        self, request: SubmitCertificateRequest, remote: PeerId
    ) -> SubmitCertificateReply:
        outcome = await self.merge(request.certificate, announce=True)
        return SubmitCertificateReply(outcome=_OUTCOMES[outcome])

    def verify(self, certificate: CertifiedOrder) -> None:
        """``verify_certified_order`` against the committees this peer knows, unless the order
        is known here already (its certificate verified when it was merged)."""
        if order_id(certificate.order) in self._known:
            return
        verify_certified_order(certificate, self.network_id, self.ctx.committees.committee_of)

    async def merge(self, certificate: CertifiedOrder, *, announce: bool) -> Outcome:
        """Verify, apply, store (and announce, if it came directly) one certificate.

        Raises ``OrderRefusedError``: the certificate's own refusal, or ``ORDER_CONFLICT`` when
        another order is certified for its slot (only a faulty quorum makes that)."""
        identifier = order_id(certificate.order)
        if identifier in self._known:
            return Outcome.DUPLICATE
        self.verify(certificate)
        body = decode_order_body(certificate.order)
        try:
            outcome = self.ledger.add_order(certificate.order)
        except OrderRefusedError as error:
            if error.reason == "ORDER_CONFLICT":
                await self._evidence_from_conflict(certificate, body.account, body.sequence)
            raise
        if outcome is Outcome.DUPLICATE:
            return outcome
        self._known.add(identifier)
        if outcome is not Outcome.WAITING:
            self._applied.set()
            self._applied = trio.Event()
        encoded = wire.encode(certificate)
        key = order_key(body.account, body.sequence)
        store = self.ctx.store
        async with self._merge_lock:
            await trio.to_thread.run_sync(store.put_value, ORDERS_NAMESPACE, key, encoded)
            # The listing's cached keys include it at once: a peer fetching an owner's newest
            # certificates for a payment asks right after they arrived here.
            place = bisect.bisect_left(self._keys, key)
            if place == len(self._keys) or self._keys[place] != key:
                self._keys.insert(place, key)
            if isinstance(body, TransferBody):
                received = (
                    bytes(body.recipient) + time.time_ns().to_bytes(8, "big") + identifier[:8]
                )
                await trio.to_thread.run_sync(store.put_value, RECEIVED_NAMESPACE, received, key)
            # Only once the certificate is on disk may the journal drop the locks it settles
            # (a restarted member rebuilds its ledger from the stored certificates).
            self.signer.prune(self.ledger, self.ctx.epoch)
        if announce and self._is_announcer(identifier):
            self._announce.append(encoded)
            self._announce_ready.set()
        logger.info(
            "certified order merged account=%s sequence=%d outcome=%s",
            body.account.hex()[:12],
            body.sequence,
            outcome.value,
        )
        return outcome

    async def merge_encoded(self, items: Iterable[bytes], source: str) -> int:
        """Merge certificates from a listing or a gossip batch; bad ones are logged and
        skipped. Returns how many were new here."""
        merged = 0
        for encoded in items:
            try:
                outcome = await self.merge(decode_certificate(encoded), announce=False)
            except WalrusError as error:
                logger.info(
                    "certified order dropped source=%s reason=%s detail=%s",
                    source,
                    error.reason,
                    error,
                )
                continue
            merged += outcome is not Outcome.DUPLICATE
        return merged

    def _is_announcer(self, identifier: bytes) -> bool:
        """The holder of shard ``order id mod n`` announces a certificate on gossip, so the news
        costs one message per order (wallets also give it to every member directly)."""
        committee = self.ctx.committee
        shard = int.from_bytes(identifier, "big") % committee.n_shards
        return committee.peer_of(shard) == self.ctx.peer_id

    # -- paid storage --------------------------------------------------------------------

    def payment_refusal(self, record: BlobRecord) -> PaymentRefusal | None:
        """Why ``record`` is not paid for in this peer's ledger (None: paid, or needs none)."""
        if not isinstance(record, BlobRegister | BlobExtend):
            return None
        return record_payment(self.ledger, record, self.ctx.genesis.n_shards)

    async def check_payment(self, record: BlobRecord, state: BlobState, wait: bool = True) -> None:
        """Refuse (``ProtocolRefusal``: ``PAYMENT_REQUIRED``, ``PAYMENT_MISMATCH``) an owner's
        register or extend record that the ledger shows no payment for.

        ``state`` is the blob's state with the records being merged: a registration deleted
        there needs no payment any more (its resource may have been released since). With
        ``wait``, a missing payment is looked for first: the owner's certificates from its next
        sequence on are asked from up to ``payment_sources`` other members, and certificates
        arriving meanwhile are awaited, for at most ``payment_wait`` seconds."""
        if not isinstance(record, BlobRegister | BlobExtend):
            return
        key = (bytes(record.body.owner), int(record.body.start_epoch))
        registration = state.registrations.get(key)
        if registration is not None and registration.deleted and not registration.permanent:
            return
        refusal = self.payment_refusal(record)
        if refusal is None:
            return
        if wait and self.options.payment_wait > 0:
            refusal = await self._await_payment(record, refusal)
            if refusal is None:
                return
        raise ProtocolRefusal(refusal.reason, refusal.message)

    async def _await_payment(
        self, record: BlobRegister | BlobExtend, refusal: PaymentRefusal
    ) -> PaymentRefusal | None:
        account = bytes(record.body.owner)
        sources = self._others()[: self.options.payment_sources]
        with trio.move_on_after(self.options.payment_wait):
            while True:
                changed = self._applied
                if sources:
                    source = sources.pop(0)
                    start = order_key(account, self.ledger.next_sequence(account))
                    try:
                        reply = await self.caller.call(
                            source,
                            ListCertificatesRequest(
                                start=start, limit=MAX_CERTIFICATES_PER_MESSAGE
                            ),
                            ListCertificatesReply,
                            timeout=self.options.payment_wait,
                        )
                        await self.merge_encoded(reply.certificates, f"payment:{source[:12]}")
                    except WalrusError as error:
                        logger.info(
                            "payment fetch failed peer=%s reason=%s", source[:12], error.reason
                        )
                else:
                    await changed.wait()
                refusal_now = self.payment_refusal(record)
                if refusal_now is None:
                    return None
                refusal = refusal_now
        return refusal

    # -- queries -------------------------------------------------------------------------

    async def get_account(self, request: GetAccountRequest, remote: PeerId) -> GetAccountReply:
        account = bytes(request.account)
        next_sequence = self.ledger.next_sequence(account)
        lock = self.signer.locked(account, next_sequence)
        wanted = request.history
        store = self.ctx.store

        def read() -> tuple[list[bytes], list[bytes]]:
            own: list[bytes] = []
            for sequence in range(next_sequence - 1, max(-1, next_sequence - 1 - wanted), -1):
                value = store.get_value(ORDERS_NAMESPACE, order_key(account, sequence))
                if value is not None:
                    own.append(value)
            received: list[bytes] = []
            if wanted:
                keys = [value for _, value in store.iter_values(RECEIVED_NAMESPACE, prefix=account)]
                for key in reversed(keys[-wanted:]):
                    value = store.get_value(ORDERS_NAMESPACE, key)
                    if value is not None:
                        received.append(value)
            return own, received

        own, received = await trio.to_thread.run_sync(read)
        return GetAccountReply(
            epoch=Epoch(self.ctx.epoch),
            balance=self.ledger.balance(account),
            next_sequence=next_sequence,
            pending=None if lock is None else lock[1],
            orders=tuple(own),
            received=tuple(received),
        )

    async def get_economy(self, request: GetEconomyRequest, remote: PeerId) -> GetEconomyReply:
        ledger = self.ledger
        epoch = self.ctx.committees.epoch
        prices = ledger.prices(epoch)
        stakes: list[StakeEntry] = []
        if request.account is not None:
            owned = sorted(ledger.stakes_of(request.account).items())
            for stake_id, position in owned[:MAX_STAKES_PER_REPLY]:
                stakes.append(
                    StakeEntry(
                        stake_id=stake_id,
                        peer=position.peer,
                        principal=position.principal,
                        rewards=position.rewards,
                        state=StakeStateCode[position.state.name],
                        active_from=_epoch_or_none(position.active_from),
                        active_until=_epoch_or_none(position.active_until),
                        request=position.request,
                    )
                )
        resources: list[ResourceEntry] = []
        if request.account is not None:
            resources_owned = ledger.resources_of(request.account).items()
            # Free ones first (what a user can still use), then by id.
            ordered = sorted(
                resources_owned, key=lambda item: (item[1].blob_id is not None, item[0])
            )
            for resource_id, resource in ordered[:MAX_RESOURCES_PER_REPLY]:
                resources.append(
                    ResourceEntry(
                        resource_id=resource_id,
                        units=resource.units,
                        start_epoch=Epoch(resource.start_epoch),
                        end_epoch=Epoch(resource.end_epoch),
                        blob_id=None if resource.blob_id is None else BlobId(resource.blob_id),
                        deletable=resource.deletable,
                        shared=resource.shared,
                    )
                )
        pools = sorted(ledger.pools.items())[:MAX_POOLS_PER_REPLY]
        return GetEconomyReply(
            epoch=Epoch(epoch),
            settled_epoch=_epoch_or_none(ledger.settled_epoch),
            storage_price=prices.storage_price,
            write_price=prices.write_price,
            total_stake=sum(ledger.stake_by_peer(epoch).values()),
            reward_fund=ledger.reward_fund,
            burned=ledger.burned,
            pools=tuple(PoolEntry(Epoch(e), amount) for e, amount in pools),
            stakes=tuple(stakes),
            resources=tuple(resources),
        )

    async def get_shared_blob(
        self, request: GetSharedBlobRequest, remote: PeerId
    ) -> GetSharedBlobReply:
        ledger = self.ledger
        epoch = self.ctx.committees.epoch
        found = sorted(ledger.shared_blobs(request.key).items())[:MAX_SHARED_PER_REPLY]
        entries = []
        for shared_id, resource in found:
            assert resource.blob_id is not None  # a shared resource holds its blob
            entries.append(
                SharedBlobEntry(
                    shared_id=shared_id,
                    blob_id=BlobId(resource.blob_id),
                    owner=resource.owner,
                    units=resource.units,
                    end_epoch=Epoch(resource.end_epoch),
                    funds=ledger.shared_funds(shared_id),
                    pending_requests=min(ledger.pending_shared_requests(shared_id), 2**16 - 1),
                )
            )
        return GetSharedBlobReply(
            epoch=Epoch(epoch),
            storage_price=ledger.prices(epoch).storage_price,
            shared=tuple(entries),
        )

    async def list_certificates(
        self, request: ListCertificatesRequest, remote: PeerId
    ) -> ListCertificatesReply:
        store = self.ctx.store
        now = trio.current_time()
        if request.start is None or now - self._keys_read_at > 30.0:
            # No range query on the store: the sorted keys are read once per listing (and at
            # most every 30 s), then pages are served from them.
            self._keys = await trio.to_thread.run_sync(
                lambda: [key for key, _ in store.iter_values(ORDERS_NAMESPACE)]
            )
            self._keys_read_at = now
        keys = self._keys
        first = 0 if request.start is None else bisect.bisect_left(keys, bytes(request.start))
        chosen = keys[first : first + request.limit]

        def read() -> list[bytes]:
            values = (store.get_value(ORDERS_NAMESPACE, key) for key in chosen)
            return [value for value in values if value is not None]

        certificates = await trio.to_thread.run_sync(read)
        following = first + len(chosen)
        return ListCertificatesReply(
            certificates=tuple(certificates),
            next_start=keys[following] if following < len(keys) else None,
        )

    # -- gossip --------------------------------------------------------------------------

    def _validate_gossip(self, message: GossipMessage) -> bool:
        """Every certificate of the batch must verify, or none is relayed. An empty batch is
        never relayed: no honest peer sends one, and a stranger's would cross the network for
        nothing (found by the fuzzing campaign, docs/testing.md). A parameter vote is relayed
        when it verifies and is kept here (a vote seen before is not relayed again)."""
        news = wire.decode(message.data, (CertificatesBatch, ParameterVote, ConflictEvidence))
        if isinstance(news, ParameterVote):
            return self.take_vote(news)
        if isinstance(news, ConflictEvidence):
            # Relayed when it verifies, new here or not (this peer's own publication passes
            # this validator after it kept the evidence; gossip itself drops repeats).
            self.take_evidence(news)
            return self._holds_evidence(news)
        if not news.certificates:
            return False
        for encoded in news.certificates:
            self.verify(decode_certificate(encoded))
        return True

    async def _read_gossip(self, subscription: Subscription) -> None:
        await subscription.handle_each(self._merge_gossip, what="certified orders")

    async def _merge_gossip(self, message: GossipMessage) -> None:
        news = wire.decode(message.data, (CertificatesBatch, ParameterVote, ConflictEvidence))
        if isinstance(news, ParameterVote):
            self.take_vote(news)
            return
        if isinstance(news, ConflictEvidence):
            self.take_evidence(news)  # the validator kept it already; this is a no-op then
            return
        await self.merge_encoded(news.certificates, f"gossip:{message.origin[:12]}")

    # -- conflict evidence and slashing (docs/economics.md, "Slashing") ------------------

    def evidence_counts(self) -> dict[PeerId, int]:
        """Pieces of verified conflict evidence held against each member."""
        counts: dict[PeerId, int] = {}
        for peer_id, _ in self._evidence.values():
            counts[peer_id] = counts.get(peer_id, 0) + 1
        return counts

    def _remember_evidence(
        self, evidence: ConflictEvidence, *, members: bool = True
    ) -> bytes | None:
        """Verify evidence; the key it is kept under if it is new, else None. A key that is not
        a member of the committee of an approval's epoch (as far as this peer knows the
        committees; checked with ``members``) proves nothing about a member:
        ``VerificationError``."""
        account, sequence = verify_conflict_evidence(evidence, self.network_id)
        peer_id = identity.peer_id_from_public_key(evidence.public_key)
        for epoch in (evidence.first_epoch, evidence.second_epoch) if members else ():
            committee = self.ctx.committees.committee_of(int(epoch))
            if committee is None or peer_id not in committee:
                raise VerificationError(
                    f"conflict evidence: {peer_id[:12]} is not a known member of epoch {epoch}"
                )
        key = bytes(evidence.public_key) + bytes(account) + int(sequence).to_bytes(8, "big")
        if key in self._evidence:
            return None
        self._evidence[key] = (peer_id, evidence)
        return key

    def _holds_evidence(self, evidence: ConflictEvidence) -> bool:
        return any(kept is evidence or kept == evidence for _, kept in self._evidence.values())

    def take_evidence(self, evidence: ConflictEvidence, *, publish: bool = False) -> bool:
        """Verify and keep conflict evidence (stored in the background, and published there
        when ``publish``: evidence found or handed in here); True if it is new here (then
        gossip relays it)."""
        try:
            key = self._remember_evidence(evidence)
        except VerificationError as error:
            logger.info("conflict evidence refused error=%s", error)
            return False
        if key is None:
            return False
        logger.warning(
            "conflict evidence member=%s: it approved two orders of one account slot",
            identity.peer_id_from_public_key(evidence.public_key)[:12],
        )
        self._evidence_queue.append((key, wire.encode(evidence), publish))
        self._evidence_ready.set()
        return True

    async def _evidence_from_conflict(
        self, certificate: CertifiedOrder, account: bytes, sequence: int
    ) -> None:
        """Two certificates for one slot: every member that approved both equivocated."""
        stored = await trio.to_thread.run_sync(
            self.ctx.store.get_value, ORDERS_NAMESPACE, order_key(account, sequence)
        )
        if stored is None:
            return
        other = decode_certificate(stored)
        first_epoch, second_epoch = other.epoch, certificate.epoch
        mine = {approval.signer: approval.signature for approval in certificate.approvals}
        for approval in other.approvals:
            if approval.signer not in mine:
                continue
            committee = self.ctx.committees.committee_of(int(first_epoch))
            if committee is None or approval.signer not in committee:
                continue
            self.take_evidence(
                publish=True,
                evidence=ConflictEvidence(
                    public_key=committee.member(approval.signer).public_key,
                    first=other.order,
                    first_approval=approval.signature,
                    first_epoch=first_epoch,
                    second=certificate.order,
                    second_approval=mine[approval.signer],
                    second_epoch=second_epoch,
                ),
            )

    async def _evidence_loop(self, gossip: Gossip, topic: str) -> None:
        """Store new evidence, and publish what was found here (evidence that came by gossip
        is relayed by gossip itself)."""
        while True:
            await self._evidence_ready.wait()
            self._evidence_ready = trio.Event()
            pending, self._evidence_queue = self._evidence_queue, []
            for key, encoded, publish in pending:
                await trio.to_thread.run_sync(
                    self.ctx.store.put_value, EVIDENCE_NAMESPACE, key, encoded
                )
                if publish:
                    await self._publish_vote(gossip, topic, encoded)

    # -- parameter votes (docs/economics.md, "Votes") ------------------------------------

    def votes(self) -> dict[PeerId, ParameterVote]:
        """The newest verified vote of each voter this peer holds."""
        return {peer: vote for peer, (_, vote) in self._votes.items()}

    def take_vote(self, vote: ParameterVote) -> bool:
        """Verify and keep a vote; True if it is the one kept for its voter (then it is
        relayed; gossip itself drops repeats). Votes of a later epoch than the next one, and of
        peers outside the current committee, are dropped (a voter's newest vote is the one a
        settlement lists)."""
        epoch = int(vote.body.epoch)
        if epoch > self.ctx.committees.epoch + 1:
            return False
        entry = verify_parameter_vote(vote, self.network_id)
        if entry.peer_id not in self.ctx.committee:
            return False
        encoded = wire.encode(vote)
        known = self._votes.get(entry.peer_id)
        if known is None:
            newer = True
        else:
            known_epoch = int(known[1].body.epoch)
            newer = epoch > known_epoch or (epoch == known_epoch and encoded < known[0])
        if newer:
            self._votes[entry.peer_id] = (encoded, vote)
        for peer in [p for p in self._votes if p not in self.ctx.committee]:
            del self._votes[peer]
        return self._votes.get(entry.peer_id, (b"", None))[0] == encoded

    async def _vote_loop(self, gossip: Gossip, topic: str) -> None:
        """At start and at each epoch change: if this peer's vote (``peer.toml``) is not the
        one in force, sign it for the current epoch and publish it, and again part way through
        the epoch while it is still not in force. A vote in force is never sent again."""
        if self.options.vote_source is None:
            return
        while True:
            self._vote_wanted = trio.Event()
            encoded = await self._cast_vote(self.ctx.committees.epoch)
            if encoded is not None:
                await self._publish_vote(gossip, topic, encoded)
                seconds = self.ctx.genesis.epoch_duration_seconds
                with trio.move_on_after(seconds * self.options.vote_republish_fraction):
                    await self._vote_wanted.wait()
                if not self._vote_wanted.is_set():
                    await self._publish_vote(gossip, topic, encoded)
            await self._vote_wanted.wait()

    async def _cast_vote(self, epoch: int) -> bytes | None:
        source = self.options.vote_source
        assert source is not None
        try:
            settings = await trio.to_thread.run_sync(source)
        except WalrusError as error:
            logger.warning("vote settings unreadable, not voting error=%s", error)
            return None
        if settings is None:
            return None
        in_force = self.ledger.vote_in_force(self.ctx.peer_id)
        wanted = (
            settings.storage_price,
            settings.write_price,
            settings.capacity,
            settings.commission_bps,
        )
        if in_force is not None and _vote_values(in_force[0]) == wanted:
            return None  # in force already: nothing to send
        vote = sign_parameter_vote(
            self.ctx.identity,
            network_id=self.network_id,
            epoch=epoch,
            storage_price=settings.storage_price,
            write_price=settings.write_price,
            capacity=settings.capacity,
            commission_bps=settings.commission_bps,
        )
        self.take_vote(vote)
        logger.info(
            "vote cast epoch=%d storage_price=%d write_price=%d capacity=%d commission_bps=%d",
            epoch,
            settings.storage_price,
            settings.write_price,
            settings.capacity,
            settings.commission_bps,
        )
        return wire.encode(vote)

    async def _publish_vote(self, gossip: Gossip, topic: str, encoded: bytes) -> None:
        try:
            await gossip.publish(topic, encoded)
        except WalrusError as error:
            logger.info("vote gossip publish failed error=%s", error)

    async def _publish_gossip(self, gossip: Gossip, topic: str) -> None:
        budget = 800 * 1024
        while True:
            await self._announce_ready.wait()
            await trio.sleep(self.options.gossip_batch_seconds)
            self._announce_ready = trio.Event()
            pending, self._announce = self._announce, []
            while pending:
                batch: list[bytes] = []
                size = 0
                while (
                    pending
                    and len(batch) < MAX_CERTIFICATES_PER_MESSAGE
                    and size + len(pending[0]) <= budget
                ):
                    size += len(pending[0])
                    batch.append(pending.pop(0))
                try:
                    await gossip.publish(topic, wire.encode(CertificatesBatch(tuple(batch))))
                except WalrusError as error:
                    logger.info("orders gossip publish failed error=%s", error)

    # -- catch-up ------------------------------------------------------------------------

    def _others(self) -> list[PeerId]:
        others = [peer for peer in self.ctx.committee.peer_ids if peer != self.ctx.peer_id]
        random.shuffle(others)
        return others

    async def pull_from(self, source: PeerId, start: bytes | None = None) -> int:
        """Page through one source's listing from ``start``; returns how many were new here."""
        merged = 0
        for _page in range(self.options.catch_up_max_pages):
            reply = await self.caller.call(
                source,
                ListCertificatesRequest(start=start, limit=MAX_CERTIFICATES_PER_MESSAGE),
                ListCertificatesReply,
                timeout=self.options.request_timeout,
            )
            merged += await self.merge_encoded(reply.certificates, f"listing:{source[:12]}")
            if reply.next_start is None:
                break
            if start is not None and reply.next_start <= start:
                raise WireError("certificate listing did not advance")
            start = reply.next_start
        return merged

    async def catch_up(self, sources: int | None = None) -> int:
        """Read the listings of ``sources`` other members (in parallel, trying others when one
        fails); returns how many certificates were new here."""
        wanted = self.options.catch_up_sources if sources is None else sources
        others = self._others()
        merged = answered = 0
        while others and answered < wanted:
            batch, others = others[: wanted - answered], others[wanted - answered :]

            async def pull(source: PeerId) -> None:
                nonlocal merged, answered
                try:
                    merged += await self.pull_from(source)
                except WalrusError as error:
                    logger.info(
                        "orders catch-up source failed peer=%s reason=%s", source[:12], error.reason
                    )
                    return
                answered += 1

            async with trio.open_nursery() as nursery:
                for source in batch:
                    nursery.start_soon(pull, source)
        logger.info("orders catch-up done sources=%d merged=%d", answered, merged)
        return merged

    async def _catch_up_loop(self) -> None:
        if self.options.catch_up_on_start:
            await self.catch_up()
        self.caught_up.set()
        if self.options.catch_up_interval <= 0:
            return
        while True:
            await trio.sleep(self.options.catch_up_interval * random.uniform(0.8, 1.2))
            await self.catch_up(1)

    async def fill_gaps(self) -> int:
        """For accounts whose next order waits for an earlier one this peer never received, ask
        a member for the certificates from the account's next sequence on."""
        firsts: dict[bytes, int] = {}
        for account, sequence in self.ledger.waiting_orders():
            firsts.setdefault(account, sequence)
        gaps = [
            account
            for account, sequence in firsts.items()
            if sequence > self.ledger.next_sequence(account)
        ][: self.options.gap_accounts]
        merged = 0
        for account in gaps:
            start = order_key(account, self.ledger.next_sequence(account))
            for source in self._others()[:2]:
                try:
                    reply = await self.caller.call(
                        source,
                        ListCertificatesRequest(start=start, limit=MAX_CERTIFICATES_PER_MESSAGE),
                        ListCertificatesReply,
                        timeout=self.options.request_timeout,
                    )
                except WalrusError as error:
                    logger.info("gap fill failed peer=%s reason=%s", source[:12], error.reason)
                    continue
                merged += await self.merge_encoded(reply.certificates, f"gap:{source[:12]}")
                break
        return merged

    async def _gap_loop(self) -> None:
        if self.options.gap_interval <= 0:
            return
        while True:
            await trio.sleep(self.options.gap_interval)
            await self.fill_gaps()
