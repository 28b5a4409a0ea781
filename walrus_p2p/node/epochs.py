"""The epoch change service of a storage peer: agreement over direct links, records, catch-up.

The networking glue around :mod:`walrus_p2p.core.consensus` (``docs/epochs.md``, "Protocol glue"
and "Transport"). Per epoch e the service

- announces this peer's signed :class:`~walrus_p2p.core.records.Candidacy` for epoch e+1 on the
  gossip topic ``walrus-p2p/<network>/epochs`` once per epoch, a random moment after each change
  (it doubles as the liveness signal of peers that are not members yet);
- at ``genesis.epoch_start(e+1)`` starts the :class:`~walrus_p2p.core.consensus.EpochAgreement`
  of epoch e's committee, proposing :func:`walrus_p2p.core.epochs.propose_next` and prevoting only
  values that pass :func:`walrus_p2p.core.epochs.check_next`; its proposals and votes go
  directly to the other members (:mod:`walrus_p2p.node.epoch_links`, protocol
  ``/walrus-p2p/<network>/epochs/1.0.0``), its timeouts are trio timers that grow with the
  measured round trips and with the rounds the last change needed; nothing is sent again on a
  timer: a member that restarted or fell behind is sent what it lacks in the reply to its own
  next request, and the certified record goes out on gossip once per epoch (for peers outside
  the committee), by the first decider in proposer order that has not seen it there yet;
- on a decision (its own, a record on gossip, or a record fetched by sync) verifies the record
  against epoch e's committee, writes it to the store (namespace ``epoch-records``, key the
  8-byte epoch) *before* switching, then switches the peer's committee view -- and with it
  the shards the peer owns -- to epoch e+1.

Catch-up: :class:`~walrus_p2p.core.epochs.GetEpochRecordsRequest` on the storage protocol
returns stored records from an epoch on. On start the service reloads and re-verifies its stored
chain; if the genesis clock says it is behind, it pages the missing records from committee
members and verifies each against the committee before it, before the peer reports started
(bounded by ``initial_sync_timeout``, then it keeps trying in the background). Later it syncs
again when the schedule says a change is overdue or gossip shows a later epoch.

The gossip topic validator takes candidacies (their own signature, fresh) and the first record
of each epoch (checked against the committee before it); everything else is dropped and not
relayed. Catch-up requests back off exponentially while they bring nothing new.

Every proposal and vote this peer signs, and every proposal it receives for the running
agreement, is journaled in the store before it is sent or handled; a peer restarted in the middle
of an agreement restores it (``EpochAgreement.restore``) so it never signs twice for one round and
step, or sits the agreement out if the journal does not verify.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import blake3
import trio

from walrus_p2p.core import wire
from walrus_p2p.core.committee import Committee
from walrus_p2p.core.consensus import (
    EpochAgreement,
    Equivocation,
    Output,
    Proposal,
    Timeout,
    TimeoutPolicy,
    Vote,
)
from walrus_p2p.core.epochs import (
    INCARNATION_LENGTH,
    MAX_EPOCH_RECORD_SIZE,
    MAX_EPOCH_RECORDS_PER_REPLY,
    EpochMessagesReply,
    EpochMessagesRequest,
    GetEpochRecordsReply,
    GetEpochRecordsRequest,
    check_next,
    decode_epoch_records,
    propose_next,
)
from walrus_p2p.core.records import (
    Candidacy,
    EpochRecord,
    EpochValue,
    VoteKind,
    newer_candidacy,
)
from walrus_p2p.errors import RequestTimeoutError, VerificationError, WalrusError, WireError
from walrus_p2p.net.gossip import GossipMessage, Subscription
from walrus_p2p.net.names import protocol_id, topic
from walrus_p2p.net.rpc import HandlerLimits
from walrus_p2p.node.committee_view import CommitteeWriter
from walrus_p2p.node.context import PeerContext
from walrus_p2p.node.epoch_links import MAX_BATCH_BYTES, EpochLinks, take_batch
from walrus_p2p.node.peer_calls import PeerCaller
from walrus_p2p.types import Epoch, PeerId

logger = logging.getLogger(__name__)

EPOCHS_TOPIC = "epochs"
EPOCHS_PROTOCOL = "epochs"
"""Stream protocol of the direct consensus messages (its own concurrency, apart from slivers)."""
EPOCH_RECORDS_NAMESPACE = "epoch-records"
JOURNAL_NAMESPACE = "epoch-journal"
"""Write-ahead log of the running agreement: key = 8-byte epoch + 16-byte hash of the message."""
GOSSIP_TYPES = (Candidacy, EpochRecord)
DIRECT_TYPES = (Proposal, Vote, EpochRecord)
MAX_HINTS = 64
"""Origins of later-epoch hints kept between two syncs (``EpochService._hint``)."""
OUTBOX_SIZE = 4096
EARLY_MESSAGES_KEPT = 4096
"""Consensus messages of the agreement after this peer's current one, kept until it starts."""
EARLY_BYTES_KEPT = 8 << 20
"""Their encoded bytes, at most: their signers belong to a committee this peer does not know
yet, so they cannot be checked, and one proposal may be 256 KiB (4,096 of them were 1 GiB)."""
EARLY_STRANGER_BYTES_KEPT = 1 << 20
"""Of those, bytes sent by peers outside every committee this peer knows (a new member of the
next committee, or anyone with a fresh key): strangers cannot crowd out the members' messages."""
MAX_TIMEOUT_DELAY = 1.0
"""Seconds of measured round trip, at most, that timeouts and fallback waits grow with."""
GOSSIP_RECORD_EPOCHS_KEPT = 16


class SettlementHooks(Protocol):
    """What the epoch service asks the economy (:class:`walrus_p2p.node.economy.EconomyService`)."""

    async def prepare(self, committee: Committee) -> None:
        """Before the agreement that ends ``committee``'s epoch: load what proposing and
        checking its settlement read (the epoch's availability certificates)."""

    def propose(self, committee: Committee) -> bytes:
        """The encoded settlement of ``committee.epoch`` this peer proposes."""

    def accepts(self, committee: Committee, value: EpochValue) -> bool:
        """Whether the settlement in ``value`` is acceptable (core/settlements.py)."""

    def stake_after(self, settlement: bytes | None) -> dict[PeerId, int]:
        """The active stake per peer the next committee counts once ``settlement`` (encoded,
        from a value :meth:`accepts` took or :meth:`propose` made) is applied."""

    def voted_out(self, committee: Committee, settlement: bytes | None) -> set[PeerId]:
        """The peers the next committee must not include once ``settlement`` (of
        ``committee``'s epoch) is applied (docs/challenges.md, "Voting out")."""

    def record_applied(self, record: EpochRecord, previous: Committee) -> None:
        """A verified record of the chain became current; ``previous`` ended with it."""


