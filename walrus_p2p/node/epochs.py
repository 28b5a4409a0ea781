"""The epoch change service of a storage peer: agreement over gossip, records on disk, catch-up.

Owner: issue 4's networking glue around :mod:`walrus_p2p.core.consensus` (``docs/epochs.md``,
"Protocol glue"). Per epoch e the service

- announces this peer's signed :class:`~walrus_p2p.core.records.Candidacy` for epoch e+1 on the
  gossip topic ``walrus-p2p/<network>/epochs`` a few times per epoch (it doubles as the liveness
  signal: a member no one heard a renewed candidacy from during e is dropped at e+1);
- at ``genesis.epoch_start(e+1)`` starts the :class:`~walrus_p2p.core.consensus.EpochAgreement`
  of epoch e's committee, proposing :func:`walrus_p2p.core.epochs.propose_next` and prevoting only
  values that pass :func:`walrus_p2p.core.epochs.check_next`; its proposals, votes and the final
  record travel on the same topic, its timeouts are trio timers, and ``rebroadcast()`` is
  published every ``rebroadcast_interval`` until the decision;
- on a decision (its own, a record on gossip, or a record fetched by sync) verifies the record
  against epoch e's committee, writes it to the store (namespace ``epoch-records``, key the
  8-byte epoch) *before* switching, then switches ``peer.committee`` -- and with it the shards the
  peer owns -- to epoch e+1.

Catch-up: :class:`~walrus_p2p.core.epochs.GetEpochRecordsRequest` on the storage protocol
returns stored records from an epoch on. On start the service reloads and re-verifies its stored
chain; if the genesis clock says it is behind, it pages the missing records from committee
members and verifies each against the committee before it, before the peer reports started
(bounded by ``initial_sync_timeout``, then it keeps trying in the background). Later it syncs
again when the schedule says a change is overdue or gossip shows a later epoch.

The gossip topic validator decodes, then checks what can be checked against the current
committee (signatures of proposals and votes for epoch e+1, records for e+1, candidacies' own
signatures and freshness); everything else is dropped and not relayed.

Every proposal and vote this peer signs, and every proposal it receives for the running
agreement, is journaled in the store before it is sent or handled; a peer restarted in the middle
of an agreement restores it (``EpochAgreement.restore``) so it never signs twice for one round and
step, or sits the agreement out if the journal does not verify.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
    MAX_EPOCH_RECORDS_PER_REPLY,
    GetEpochRecordsReply,
    GetEpochRecordsRequest,
    check_next,
    decode_epoch_records,
    propose_next,
)
from walrus_p2p.core.identity import PublicKey
from walrus_p2p.core.records import (
    PROPOSAL_CONTEXT,
    Candidacy,
    EpochRecord,
    newer_candidacy,
    vote_context,
)
from walrus_p2p.errors import RequestTimeoutError, VerificationError, WalrusError, WireError
from walrus_p2p.net.gossip import GossipMessage, Subscription
from walrus_p2p.net.names import topic
from walrus_p2p.types import Epoch, PeerId

if TYPE_CHECKING:
    from walrus_p2p.node.peer import StoragePeerService

logger = logging.getLogger(__name__)

EPOCHS_TOPIC = "epochs"
EPOCH_RECORDS_NAMESPACE = "epoch-records"
JOURNAL_NAMESPACE = "epoch-journal"
"""Write-ahead log of the running agreement: key = 8-byte epoch + 16-byte hash of the message."""
GOSSIP_TYPES = (Proposal, Vote, EpochRecord, Candidacy)
OUTBOX_SIZE = 4096


@dataclass(frozen=True, slots=True)
class EpochOptions:
    """How a storage peer takes part in epoch changes.

    ``candidate``: announce a candidacy (genesis members and peers that want shards); ``weight``
    is the declared weight (genesis members keep their genesis weight regardless, see
    :func:`walrus_p2p.core.epochs.member_weight`). ``clock`` gives unix seconds (tests may skew
    it). ``announce_interval`` defaults to a third of the epoch, at most 10 minutes.
    """

    enabled: bool = True
    candidate: bool = True
    weight: int = 1
    capacity: int = 1 << 40
    timeouts: TimeoutPolicy = field(default_factory=TimeoutPolicy)
    rebroadcast_interval: float = 3.0
    announce_interval: float | None = None
    request_timeout: float = 10.0
    initial_sync_timeout: float = 20.0
    sync_grace: float = 8.0
    """Seconds past a scheduled epoch start after which the peer asks others for the record."""
    clock: Callable[[], float] = time.time


def record_key(epoch: int) -> bytes:
    return int(epoch).to_bytes(8, "big")


def journal_key(epoch: int, encoded: bytes) -> bytes:
    return record_key(epoch) + blake3.blake3(encoded).digest()[:16]


class EpochService:
    """Runs inside :class:`~walrus_p2p.node.peer.StoragePeerService` (``peer.epochs``)."""

    def __init__(self, peer: StoragePeerService, options: EpochOptions) -> None:
        self.peer = peer
        self.options = options
        self.genesis = peer.genesis
        self.network_id = peer.genesis.network_id
        self.topic = topic(peer.genesis.network_id_text, EPOCHS_TOPIC)
        self.records: dict[int, EpochRecord] = {}
        self.committees: dict[int, Committee] = {0: peer.genesis.committee}
        self.candidacies: dict[PeerId, Candidacy] = {}
        self.agreement: EpochAgreement | None = None
        self.synced = trio.Event()
        self.changed = trio.Event()
        """Set (and replaced) whenever the committee changes; wait on it in tests."""
        self._apply_lock = trio.Lock()
        self._sync_wanted = trio.Event()
        self._hinted: dict[PeerId, int] = {}
        self._heard: dict[PeerId, int] = {}
        self.evidence: list[Equivocation] = []
        """Equivocations seen in finished agreements (two signed messages of one signer)."""
        self.restored = 0
        """Agreements resumed from the journal after a restart."""
        self._send, self._receive = trio.open_memory_channel[bytes](OUTBOX_SIZE)
        self._timers: trio.Nursery | None = None
        peer.add_handler(GetEpochRecordsRequest, self._serve_records)

    # -- state ------------------------------------------------------------------------------

    @property
    def current(self) -> Committee:
        return self.peer.committee

    @property
    def epoch(self) -> int:
        return int(self.peer.committee.epoch)

    def committee_of(self, epoch: int) -> Committee | None:
        """The committee of an epoch this peer knows (verified), else None."""
        return self.committees.get(int(epoch))

    def chain(self) -> list[EpochRecord]:
        """The verified records of epochs 1..current, in order."""
        return [self.records[epoch] for epoch in range(1, self.epoch + 1)]

    def load(self) -> None:
        """Reload the stored chain, verifying it from genesis; stop at the first bad record."""
        stored = sorted(self.peer.store.iter_values(EPOCH_RECORDS_NAMESPACE))
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
            self._switch(record)
        if self.epoch:
            logger.info("epoch chain reloaded epoch=%d", self.epoch)

    def _check_start(self, record: EpochRecord) -> None:
        previous = self.records.get(record.epoch - 1)
        if previous is not None and record.value.start_time <= previous.value.start_time:
            raise VerificationError(f"epoch record {record.epoch} does not start later")

    def _switch(self, record: EpochRecord) -> None:
        committee = record.committee
        self.records[int(record.epoch)] = record
        self.committees[int(record.epoch)] = committee
        self.peer.committee = committee
        changed, self.changed = self.changed, trio.Event()
        changed.set()

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
                self.peer.store.put_value,
                EPOCH_RECORDS_NAMESPACE,
                record_key(record.epoch),
                encoded,
            )
            before = self.current
            self._switch(record)
            await trio.to_thread.run_sync(self._prune_journal, int(record.epoch))
            committee = record.committee
            logger.info(
                "epoch changed epoch=%d source=%s round=%d members=%d shards=%d->%d",
                record.epoch,
                source,
                record.certificate.round,
                len(committee.members),
                len(before.shards_of(self.peer.peer_id)),
                len(committee.shards_of(self.peer.peer_id)),
            )
            return True

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        gossip = self.peer.gossip
        assert gossip is not None, "the peer opens gossip before the epoch service"
        await trio.to_thread.run_sync(self.load)
        gossip.set_validator(self.topic, self._validate_gossip)
        subscription = await gossip.subscribe(self.topic)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publish_loop)
            nursery.start_soon(self._read_gossip, subscription)
            if self._behind_schedule(grace=0.0):
                with trio.move_on_after(self.options.initial_sync_timeout):
                    await self.sync()
            first = await self._prepare_agreement()
            self.synced.set()
            task_status.started()
            nursery.start_soon(self._sync_loop)
            if self.options.candidate:
                nursery.start_soon(self._announce_loop)
            await self._epoch_loop(first)

    def _behind_schedule(self, *, grace: float) -> bool:
        """The clock says epoch e+1 should have started ``grace`` seconds ago."""
        return self.options.clock() >= self.genesis.epoch_start(self.epoch + 1) + grace

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
                nursery.cancel_scope.cancel()
            self._timers = None
            for item in agreement.evidence:
                signer = (
                    item.first.proposer if isinstance(item.first, Proposal) else item.first.signer
                )
                logger.warning("equivocation evidence epoch=%d signer=%s", agreement.epoch, signer)
            self.evidence.extend(agreement.evidence)

    def _new_agreement(self, committee: Committee, *, observer: bool = False) -> EpochAgreement:
        voter = not observer and bool(committee.shards_of(self.peer.peer_id))
        signer = self.peer.identity if voter else None
        return EpochAgreement(
            network_id=self.network_id,
            committee=committee,
            signer=signer,
            own_value=None,
            validate=lambda value: check_next(self.genesis, committee, self.candidacies, value),
            timeouts=self.options.timeouts,
        )

    async def _drive(self, agreement: EpochAgreement) -> None:
        """Start the agreement at the scheduled end of the epoch, then rebroadcast until done."""
        delay = self.genesis.epoch_start(agreement.epoch) - self.options.clock()
        if delay > 0:
            await trio.sleep(delay)
        if agreement.signer is not None:
            agreement.own_value = propose_next(
                self.genesis, agreement.committee, self.candidacies, self._alive(agreement)
            )
        logger.info(
            "epoch agreement started epoch=%d voter=%s",
            agreement.epoch,
            agreement.signer is not None,
        )
        await self._process(agreement, agreement.start(trio.current_time()))
        while True:
            await trio.sleep(self.options.rebroadcast_interval)
            if agreement.signer is not None:
                for message in agreement.rebroadcast():
                    self._queue(message)

    async def _process(self, agreement: EpochAgreement, output: Output) -> None:
        if agreement is not self.agreement:
            return
        own = [m for m in output.messages if isinstance(m, Proposal | Vote)]
        if own:
            # Persist before sending: a restarted peer must not sign a second, different message
            # for a round and step it already signed in (docs/epochs.md, restore).
            await self._journal(int(agreement.epoch), own)
        for message in output.messages:
            self._queue(message)
        timers = self._timers
        for timeout in output.timeouts:
            if timers is not None:
                timers.start_soon(self._timer, agreement, timeout)
        if output.decision is not None:
            await self.apply_record(output.decision, source="agreement")

    async def _timer(self, agreement: EpochAgreement, timeout: Timeout) -> None:
        await trio.sleep_until(timeout.deadline)
        await self._process(agreement, agreement.on_timeout(timeout, trio.current_time()))

    # -- journal ----------------------------------------------------------------------------

    async def _journal(self, epoch: int, messages: list[Proposal | Vote]) -> None:
        def write() -> None:
            for message in messages:
                encoded = wire.encode(message)
                key = journal_key(epoch, encoded)
                if self.peer.store.get_value(JOURNAL_NAMESPACE, key) is None:
                    self.peer.store.put_value(JOURNAL_NAMESPACE, key, encoded)

        await trio.to_thread.run_sync(write)

    def _load_journal(self, epoch: int) -> list[Proposal | Vote]:
        prefix = record_key(epoch)
        messages: list[Proposal | Vote] = []
        for key, raw in self.peer.store.iter_values(JOURNAL_NAMESPACE):
            if key.startswith(prefix):
                try:
                    messages.append(wire.decode(raw, (Proposal, Vote)))
                except WireError as error:
                    logger.warning("epoch journal entry unreadable error=%s", error)
        return messages

    def _prune_journal(self, epoch: int) -> None:
        """Forget the journals of agreements up to ``epoch`` (decided: nothing to resume)."""
        for key, _raw in self.peer.store.iter_values(JOURNAL_NAMESPACE):
            if int.from_bytes(key[:8], "big") <= epoch:
                self.peer.store.delete_value(JOURNAL_NAMESPACE, key)

    # -- gossip -----------------------------------------------------------------------------

    def _queue(self, message: wire.Message) -> None:
        try:
            self._send.send_nowait(wire.encode(message))
        except trio.WouldBlock:
            logger.warning("epoch gossip outbox full: message dropped")

    async def _publish_loop(self) -> None:
        gossip = self.peer.gossip
        assert gossip is not None
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
        if isinstance(decoded, EpochRecord):
            epoch = int(decoded.epoch)
            if epoch > self.epoch + 1:
                self._hint(message.origin, epoch)
                return False
            # The record that just switched this peer (epoch == e) is still relayed: peers
            # that missed the decision need it, and this peer's own announcement of it is
            # usually published after the switch.
            previous = self.committees.get(epoch - 1)
            if epoch < self.epoch or previous is None:
                return False
            decoded.verify(previous, self.network_id)
            return True
        assert isinstance(decoded, Proposal | Vote)
        epoch = int(decoded.body.epoch)
        if decoded.body.network_id != self.network_id:
            return False
        if epoch > self.epoch + 1:
            self._hint(message.origin, epoch - 1)
            return False
        if epoch <= self.epoch:
            # Votes of the agreement that just finished: only this peer's own last messages go
            # out (they were queued before the switch); nothing older is relayed.
            return epoch == self.epoch and message.origin == self.peer.peer_id
        self._verify_signed(decoded)
        return True

    def _verify_signed(self, message: Proposal | Vote) -> None:
        committee = self.current
        if isinstance(message, Proposal):
            signer, context, signature = message.proposer, PROPOSAL_CONTEXT, message.signature
        else:
            signer, context = message.signer, vote_context(message.kind)
            signature = message.signature
        if not committee.shards_of(signer):
            raise VerificationError(f"{signer} holds no shard in epoch {committee.epoch}")
        key = PublicKey(committee.member(signer).public_key)
        key.verify(context, wire.signing_bytes(message.body), signature)

    def _alive(self, agreement: EpochAgreement) -> set[PeerId]:
        """Members heard from during this epoch besides renewals: connected now, or the origin
        of a valid epochs-topic message while this peer was in the epoch."""
        host = self.peer.host
        previous = int(agreement.epoch) - 1
        alive = {peer for peer, epoch in self._heard.items() if epoch >= previous}
        if host is not None:
            alive |= {peer for peer in agreement.committee.peer_ids if host.is_connected(peer)}
        return alive | {self.peer.peer_id}

    def _hint(self, origin: PeerId, epoch: int) -> None:
        if origin and origin != self.peer.peer_id:
            self._hinted[origin] = max(epoch, self._hinted.get(origin, 0))
            self._sync_wanted.set()

    async def _read_gossip(self, subscription: Subscription) -> None:
        async for message in subscription:
            try:
                decoded = wire.decode(message.data, GOSSIP_TYPES)
            except WireError:
                continue
            if isinstance(decoded, Candidacy):
                self._learn_candidacy(decoded)
            elif isinstance(decoded, EpochRecord):
                await self.apply_record(decoded, source="gossip")
            elif isinstance(decoded, Proposal | Vote):
                agreement = self.agreement
                if agreement is not None and decoded.body.epoch == agreement.epoch:
                    if isinstance(decoded, Proposal) and agreement.signer is not None:
                        # The proposal of a value this peer may precommit (and so lock on).
                        await self._journal(int(agreement.epoch), [decoded])
                    await self._process(agreement, agreement.handle(decoded, trio.current_time()))

    def _learn_candidacy(self, candidacy: Candidacy) -> None:
        """Keep the newest verified candidacy of each peer (the validator verified it)."""
        peer_id = candidacy.peer_id
        known = self.candidacies.get(peer_id)
        self.candidacies[peer_id] = (
            candidacy if known is None else newer_candidacy(known, candidacy)
        )

    def own_candidacy(self) -> Candidacy:
        host = self.peer.host
        addresses = tuple(host.listen_addrs) if host is not None else ()
        if self.peer.options.announce_addrs:
            addresses = tuple(self.peer.options.announce_addrs)
        return Candidacy.create(
            self.peer.identity,
            network_id=self.network_id,
            epoch=self.epoch + 1,
            addresses=addresses[:8],
            weight=self.options.weight,
            capacity=self.options.capacity,
        )

    def _announce_interval(self) -> float:
        if self.options.announce_interval is not None:
            return self.options.announce_interval
        return max(1.0, min(self.genesis.epoch_duration_seconds / 3, 600.0))

    async def _announce_loop(self) -> None:
        """Renew the candidacy a few times per epoch, and at once after each change."""
        while True:
            candidacy = self.own_candidacy()
            self._learn_candidacy(candidacy)
            self._queue(candidacy)
            changed = self.changed
            with trio.move_on_after(self._announce_interval()):
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
        while True:
            wanted = self._sync_wanted
            with trio.move_on_after(self.options.rebroadcast_interval * 2):
                await wanted.wait()
            if wanted.is_set():
                self._sync_wanted = trio.Event()
            if wanted.is_set() or self._behind_schedule(grace=self.options.sync_grace):
                await self.sync()

    def _sources(self) -> list[PeerId]:
        """Peers to ask: those that showed a later epoch first, then random members."""
        hinted = sorted(
            (peer for peer, epoch in self._hinted.items() if epoch > self.epoch),
            key=lambda peer: -self._hinted[peer],
        )
        self._hinted.clear()
        members = [m for m in self.current.peer_ids if m != self.peer.peer_id and m not in hinted]
        random.shuffle(members)
        return hinted + members

    async def sync(self, *, max_sources: int = 4) -> int:
        """Fetch and apply the records this peer lacks; returns how many were applied."""
        applied = 0
        for source in self._sources()[:max_sources]:
            try:
                applied += await self._sync_from(source)
            except WalrusError as error:
                logger.info("epoch sync failed peer=%s error=%s", source[:12], error)
                continue
            if not self._behind_schedule(grace=self.options.sync_grace):
                break
        return applied

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
                if await self.apply_record(record, source=f"sync:{source[:12]}"):
                    applied += 1
                    progress = True
                else:
                    break
            if not progress or reply.latest_epoch <= self.epoch:
                return applied

    def _addresses_of(self, peer_id: PeerId) -> list[str]:
        for epoch in sorted(self.committees, reverse=True):
            committee = self.committees[epoch]
            if peer_id in committee:
                return list(committee.member(peer_id).addresses)
        candidacy = self.candidacies.get(peer_id)
        return list(candidacy.body.addresses) if candidacy is not None else []

    async def _call(self, peer_id: PeerId, request: GetEpochRecordsRequest) -> GetEpochRecordsReply:
        host = self.peer.host
        assert host is not None
        from walrus_p2p.node.peer import max_frame_for, storage_protocol_id

        timeout = self.options.request_timeout
        reply: bytes | None = None
        with trio.move_on_after(timeout):
            if not host.is_connected(peer_id):
                await host.connect(peer_id, self._addresses_of(peer_id), timeout=timeout)
            reply = await host.request(
                peer_id,
                storage_protocol_id(self.genesis),
                wire.encode(request),
                timeout=timeout,
                max_reply=max_frame_for(self.genesis),
            )
        if reply is None:
            raise RequestTimeoutError(f"epoch sync from peer={peer_id[:12]} timed out")
        return wire.decode(reply, GetEpochRecordsReply)