@dataclass(frozen=True, slots=True)
class EpochOptions:
    """How a storage peer takes part in epoch changes.

    ``candidate``: announce a candidacy (genesis members and peers that want shards); ``weight``
    is the declared weight (genesis members keep their genesis weight regardless, see
    :func:`walrus_p2p.core.epochs.member_weight`). ``clock`` gives unix seconds (tests may skew
    it). ``announce_interval`` defaults to the epoch duration, at most 10 minutes (a renewal also
    goes out after every change).
    """

    enabled: bool = True
    candidate: bool = True
    weight: int = 1
    capacity: int = 1 << 40
    timeouts: TimeoutPolicy = field(default_factory=TimeoutPolicy)
    """The base timeouts; each agreement adds what it measured (``EpochService.timeouts_now``)."""
    announce_interval: float | None = None
    request_timeout: float = 10.0
    initial_sync_timeout: float = 20.0
    sync_grace: float = 8.0
    """Seconds past a scheduled epoch start after which the peer asks others for the record."""
    sync_backoff_max: float = 60.0
    """Longest wait between two catch-up attempts that brought nothing (it doubles from
    ``sync_grace``, jittered)."""
    record_announce_step: float = 0.5
    """A decided record goes on gossip after this many seconds times the peer's rank in the
    proposer order of the deciding round, unless gossip brought it first."""
    member_renewal_interval: float = 600.0
    """A committee member renews an unchanged candidacy this often (see ``_announce_loop``)."""
    announce_jitter: float = 2.0
    """The candidacy renewal after a change waits a random part of this (at most a quarter of
    the announce interval), so the members' renewals do not all go out in the same instant."""
    clock: Callable[[], float] = time.time


def record_key(epoch: int) -> bytes:
    return int(epoch).to_bytes(8, "big")


def journal_key(epoch: int, encoded: bytes) -> bytes:
    return record_key(epoch) + blake3.blake3(encoded).digest()[:16]


class EpochService:
    """Epoch agreement and epoch-record sync of one storage peer (``peer.epochs``).

    The only writer of the peer's :class:`~walrus_p2p.node.committee_view.CommitteeView`: it
    holds the view's one :class:`~walrus_p2p.node.committee_view.CommitteeWriter`.
    """

    def __init__(self, ctx: PeerContext, options: EpochOptions, writer: CommitteeWriter) -> None:
        self.ctx = ctx
        self._writer = writer
        self.options = options
        self.genesis = ctx.genesis
        self.network_id = ctx.genesis.network_id
        self.topic = topic(ctx.genesis.network_id_text, EPOCHS_TOPIC)
        self.protocol = protocol_id(ctx.genesis.network_id_text, EPOCHS_PROTOCOL)
        self.records: dict[int, EpochRecord] = {}
        self.candidacies: dict[PeerId, Candidacy] = {}
        self.agreement: EpochAgreement | None = None
        self.incarnation = secrets.token_bytes(INCARNATION_LENGTH)
        """Random per process: tells the other members when this peer restarted."""
        self.links: EpochLinks | None = None
        self._apply_lock = trio.Lock()
        self._sync_wanted = trio.Event()
        self._hinted: dict[PeerId, int] = {}
        self._heard: dict[PeerId, int] = {}
        self._started_at: float | None = None
        """When this service started (``options.clock``): a peer that has not watched a whole
        epoch yet does not judge which members are gone."""
        self._incarnations: dict[PeerId, bytes] = {}
        self._answered: dict[PeerId, tuple[int, int]] = {}
        self._fallback_answered: dict[PeerId, set[tuple[int, int, str]]] = {}
        """Per member, the (epoch, round, vote kind) of its fallback votes already answered."""
        self._early: list[Proposal | Vote] = []
        self._early_bytes = [0, 0]
        """Encoded bytes of ``_early``: in all, and sent by strangers."""
        self._relays: dict[tuple[int, VoteKind, int], _Relay] = {}
        self._gossip_records: set[int] = set()
        self._last_rounds = 0
        self.evidence: list[Equivocation] = []
        """Equivocations seen in finished agreements (two signed messages of one signer)."""
        self.restored = 0
        """Agreements resumed from the journal after a restart."""
        self.syncs = 0
        """Catch-up attempts (each asks one or two peers)."""
        self._send, self._receive = trio.open_memory_channel[bytes](OUTBOX_SIZE)
        self._timers: trio.Nursery | None = None
        self._nursery: trio.Nursery | None = None
        self.settlements: SettlementHooks | None = None
        """The economy's part of each epoch value (set by the peer when its genesis has an
        economy): what to propose, what to accept, and each new record (docs/economics.md,
        "Settlements in the epoch change"). None: values carry no settlement."""
        ctx.router.add(GetEpochRecordsRequest, self._serve_records)

    # -- state ------------------------------------------------------------------------------

    @property
    def current(self) -> Committee:
        return self.ctx.committees.current

    @property
    def epoch(self) -> int:
        return self.ctx.committees.epoch

    @property
    def synced(self) -> trio.Event:
        """Set once this service caught up with the network's epoch chain at start."""
        return self.ctx.committees.synced

    @property
    def changed(self) -> trio.Event:
        """Set (and replaced) whenever the committee changes; wait on it in tests."""
        return self.ctx.committees.changed

    def committee_of(self, epoch: int) -> Committee | None:
        """The committee of an epoch this peer knows (verified), else None."""
        return self.ctx.committees.committee_of(epoch)

    def chain(self) -> list[EpochRecord]:
        """The verified records of epochs 1..current, in order."""
        return [self.records[epoch] for epoch in range(1, self.epoch + 1)]

    def load(self) -> None:
        """Reload the stored chain, verifying it from genesis; stop at the first bad record."""
        stored = sorted(self.ctx.store.iter_values(EPOCH_RECORDS_NAMESPACE))
        for key, raw in stored:
            try:
                record = wire.decode(raw, EpochRecord)
                if int.from_bytes(key, "big") != record.epoch:
                    raise VerificationError("stored under another epoch")
                record.verify(self.current, self.network_id)
                self._check_start(record)
            except (WireError, VerificationError) as error:
                logger.warning("stored epoch record rejected key=%s error=%s", key.hex(), error)
                break
            # Runs in a worker thread: the economy hears of the reloaded records afterwards
            # (:meth:`_replay_settlements`, in the event loop).
            self._switch(record, notify=False)
        if self.epoch:
            logger.info("epoch chain reloaded epoch=%d", self.epoch)

    def _replay_settlements(self) -> None:
        """Give the economy every record of the reloaded chain, in order."""
        if self.settlements is None:
            return
        for record in self.chain():
            previous = self.committee_of(record.epoch - 1)
            if previous is not None:
                self.settlements.record_applied(record, previous)

    def _check_start(self, record: EpochRecord) -> None:
        previous = self.records.get(record.epoch - 1)
        if previous is not None and record.value.start_time <= previous.value.start_time:
            raise VerificationError(f"epoch record {record.epoch} does not start later")

    def _switch(self, record: EpochRecord, *, notify: bool = True) -> None:
        committee = record.committee
        previous = self.current
        self.records[int(record.epoch)] = record
        self._writer.switch(committee)
        if notify and self.settlements is not None:
            self.settlements.record_applied(record, previous)
        self._last_rounds = int(record.certificate.round)
        self.ctx.metrics.epoch_switched(
            int(record.epoch),
            int(record.certificate.round),
            sum(1 for peer in committee.peer_ids if committee.shards_of(peer)),
        )

    async def apply_record(self, record: EpochRecord, *, source: str) -> bool:
        """Verify a record for the next epoch, persist it, then switch. False if not applicable."""
        async with self._apply_lock:
            if record.epoch != self.epoch + 1:
                return False
            try:
                record.verify(self.current, self.network_id)
                self._check_start(record)
            except VerificationError as error:
                logger.warning("epoch record rejected epoch=%d error=%s", record.epoch, error)
                return False
            encoded = wire.encode(record)
            await trio.to_thread.run_sync(
                self.ctx.store.put_value,
                EPOCH_RECORDS_NAMESPACE,
                record_key(record.epoch),
                encoded,
            )
            before = self.current
            self._switch(record)
            if self.links is not None:
                # Members that have not acknowledged this peer's last messages get the record
                # instead: it decides their agreement at once.
                self.links.replace_pending(encoded)
            await trio.to_thread.run_sync(self._prune_journal, int(record.epoch))
            committee = record.committee
            logger.info(
                "epoch changed epoch=%d source=%s round=%d members=%d shards=%d->%d late=%.1fs",
                record.epoch,
                source,
                record.certificate.round,
                len(committee.members),
                len(before.shards_of(self.ctx.peer_id)),
                len(committee.shards_of(self.ctx.peer_id)),
                self.options.clock() - self.genesis.epoch_start(record.epoch),
            )
            return True

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        gossip = self.ctx.gossip
        host = self.ctx.host
        self._started_at = self.options.clock()
        await trio.to_thread.run_sync(self.load)
        self._replay_settlements()
        caller = PeerCaller(
            host,
            protocol=self.protocol,
            limits=self.ctx.limits,
            max_frame=MAX_DIRECT_FRAME,
            committee=lambda: self.current,
            discovery=self.ctx.discovery,
        )
        self.links = EpochLinks(
            caller,
            incarnation=self.incarnation,
            position=self._position,
            on_reply=self._on_reply,
            request_timeout=self.options.request_timeout,
        )
        host.set_handler(
            self.protocol,
            self._handle_direct,
            HandlerLimits(
                max_request=MAX_DIRECT_FRAME,
                max_reply=MAX_DIRECT_FRAME,
                read_timeout=self.options.request_timeout,
                handler_timeout=self.options.request_timeout * 3,
                max_concurrent=64,
                request_cap=self._direct_request_cap,
            ),
        )
        gossip.set_validator(self.topic, self._validate_gossip)
        subscription = await gossip.subscribe(self.topic)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.links.run)
            nursery.start_soon(self._publish_loop)
            nursery.start_soon(self._read_gossip, subscription)
            if self._behind_schedule(grace=0.0):
                with trio.move_on_after(self.options.initial_sync_timeout):
                    await self._initial_sync()
            first = await self._prepare_agreement()
            # Tell the committee this process is (back) here: members stop backing off their
            # links to it and answer with what it lost (docs/epochs.md, "Transport").
            self.links.greet(self._voters(first[0]))
            self._writer.mark_synced()
            task_status.started()
            nursery.start_soon(self._sync_loop)
            nursery.start_soon(self._watch_members)
            if self.options.candidate:
                nursery.start_soon(self._announce_loop)
            await self._epoch_loop(first)

    def _behind_schedule(self, *, grace: float) -> bool:
        """The clock says epoch e+1 should have started ``grace`` seconds ago."""
        return self.options.clock() >= self.genesis.epoch_start(self.epoch + 1) + grace

    def _position(self) -> tuple[int, int]:
        agreement = self.agreement
        if agreement is None:
            return self.epoch + 1, 0
        return int(agreement.epoch), int(agreement.round)

    def _delay(self) -> float:
        """The measured round trip to the members that timeouts and waits grow with, capped at
        ``MAX_TIMEOUT_DELAY``: on a saturated machine a request can take seconds (a dial to a
        restarted member, a starved event loop), and uncapped, 4 round trips made propose
        timeouts of 20 s, so every round with a dead proposer cost more than a short epoch."""
        if self.links is None:
            return 0.0
        return min(MAX_TIMEOUT_DELAY, self.links.delay())

    def timeouts_now(self) -> TimeoutPolicy:
        """The timeouts of the next agreement: the configured base, scaled up by half for each
        round (at most two) the last change needed, plus a few measured round trips to the
        members (each at most ``MAX_TIMEOUT_DELAY``). A slow machine or network thus gets
        longer rounds instead of more rounds (docs/epochs.md, "Transport")."""
        base = self.options.timeouts
        slow = 1.0 + 0.5 * min(self._last_rounds, 2)
        delay = self._delay()
        return TimeoutPolicy(
            propose=base.propose * slow + 4 * delay,
            prevote=base.prevote * slow + 2 * delay,
            precommit=base.precommit * slow + 2 * delay,
            increment=base.increment * slow + delay,
        )

    async def _prepare_agreement(self) -> tuple[EpochAgreement, trio.Event]:
        """The agreement for the next epoch, resumed from the journal if this peer voted in it
        before a restart; and the event that fires when the committee changes again."""
        changed = self.changed
        committee = self.current
        agreement = self._new_agreement(committee)
        journal = await trio.to_thread.run_sync(self._load_journal, int(agreement.epoch))
        if journal and agreement.signer is not None:
            try:
                agreement.restore(journal)
                self.restored += 1
                logger.info(
                    "epoch agreement restored epoch=%d messages=%d", agreement.epoch, len(journal)
                )
            except (VerificationError, ValueError) as error:
                # Never risk signing twice: sit this agreement out, adopt its record.
                logger.warning("epoch journal unusable, observing only error=%s", error)
                agreement = self._new_agreement(committee, observer=True)
        self.agreement = agreement
        self._relays = {}
        self._fallback_answered = {}
        early, self._early = self._early, []
        self._early_bytes = [0, 0]
        for message in early:
            if message.body.epoch == agreement.epoch:
                # Kept while this peer was still in the agreement before (it acknowledged them).
                agreement.handle(message, trio.current_time())
        return agreement, changed

    async def _epoch_loop(self, first: tuple[EpochAgreement, trio.Event]) -> None:
        prepared: tuple[EpochAgreement, trio.Event] | None = first
        while True:
            if prepared is None or prepared[1].is_set():
                prepared = await self._prepare_agreement()
            agreement, changed = prepared
            prepared = None
            async with trio.open_nursery() as nursery:
                self._timers = nursery
                nursery.start_soon(self._drive, agreement)
                await changed.wait()
                # Forget the nursery before leaving it: once the body ends trio closes it to new
                # tasks while its children still finish, and a reply arriving on a link then
                # (``_on_reply`` -> ``_process`` -> ``_route``) must not start a task in it (a
                # restarted peer died of "Nursery is closed to new arrivals" under churn).
                self._timers = None
                nursery.cancel_scope.cancel()
            for item in agreement.evidence:
                signer = (
                    item.first.proposer if isinstance(item.first, Proposal) else item.first.signer
                )
                logger.warning("equivocation evidence epoch=%d signer=%s", agreement.epoch, signer)
            self.evidence.extend(agreement.evidence)

    def _new_agreement(self, committee: Committee, *, observer: bool = False) -> EpochAgreement:
        voter = not observer and bool(committee.shards_of(self.ctx.peer_id))
        signer = self.ctx.identity if voter else None
        return EpochAgreement(
            network_id=self.network_id,
            committee=committee,
            signer=signer,
            own_value=None,
            validate=lambda value: self._validate_value(committee, value),
            timeouts=self.timeouts_now(),
        )

    def _validate_value(self, committee: Committee, value: EpochValue) -> bool:
        stake = None
        excluded: set[PeerId] = set()
        if self.settlements is None:
            if value.settlement is not None:
                return False
        elif not self.settlements.accepts(committee, value):
            return False
        else:
            stake = self.settlements.stake_after(value.settlement)
            excluded = self.settlements.voted_out(committee, value.settlement)
        return check_next(self.genesis, committee, self.candidacies, value, stake, excluded)

    async def _drive(self, agreement: EpochAgreement) -> None:
        """Start the agreement at the scheduled end of the epoch."""
        delay = self.genesis.epoch_start(agreement.epoch) - self.options.clock()
        if delay > 0:
            await trio.sleep(delay)
        if self.settlements is not None:
            await self.settlements.prepare(agreement.committee)
        if agreement.signer is not None:
            settlement = stake = None
            excluded: set[PeerId] = set()
            if self.settlements is not None:
                settlement = self.settlements.propose(agreement.committee)
                stake = self.settlements.stake_after(settlement)
                excluded = self.settlements.voted_out(agreement.committee, settlement)
            value = propose_next(
                self.genesis,
                agreement.committee,
                self.candidacies,
                self._alive(agreement),
                stake,
                excluded,
            )
            agreement.own_value = dataclasses.replace(value, settlement=settlement)
        logger.info(
            "epoch agreement started epoch=%d voter=%s timeouts=%s",
            agreement.epoch,
            agreement.signer is not None,
            agreement.timeouts,
        )
        await self._process(agreement, agreement.start(trio.current_time()))

    def _voters(self, agreement: EpochAgreement) -> list[PeerId]:
        committee = agreement.committee
        return [
            peer
            for peer in committee.peer_ids
            if peer != self.ctx.peer_id and committee.shards_of(peer)
        ]

    async def _process(self, agreement: EpochAgreement, output: Output) -> None:
        if agreement is not self.agreement:
            return
        own = [m for m in output.messages if isinstance(m, Proposal | Vote)]
        if own:
            # Persist before sending: a restarted peer must not sign a second, different message
            # for a round and step it already signed in (docs/epochs.md, restore).
            await self._journal(int(agreement.epoch), own)
            self._route(agreement, own)
        timers = self._timers
        for timeout in output.timeouts:
            if timers is not None:
                timers.start_soon(self._timer, agreement, timeout)
        if output.decision is not None:
            record = output.decision
            if await self.apply_record(record, source="agreement") and self._nursery is not None:
                self._nursery.start_soon(self._announce_record, agreement, record)

    def _route(self, agreement: EpochAgreement, own: list[Proposal | Vote]) -> None:
        """Send what this peer signed: a proposal to every member; a vote to the proposer of
        its round, which relays the votes of its round to everyone in batches, or, when this
        peer is that proposer, into its own relay (docs/epochs.md, "Transport"). A vote the
        proposer's relay does not answer in time goes to everyone (:meth:`_fallback`)."""
        links = self.links
        if links is None:
            return
        proposals = [wire.encode(m) for m in own if isinstance(m, Proposal)]
        links.send(self._voters(agreement), proposals)
        for vote in (m for m in own if isinstance(m, Vote)):
            proposer = agreement.proposer(vote.round)
            if proposer == self.ctx.peer_id:
                self._relay_vote(agreement, vote)
            else:
                links.send([proposer], [wire.encode(vote)])
                if self._timers is not None:
                    self._timers.start_soon(self._fallback, agreement, vote)

    def _relay_window(self) -> float:
        delay = self._delay()
        return min(1.0, max(0.05, 3 * delay))

    def _relay_vote(self, agreement: EpochAgreement, vote: Vote) -> None:
        """Collect a counted vote of a round this peer proposes in; relay in batches: at once
        when the step's votes reach a quorum, else after a short window."""
        key = (int(agreement.epoch), vote.kind, int(vote.round))
        relay = self._relays.get(key)
        if relay is None:
            relay = self._relays[key] = _Relay()
        encoded = wire.encode(vote)
        if encoded in relay.seen:
            return
        relay.seen.add(encoded)
        relay.pending.append(encoded)
        if agreement.has_quorum_of(vote.kind, vote.round):
            relay.ready.set()
        if not relay.scheduled and self._timers is not None:
            relay.scheduled = True
            self._timers.start_soon(self._flush_relay, agreement, relay)

    async def _flush_relay(self, agreement: EpochAgreement, relay: _Relay) -> None:
        with trio.move_on_after(self._relay_window()):
            await relay.ready.wait()
        relay.scheduled = False
        relay.ready = trio.Event()
        batch, relay.pending = relay.pending, []
        if batch and self.links is not None and agreement is self.agreement:
            self.links.send(self._voters(agreement), batch)

    async def _fallback(self, agreement: EpochAgreement, vote: Vote) -> None:
        """Evidence that the proposer's relay is missing (a crashed or slow proposer): the
        votes of this step do not reach a quorum here in time. Then this peer's own messages of
        the round go to every member directly, as in plain Tendermint."""
        delay = self._delay()
        await trio.sleep(max(1.0, 4 * delay + self._relay_window()))
        if (
            agreement is not self.agreement
            or agreement.decision is not None
            or agreement.has_quorum_of(vote.kind, vote.round)
            or self.links is None
        ):
            return
        own = [
            wire.encode(m)
            for m in agreement.rebroadcast()
            if isinstance(m, Proposal | Vote) and m.round == vote.round
        ]
        logger.info(
            "epoch relay missing epoch=%d round=%d kind=%s: sending to every member",
            agreement.epoch,
            vote.round,
            vote.kind.name.lower(),
        )
        self.links.send(self._voters(agreement), own)

    async def _timer(self, agreement: EpochAgreement, timeout: Timeout) -> None:
        await trio.sleep_until(timeout.deadline)
        await self._process(agreement, agreement.on_timeout(timeout, trio.current_time()))

    async def _announce_record(self, agreement: EpochAgreement, record: EpochRecord) -> None:
        """Put a record this peer decided on gossip, for the peers outside the committee, unless
        a peer ranked before it in the deciding round's proposer order did so first."""
        order = agreement.proposers
        deciding = int(record.certificate.round) % len(order)
        rotated = order[deciding:] + order[:deciding]
        rank = rotated.index(self.ctx.peer_id) if self.ctx.peer_id in rotated else len(order)
        await trio.sleep(rank * self.options.record_announce_step + random.uniform(0, 0.25))
        if int(record.epoch) not in self._gossip_records:
            self._queue(record)

    # -- direct messages ---------------------------------------------------------------------

    def _direct_request_cap(self, head: bytes) -> int:
        return wire.max_size_for_head(head, EpochMessagesRequest, limits=self.ctx.limits)

    async def _handle_direct(self, payload: bytes | bytearray, remote: PeerId) -> bytes:
        request = wire.decode(payload, EpochMessagesRequest, limits=self.ctx.limits)
        self.ctx.router.check_rate(remote, "EpochMessagesRequest")
        reply = await self.serve_messages(request, remote)
        return wire.encode(reply, limits=self.ctx.limits)

    async def serve_messages(
        self, request: EpochMessagesRequest, remote: PeerId
    ) -> EpochMessagesReply:
        """Take a member's consensus messages; answer with what it evidently lacks."""
        known = any(remote in committee for committee in self.ctx.committees.known())
        if not known and int(request.epoch) <= self.epoch + 1:
            raise WalrusError(
                f"peer={remote[:12]} is not a member of a committee this peer knows",
                reason="NOT_A_MEMBER",
            )
        ours, _round = self._position()
        if int(request.epoch) > ours:
            self._hint(remote, int(request.epoch) - 1)
        if known:
            # Per-remote state is kept for members only: a stranger claiming a later epoch (a
            # member of a committee this peer does not know yet, or anyone with a fresh key)
            # leaves its hint and nothing else (docs/epochs.md, "Load shedding").
            self._heard[remote] = self.epoch
            if self.links is not None:
                self.links.revive(remote)
        fell_back: set[tuple[int, int, str]] = set()
        for raw in request.messages:
            try:
                message = wire.decode(raw, DIRECT_TYPES)
            except WireError as error:
                logger.info("epoch message malformed peer=%s error=%s", remote[:12], error)
                continue
            if self._is_fallback(message, remote):
                assert isinstance(message, Vote)
                fell_back.add((int(message.body.epoch), int(message.round), message.kind.name))
            await self._take(message, source=remote)
        evidence = self._evidence_for(remote, request, fell_back=fell_back) if known else ()
        epoch, round_ = self._position()
        return EpochMessagesReply(epoch=Epoch(epoch), round=round_, messages=evidence)

    async def _on_reply(self, remote: PeerId, reply: EpochMessagesReply) -> None:
        ours, _round = self._position()
        if int(reply.epoch) > ours:
            self._hint(remote, int(reply.epoch) - 1)
        for raw in reply.messages:
            try:
                message = wire.decode(raw, DIRECT_TYPES)
            except WireError as error:
                logger.info("epoch reply malformed peer=%s error=%s", remote[:12], error)
                continue
            await self._take(message, source=remote)

    async def _take(self, message: Proposal | Vote | EpochRecord, *, source: PeerId) -> None:
        if isinstance(message, EpochRecord):
            if int(message.epoch) > self.epoch + 1:
                self._hint(source, int(message.epoch))
            else:
                await self.apply_record(message, source=f"direct:{source[:12]}")
            return
        agreement = self.agreement
        epoch = int(message.body.epoch)
        if agreement is None or message.body.network_id != self.network_id:
            return
        if epoch == agreement.epoch:
            if isinstance(message, Proposal) and agreement.signer is not None:
                # The proposal of a value this peer may precommit (and so lock on).
                await self._journal(epoch, [message])
            await self._process(agreement, agreement.handle(message, trio.current_time()))
            if (
                isinstance(message, Vote)
                and agreement.proposer(message.round) == self.ctx.peer_id
                and agreement.signer is not None
                and agreement.counted(message)
            ):
                self._relay_vote(agreement, message)
        elif epoch == agreement.epoch + 1:
            # The next agreement has begun elsewhere while this peer has not switched yet: the
            # sender counts these as delivered, so they are kept for when it does.
            self._keep_early(message, source)
            self._hint(source, epoch - 1)
        elif epoch > agreement.epoch + 1:
            self._hint(source, epoch - 1)

    def _keep_early(self, message: Proposal | Vote, source: PeerId) -> None:
        """Keep a message of the next agreement within the count and byte bounds (docs/epochs.md,
        "Load shedding")."""
        size = len(wire.encode(message))
        stranger = not any(source in committee for committee in self.ctx.committees.known())
        total, from_strangers = self._early_bytes
        if (
            len(self._early) >= EARLY_MESSAGES_KEPT
            or total + size > EARLY_BYTES_KEPT
            or (stranger and from_strangers + size > EARLY_STRANGER_BYTES_KEPT)
        ):
            return
        self._early.append(message)
        self._early_bytes = [total + size, from_strangers + (size if stranger else 0)]

    def _is_fallback(self, message: Proposal | Vote | EpochRecord, remote: PeerId) -> bool:
        """A vote sent by its own signer to this peer, neither of them the proposer of its round:
        the signer fell back to all-to-all (:meth:`_fallback`) because the relay did not reach
        it, so it probably lacks this peer's vote of that round too."""
        agreement = self.agreement
        return (
            isinstance(message, Vote)
            and agreement is not None
            and message.signer == remote
            and int(message.body.epoch) == agreement.epoch
            and agreement.proposer(message.round) not in (remote, self.ctx.peer_id)
        )

    def _evidence_for(
        self,
        remote: PeerId,
        request: EpochMessagesRequest,
        *,
        fell_back: set[tuple[int, int, str]] | None = None,
    ) -> tuple[bytes, ...]:
        """What ``remote`` evidently lacks, for the reply to its request:

        - the record of the epoch it is still agreeing on, if this peer has it;
        - after it restarted (a new incarnation), when it greets (a request without
          messages: its process just started), when it is in an earlier round of the same
          agreement, or when it fell back to sending a vote of its own to everyone
          (``fell_back``: (epoch, round, kind) of such votes): this peer's own messages of the
          agreement and its valid value's polka (``EpochAgreement.rebroadcast``); greetings
          and earlier rounds once per round of this peer, fallbacks once per step.
        """
        asked = int(request.epoch)
        if asked <= self.epoch:
            record = self.records.get(asked)
            return () if record is None else (wire.encode(record),)
        agreement = self.agreement
        previous = self._incarnations.get(remote)
        self._incarnations[remote] = request.incarnation
        if agreement is None or asked != agreement.epoch or agreement.signer is None:
            return ()
        restarted = previous is not None and previous != request.incarnation
        position = (int(agreement.epoch), int(agreement.round))
        fresh = self._answered.get(remote) != position
        behind = request.round < agreement.round and fresh
        # A request without messages is the greeting of a process that just started.
        greeting = not request.messages and fresh
        # A member that fell back to sending its votes to everyone lacks the relay, and so
        # this peer's votes: a peer that already sees a quorum does not fall back itself, and
        # without this answer the members short of its vote would wait for it forever.
        answered_steps = self._fallback_answered.setdefault(remote, set())
        fallback = fell_back is not None and not fell_back <= answered_steps
        if not (restarted or behind or greeting or fallback) or not agreement.started:
            return ()
        self._answered[remote] = position
        answered_steps |= fell_back or set()
        # The newest first (own messages of the current round, then the polka, then older), as
        # many as fit one reply.
        encoded = [wire.encode(message) for message in reversed(agreement.rebroadcast())]
        return tuple(take_batch(encoded))

    # -- journal ----------------------------------------------------------------------------

    async def _journal(self, epoch: int, messages: list[Proposal | Vote]) -> None:
        def write() -> None:
            for message in messages:
                encoded = wire.encode(message)
                key = journal_key(epoch, encoded)
                if self.ctx.store.get_value(JOURNAL_NAMESPACE, key) is None:
                    self.ctx.store.put_value(JOURNAL_NAMESPACE, key, encoded)

        await trio.to_thread.run_sync(write)

    def _load_journal(self, epoch: int) -> list[Proposal | Vote]:
        prefix = record_key(epoch)
        messages: list[Proposal | Vote] = []
        for key, raw in self.ctx.store.iter_values(JOURNAL_NAMESPACE):
            if key.startswith(prefix):
                try:
                    messages.append(wire.decode(raw, (Proposal, Vote)))
                except WireError as error:
                    logger.warning("epoch journal entry unreadable error=%s", error)
        return messages

    def _prune_journal(self, epoch: int) -> None:
        """Forget the journals of agreements up to ``epoch`` (decided: nothing to resume)."""
        for key, _raw in self.ctx.store.iter_values(JOURNAL_NAMESPACE):
            if int.from_bytes(key[:8], "big") <= epoch:
                self.ctx.store.delete_value(JOURNAL_NAMESPACE, key)

    # -- gossip -----------------------------------------------------------------------------

    def _queue(self, message: wire.Message) -> None:
        try:
            self._send.send_nowait(wire.encode(message))
        except trio.WouldBlock:
            logger.warning("epoch gossip outbox full: message dropped")

    async def _publish_loop(self) -> None:
        gossip = self.ctx.gossip
        async for data in self._receive:
            for _attempt in range(5):
                try:
                    await gossip.publish(self.topic, data)
                    break
                except WalrusError as error:
                    if error.reason != "RATE_LIMITED":
                        logger.info("epoch gossip publish failed error=%s", error)
                        break
                    await trio.sleep(0.2)

    def _validate_gossip(self, message: GossipMessage) -> bool:
        """Decode and check signatures against what this peer knows; hint a sync when behind."""
        try:
            accepted = self._check_gossip(message)
            if accepted:
                self._heard[message.origin] = self.epoch
            return accepted
        except (WireError, VerificationError, KeyError) as error:
            logger.debug("epoch gossip rejected origin=%s error=%s", message.origin[:12], error)
            return False

    def _check_gossip(self, message: GossipMessage) -> bool:
        decoded = wire.decode(message.data, GOSSIP_TYPES)
        if isinstance(decoded, Candidacy):
            decoded.verify(self.network_id)
            return self.epoch <= decoded.body.epoch <= self.epoch + 2
        epoch = int(decoded.epoch)
        if epoch > self.epoch + 1:
            self._hint(message.origin, epoch)
            return False
        # One record per epoch is relayed: deciders may each publish one (with different
        # precommit sets), and any one of them is enough for everyone. The record that just
        # switched this peer (epoch == e) is still relayed once: peers outside the committee
        # need it, and the decider's own announcement comes after its switch.
        # This peer's own announcement is checked like any other (the validator runs on local
        # publishes, twice) but is not what makes it drop later copies.
        own = message.origin == self.ctx.peer_id
        previous = self.ctx.committees.committee_of(epoch - 1)
        if epoch < self.epoch or previous is None or (epoch in self._gossip_records and not own):
            return False
        decoded.verify(previous, self.network_id)
        self._gossip_records.add(epoch)
        while len(self._gossip_records) > GOSSIP_RECORD_EPOCHS_KEPT:
            self._gossip_records.discard(min(self._gossip_records))
        return True

    def _alive(self, agreement: EpochAgreement) -> set[PeerId]:
        """Members heard from during this epoch besides renewals: connected now or at one of the
        checks of ``_watch_members``, or the origin of a valid epochs-topic message or direct
        consensus request while this peer was in the epoch."""
        host = self.ctx.host
        started = self._started_at
        watched = self.options.clock() - started if started is not None else 0.0
        if watched < self.genesis.epoch_duration_seconds:
            # Restarted during this epoch: it cannot tell a gone member from one it has not
            # heard yet, so it keeps them all (a proposer that just restarted would otherwise
            # drop every member it has not reconnected to, and move their shards).
            return set(agreement.committee.peer_ids) | {self.ctx.peer_id}
        previous = int(agreement.epoch) - 1
        alive = {peer for peer, epoch in self._heard.items() if epoch >= previous}
        alive |= {peer for peer in agreement.committee.peer_ids if host.is_connected(peer)}
        return alive | {self.ctx.peer_id}

    async def _watch_members(self) -> None:
        """Note every few seconds which members are connected: a member seen at any time
        during the epoch counts as alive at the change (``_alive``), so a member restarting just
        then keeps its shards instead of having them moved away for one epoch."""
        host = self.ctx.host
        pause = max(1.0, min(30.0, self.genesis.epoch_duration_seconds / 6))
        while True:
            connected = set(host.connected_peers())
            for member in self.current.peer_ids:
                if member in connected:
                    self._heard[member] = self.epoch
            await trio.sleep(pause)

    def _hint(self, origin: PeerId, epoch: int) -> None:
        """``origin`` showed ``epoch``: sync soon, asking it first. At most
        :data:`MAX_HINTS` origins are kept until the next sync (the highest epochs): strangers
        with fresh keys can send hints faster than a sync to unreachable origins ends."""
        if not origin or origin == self.ctx.peer_id:
            return
        if origin not in self._hinted and len(self._hinted) >= MAX_HINTS:
            lowest = min(self._hinted, key=self._hinted.__getitem__)
            if self._hinted[lowest] >= epoch:
                self._sync_wanted.set()
                return
            del self._hinted[lowest]
        self._hinted[origin] = max(epoch, self._hinted.get(origin, 0))
        self._sync_wanted.set()

    async def _read_gossip(self, subscription: Subscription) -> None:
        await subscription.handle_each(self._apply_gossip, what="epoch records")

    async def _apply_gossip(self, message: GossipMessage) -> None:
        decoded = wire.decode(message.data, GOSSIP_TYPES)
        if isinstance(decoded, Candidacy):
            self._learn_candidacy(decoded)
        else:
            await self.apply_record(decoded, source="gossip")

    def _learn_candidacy(self, candidacy: Candidacy) -> None:
        """Keep the newest verified candidacy of each peer (the validator verified it)."""
        peer_id = candidacy.peer_id
        known = self.candidacies.get(peer_id)
        self.candidacies[peer_id] = (
            candidacy if known is None else newer_candidacy(known, candidacy)
        )

    def own_candidacy(self) -> Candidacy:
        host = self.ctx.host
        addresses = tuple(host.listen_addrs)
        if self.ctx.announce_addrs:
            addresses = tuple(self.ctx.announce_addrs)
        return Candidacy.create(
            self.ctx.identity,
            network_id=self.network_id,
            epoch=self.epoch + 1,
            addresses=addresses[:8],
            weight=self.options.weight,
            capacity=self.options.capacity,
        )

    def _announce_interval(self) -> float:
        if self.options.announce_interval is not None:
            return self.options.announce_interval
        return max(1.0, min(float(self.genesis.epoch_duration_seconds), 600.0))

    async def _announce_loop(self) -> None:
        """Announce the candidacy at start; then a peer outside the committee renews it a random
        moment after each change (and every announce interval), while a member renews only when
        what it announces changed or ``member_renewal_interval`` passed: during the epoch the
        others see it alive through its connection and its consensus messages
        (``propose_next(also_alive=...)``), so per-epoch renewals of every member would only
        cost a gossip flood per member and change."""
        first = True
        last: tuple[tuple[str, ...], float] | None = None
        while True:
            changed = self.changed
            interval = self._announce_interval()
            if not first:
                # After a change every candidate renews at once; spread them out a little.
                await trio.sleep(random.uniform(0, min(self.options.announce_jitter, interval / 4)))
            first = False
            candidacy = self.own_candidacy()
            member = bool(self.current.shards_of(self.ctx.peer_id))
            now = trio.current_time()
            content = tuple(candidacy.body.addresses)
            if (
                not member
                or last is None
                or last[0] != content
                or now - last[1] >= self.options.member_renewal_interval
            ):
                self._learn_candidacy(candidacy)
                self._queue(candidacy)
                last = (content, now)
            with trio.move_on_after(interval):
                await changed.wait()

    # -- sync -------------------------------------------------------------------------------

    async def _serve_records(
        self, request: GetEpochRecordsRequest, remote: PeerId
    ) -> GetEpochRecordsReply:
        start = max(1, int(request.from_epoch))
        end = min(self.epoch, start + request.limit - 1)
        encoded = tuple(wire.encode(self.records[epoch]) for epoch in range(start, end + 1))
        return GetEpochRecordsReply(records=encoded, latest_epoch=Epoch(self.epoch))

    async def _sync_loop(self) -> None:
        """Catch up when another peer showed a later epoch, or when the schedule says a change
        is overdue. While attempts bring nothing (a slow change: nobody has the record yet),
        the wait between them doubles from ``sync_grace`` up to ``sync_backoff_max``."""
        fruitless = 0
        while True:
            wanted = self._sync_wanted
            wait = sync_wait(fruitless, self.options.sync_grace, self.options.sync_backoff_max)
            with trio.move_on_after(wait * random.uniform(0.75, 1.25)):
                await wanted.wait()
            hinted = wanted.is_set()
            if hinted:
                self._sync_wanted = trio.Event()
            if not (hinted or self._behind_schedule(grace=self.options.sync_grace)):
                fruitless = 0
                continue
            before = self.epoch
            await self.sync(max_sources=2 if hinted else 1)
            fruitless = 0 if self.epoch > before else fruitless + 1
            # At most one attempt a second, however many hints arrive.
            await trio.sleep(1.0)

    def _sources(self) -> list[PeerId]:
        """Peers to ask: those that showed a later epoch first, then random members."""
        hinted = sorted(
            (peer for peer, epoch in self._hinted.items() if epoch > self.epoch),
            key=lambda peer: -self._hinted[peer],
        )
        self._hinted.clear()
        members = [m for m in self.current.peer_ids if m != self.ctx.peer_id and m not in hinted]
        random.shuffle(members)
        return hinted + members

    async def _initial_sync(self) -> None:
        """Catch up before reporting started. Sources are asked until one answers (two that
        answer, while still behind): a restarted peer's first calls often meet the others'
        connections to its previous process, which fail at once ("handshake read failed"),
        and asking only two members then left it an epoch behind (seen in the fresh-clone CI,
        ``test_restarted_peer_catches_up_after_missing_two_epochs``). While every source
        fails, the round is repeated twice a second (bounded by ``initial_sync_timeout``)."""
        while True:
            answered = await self._sync_round(max_answers=2, grace=0.0)
            if answered or not self._behind_schedule(grace=0.0):
                return
            await trio.sleep(0.5)

    async def sync(self, *, max_sources: int = 2) -> int:
        """Fetch and apply the records this peer lacks; returns how many were applied."""
        applied = 0
        self.syncs += 1
        for source in self._sources()[:max_sources]:
            try:
                applied += await self._sync_from(source)
            except WalrusError as error:
                logger.info("epoch sync failed peer=%s error=%s", source[:12], error)
                continue
            if not self._behind_schedule(grace=self.options.sync_grace):
                break
        return applied

    async def _sync_round(self, *, max_answers: int, grace: float) -> int:
        """Ask members in turn until ``max_answers`` answered or this peer is on schedule
        (``grace``); returns how many answered."""
        self.syncs += 1
        answered = 0
        for source in self._sources():
            try:
                await self._sync_from(source)
            except WalrusError as error:
                logger.info("epoch sync failed peer=%s error=%s", source[:12], error)
                continue
            answered += 1
            if answered >= max_answers or not self._behind_schedule(grace=grace):
                break
        return answered

    async def _sync_from(self, source: PeerId) -> int:
        applied = 0
        while True:
            request = GetEpochRecordsRequest(
                from_epoch=Epoch(self.epoch + 1), limit=MAX_EPOCH_RECORDS_PER_REPLY
            )
            reply = await self._call(source, request)
            records = decode_epoch_records(reply.records)
            progress = False
            for record in records:
                if record.epoch <= self.epoch:
                    # Applied meanwhile from gossip or a direct reply: not a failure.
                    progress = True
                    continue
                if await self.apply_record(record, source=f"sync:{source[:12]}"):
                    applied += 1
                    progress = True
                else:
                    break
            if not progress or reply.latest_epoch <= self.epoch:
                return applied

    def _addresses_of(self, peer_id: PeerId) -> list[str]:
        for committee in self.ctx.committees.known():
            if peer_id in committee:
                return list(committee.member(peer_id).addresses)
        candidacy = self.candidacies.get(peer_id)
        return list(candidacy.body.addresses) if candidacy is not None else []

    async def _call(self, peer_id: PeerId, request: GetEpochRecordsRequest) -> GetEpochRecordsReply:
        host = self.ctx.host
        timeout = self.options.request_timeout
        reply: bytes | bytearray | None = None
        with trio.move_on_after(timeout):
            if not host.is_connected(peer_id):
                await host.connect(peer_id, self._addresses_of(peer_id), timeout=timeout)
            reply = await host.request(
                peer_id,
                self.ctx.protocol,
                wire.encode(request),
                timeout=timeout,
                max_reply=self.ctx.max_frame,
            )
        if reply is None:
            raise RequestTimeoutError(f"epoch sync from peer={peer_id[:12]} timed out")
        return wire.decode(reply, GetEpochRecordsReply)


@dataclass
class _Relay:
    """The votes of one step that this peer, as the round's proposer, relays to everyone."""

    pending: list[bytes] = field(default_factory=list)
    seen: set[bytes] = field(default_factory=set)
    ready: trio.Event = field(default_factory=trio.Event)
    scheduled: bool = False


def sync_wait(fruitless: int, grace: float, backoff_max: float) -> float:
    """The wait before the next catch-up attempt after ``fruitless`` attempts that brought
    nothing: ``grace`` doubled per attempt, at most ``backoff_max``. The exponent is capped: a
    peer whose syncs stay fruitless for long (1,024 attempts: hours at the cap) overflowed a
    float and its sync loop died with the peer (found by the fuzzing campaign, where strangers'
    hints drive the attempts; docs/testing.md, "Fuzzing")."""
    return min(backoff_max, grace * 2.0 ** min(fruitless, 60))


MAX_DIRECT_FRAME = MAX_BATCH_BYTES + 2 * MAX_EPOCH_RECORD_SIZE
"""Largest direct request or reply: one batch (a batch holds at least one message, at most
one record's size)."""
