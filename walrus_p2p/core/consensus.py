"""One-shot Byzantine agreement on the next epoch's committee, as a pure state machine.

Owner: epoch changes (docs/design.md §6.4; argued in ``docs/epochs.md``). The committee of epoch e
decides one :class:`~walrus_p2p.core.records.EpochValue` for epoch e+1 with the Tendermint
algorithm (Buchman, Kwon, Milosevic, "The latest gossip on BFT consensus", 2018) run for a single
height: rounds of propose / prevote / precommit, a lock on a quorum of prevotes (a polka), a
decision on a quorum of precommits, and proposer rotation with growing timeouts. Voting power is
the number of shards a member holds in epoch e; quorum is ``3w >= 2n+1`` and the round-skip rule
uses ``3w >= n+1``.

:class:`EpochAgreement` does no I/O and reads no clock: the caller feeds it received messages and
fired timeouts with the current time, and carries out what it returns in an :class:`Output` --
messages to broadcast, timeouts to schedule, and at most once a decision (the value with its
quorum of precommits, i.e. a certified :class:`~walrus_p2p.core.records.EpochRecord`).

The glue also calls :meth:`EpochAgreement.rebroadcast` periodically (lost messages) and, after a
restart, :meth:`EpochAgreement.restore` with the journal of what the peer signed, so that it
never equivocates by accident. ``validate`` callbacks must not raise.

Two different signed votes of one signer for the same round and step are equivocation: both are
kept as evidence, only the first counts. A proposer that proposes two values in one round is
recorded the same way; both values are kept (a bounded number) so a peer can still decide on
whichever one a quorum precommitted.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from walrus_p2p.core import identity
from walrus_p2p.core.committee import Committee, is_quorum, is_validity
from walrus_p2p.core.records import (
    PROPOSAL_CONTEXT,
    EpochCertificate,
    EpochRecord,
    EpochValue,
    PeerIdText,
    ProposalBody,
    Signature,
    VoteBody,
    VoteKind,
    vote_context,
)
from walrus_p2p.core.wire import Message as WireMessage
from walrus_p2p.core.wire import SignatureBytes, register, signing_bytes
from walrus_p2p.errors import VerificationError, WireError
from walrus_p2p.types import Epoch, PeerId

__all__ = [
    "MAX_PROPOSALS_PER_ROUND",
    "MAX_ROUNDS_AHEAD",
    "MESSAGE_TYPES",
    "NO_ROUND",
    "EpochAgreement",
    "Equivocation",
    "Message",
    "Output",
    "Proposal",
    "Signed",
    "Step",
    "Timeout",
    "TimeoutPolicy",
    "Vote",
    "proposer_order",
]

logger = logging.getLogger(__name__)

MAX_ROUNDS_AHEAD = 64
"""Messages for rounds further ahead than this are dropped (they bound what a signer can store)."""
MAX_PROPOSALS_PER_ROUND = 4
"""Distinct values kept per round from an equivocating proposer."""
NO_ROUND = -1


class Step(enum.IntEnum):
    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2


@register(80)
@dataclass(frozen=True, slots=True)
class Proposal(WireMessage):
    """The round's proposer offers ``value``; ``body.valid_round`` is its polka round or -1."""

    body: ProposalBody
    value: EpochValue
    proposer: PeerIdText
    signature: SignatureBytes

    @property
    def round(self) -> int:
        return self.body.round


@register(81)
@dataclass(frozen=True, slots=True)
class Vote(WireMessage):
    """A prevote or precommit for a value id, or for nil (``body.value_id`` None)."""

    body: VoteBody
    signer: PeerIdText
    signature: SignatureBytes

    @property
    def round(self) -> int:
        return self.body.round

    @property
    def kind(self) -> VoteKind:
        return self.body.kind

    @property
    def value_id(self) -> bytes | None:
        return self.body.value_id


Signed = Proposal | Vote
"""A consensus message signed by one committee member."""
Message = Proposal | Vote | EpochRecord
"""What peers exchange for one agreement. A peer that decides broadcasts the certified
:class:`~walrus_p2p.core.records.EpochRecord` once: peers that missed the proposal or some
precommits decide from it (peers that already decided stop voting, so this is what keeps the
others live)."""
MESSAGE_TYPES = (Proposal, Vote, EpochRecord)
"""For ``wire.decode(data, MESSAGE_TYPES)``."""


@dataclass(frozen=True, slots=True)
class Timeout:
    """Call :meth:`EpochAgreement.on_timeout` with this once the clock reaches ``deadline``."""

    step: Step
    round: int
    deadline: float


@dataclass(frozen=True, slots=True)
class Equivocation:
    """Two different signed messages of one signer for the same round and step."""

    first: Signed
    second: Signed


@dataclass(frozen=True, slots=True)
class Output:
    messages: tuple[Message, ...] = ()
    timeouts: tuple[Timeout, ...] = ()
    decision: EpochRecord | None = None


@dataclass(frozen=True, slots=True)
class TimeoutPolicy:
    """Timeout of a step in round r is ``base + r * increment`` seconds: it grows every round,
    so after the network stabilises some round lasts long enough for honest peers to agree."""

    propose: float = 3.0
    prevote: float = 1.0
    precommit: float = 1.0
    increment: float = 1.0

    def duration(self, step: Step, round_: int) -> float:
        base = {Step.PROPOSE: self.propose, Step.PREVOTE: self.prevote}.get(step, self.precommit)
        return base + round_ * self.increment


def proposer_order(committee: Committee, epoch: int) -> tuple[PeerId, ...]:
    """Proposers in rotation: members holding shards, by peer id, rotated by the epoch number."""
    holders = [peer_id for peer_id in committee.peer_ids if committee.shards_of(peer_id)]
    offset = epoch % len(holders)
    return tuple(holders[offset:] + holders[:offset])


@dataclass
class _RoundVotes:
    """Votes of one kind in one round: the first vote of each signer, and per-value weights."""

    by_signer: dict[PeerId, Vote] = field(default_factory=dict)
    weight_for: dict[bytes | None, int] = field(default_factory=dict)
    total: int = 0


def _signing_bytes(body: WireMessage) -> bytes:
    try:
        return signing_bytes(body)
    except WireError as error:
        raise VerificationError(f"malformed consensus message: {error}") from error


class EpochAgreement:
    """Agree with the committee of epoch e on the value for epoch e+1 (one Tendermint height).

    ``signer`` is this peer's identity (None, or a peer holding no shard, only observes and still
    learns the decision). ``own_value`` is what this peer proposes when it is a round's proposer
    and holds no valid value yet. ``validate`` is the application check an honest peer applies
    before prevoting a value (committee rules, plausible start time); the epoch, network and n are
    always checked here. It should be deterministic across honest peers for liveness; safety does
    not depend on it.
    """

    def __init__(
        self,
        *,
        network_id: bytes,
        committee: Committee,
        signer: identity.Identity | None,
        own_value: EpochValue | None,
        validate: Callable[[EpochValue], bool] = lambda value: True,
        timeouts: TimeoutPolicy | None = None,
    ) -> None:
        self.network_id = network_id
        self.committee = committee
        self.epoch = Epoch(committee.epoch + 1)
        self.signer = signer
        self.own_value = own_value
        self._validate = validate
        self.timeouts = timeouts or TimeoutPolicy()
        self.proposers = proposer_order(committee, self.epoch)
        self.n = committee.n_shards

        self.round = 0
        self.step = Step.PROPOSE
        self.locked_value: EpochValue | None = None
        self.locked_value_id: bytes | None = None
        self.locked_round = NO_ROUND
        self.valid_value: EpochValue | None = None
        self.valid_round = NO_ROUND
        self.decision: EpochRecord | None = None
        self.evidence: list[Equivocation] = []
        self.started = False
        self._decision_reported = False
        self._equivocators: set[tuple[PeerId, str, int]] = set()

        self._proposals: dict[int, dict[bytes, Proposal]] = {}
        self._votes: dict[tuple[VoteKind, int], _RoundVotes] = {}
        self._senders: dict[int, set[PeerId]] = {}
        self._validity: dict[bytes, bool] = {}
        self._prevote_timeout_done: set[int] = set()
        self._precommit_timeout_done: set[int] = set()
        self._polka_done: set[int] = set()
        self._own: list[Proposal | Vote] = []
        # Collected output of the event being handled.
        self._out_messages: list[Message] = []
        self._out_timeouts: list[Timeout] = []
        self._now = 0.0

    # Public interface ----------------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId | None:
        return None if self.signer is None else self.signer.peer_id

    def proposer(self, round_: int) -> PeerId:
        return self.proposers[round_ % len(self.proposers)]

    def start(self, now: float) -> Output:
        """Enter round 0 (or the round restored by :meth:`restore`). Messages handled before
        this are kept and take effect now."""
        self._now = now
        if not self.started:
            self.started = True
            if self._own:
                self._resume()
            else:
                self._start_round(0)
            self._apply_rules()
        return self._flush()

    def restore(self, messages: Iterable[Signed]) -> None:
        """Reload, before :meth:`start`, what this peer signed (and saw) before a restart.

        The glue must persist every proposal and vote this peer signed (those in
        ``Output.messages``) *before* sending it, and the proposal of each value it precommits;
        after a restart it hands them back here. The peer then never signs a second, different
        message for a round and step it already signed in (that would be equivocation), keeps
        the lock its precommits imply, and resumes in its last round. Messages that do not
        verify raise ``VerificationError``.
        """
        if self.started or self.signer is None:
            raise ValueError("restore needs a signer and must come before start")
        items = list(messages)
        self.round = max((message.round for message in items), default=0)
        for message in items:
            self._accept(message)
            author = message.proposer if isinstance(message, Proposal) else message.signer
            if author == self.signer.peer_id and message not in self._own:
                self._own.append(message)
        for message in self._own:
            if (
                isinstance(message, Vote)
                and message.kind is VoteKind.PRECOMMIT
                and message.value_id is not None
                and message.round > self.locked_round
            ):
                self.locked_round = message.round
                self.locked_value_id = message.value_id
                proposal = self._proposals.get(message.round, {}).get(message.value_id)
                self.locked_value = None if proposal is None else proposal.value
                if proposal is not None:
                    self.valid_value, self.valid_round = proposal.value, message.round
        self.round = 0

    def _resume(self) -> None:
        """Continue in the last round this peer signed in, at the step its messages show."""
        last = max(message.round for message in self._own)
        self.round = last
        kinds = {
            message.kind
            for message in self._own
            if isinstance(message, Vote) and message.round == last
        }
        if VoteKind.PRECOMMIT in kinds:
            self.step = Step.PRECOMMIT
        elif VoteKind.PREVOTE in kinds:
            self.step = Step.PREVOTE
        else:
            self.step = Step.PROPOSE
            self._schedule(Step.PROPOSE, last)
        self._out_messages.extend(message for message in self._own if message.round == last)

    def handle(self, message: Message, now: float) -> Output:
        """Take a message received from anyone; invalid ones are dropped (and logged)."""
        self._now = now
        if self.decision is None:
            try:
                if isinstance(message, EpochRecord):
                    message.verify(self.committee, self.network_id)
                    self.decision = message
                    logger.info("epoch record adopted epoch=%d", self.epoch)
                    return self._flush()
                accepted = self._accept(message)
            except VerificationError as error:
                logger.debug("consensus message dropped reason=%s", error)
                accepted = False
            if accepted and self.started:
                self._apply_rules()
        return self._flush()

    def on_timeout(self, timeout: Timeout, now: float) -> Output:
        """A scheduled timeout fired; stale ones (another round or step) do nothing."""
        self._now = now
        if self.decision is not None or not self.started or timeout.round != self.round:
            return self._flush()
        if timeout.step is Step.PROPOSE and self.step is Step.PROPOSE:
            self._broadcast_vote(VoteKind.PREVOTE, None)
            self.step = Step.PREVOTE
        elif timeout.step is Step.PREVOTE and self.step is Step.PREVOTE:
            self._broadcast_vote(VoteKind.PRECOMMIT, None)
            self.step = Step.PRECOMMIT
        elif timeout.step is Step.PRECOMMIT:
            self._start_round(self.round + 1)
        self._apply_rules()
        return self._flush()

    def adopt(self, record: EpochRecord) -> Output:
        """Take a certified record learned elsewhere (sync, gossip) as the decision, if it verifies.

        Any certified record is the one Tendermint decides (docs/epochs.md), so this is safe.
        """
        if self.decision is None:
            record.verify(self.committee, self.network_id)
            self.decision = record
        return self._flush()

    def rebroadcast(self) -> tuple[Message, ...]:
        """Messages to send again when the network may have lost some (call it periodically).

        Before a decision: every message this peer signed in this agreement (at most three a
        round, and rounds are few), plus the proposal and the prevotes that justify its valid
        value (others need that polka to accept a re-proposal, and a proposer needs it to
        re-propose the newest value anyone may be locked on). Together this gives what the
        liveness argument assumes of gossip: after the network heals, every honest peer receives
        every message an honest peer sent, whatever round it is stuck in. After a decision: the
        certified record alone, from which anyone decides.
        """
        if self.decision is not None:
            return (self.decision,)
        messages: list[Message] = list(self._own)
        if self.valid_round != NO_ROUND and self.valid_value is not None:
            value_id = self.valid_value.value_id()
            proposal = self._proposals.get(self.valid_round, {}).get(value_id)
            if proposal is not None:
                messages.append(proposal)
            polka = self._votes.get((VoteKind.PREVOTE, self.valid_round), _RoundVotes())
            messages += [vote for vote in polka.by_signer.values() if vote.value_id == value_id]
        return tuple(dict.fromkeys(messages))

    def counted(self, vote: Vote) -> bool:
        """Whether ``vote`` is the one counted for its signer, kind and round (it verified and
        was that signer's first such vote)."""
        votes = self._votes.get((vote.kind, vote.round))
        return votes is not None and votes.by_signer.get(vote.signer) == vote

    def has_quorum_of(self, kind: VoteKind, round_: int) -> bool:
        """Votes of ``kind`` in ``round_``, for any value or nil, hold a quorum of shards."""
        return self._quorum(self._total(kind, round_))

    # Receiving -----------------------------------------------------------------------------

    def _accept(self, message: Signed) -> bool:
        """Verify and store a message; True if it was new and counted."""
        body = message.body
        if body.network_id != self.network_id or body.epoch != self.epoch:
            raise VerificationError("consensus message for another network or epoch")
        if not 0 <= message.round <= self.round + MAX_ROUNDS_AHEAD:
            raise VerificationError(f"round {message.round} out of range")
        if isinstance(message, Proposal):
            return self._accept_proposal(message)
        return self._accept_vote(message)

    def _verify_signature(self, signer: PeerId, context: str, message: bytes, sig: bytes) -> None:
        if not self.committee.shards_of(signer):
            raise VerificationError(f"{signer} holds no shard in epoch {self.committee.epoch}")
        public_key = identity.PublicKey(self.committee.member(signer).public_key)
        public_key.verify(context, message, sig)

    def _accept_proposal(self, proposal: Proposal) -> bool:
        if proposal.proposer != self.proposer(proposal.round):
            raise VerificationError(f"{proposal.proposer} is not proposer of {proposal.round}")
        if not NO_ROUND <= proposal.body.valid_round < proposal.round:
            raise VerificationError("proposal valid round out of range")
        value_id = proposal.value.value_id()
        if proposal.body.value_id != value_id:
            raise VerificationError("proposal signs another value")
        known = self._proposals.setdefault(proposal.round, {})
        previous = known.get(value_id)
        if previous is not None and previous == proposal:
            return False
        self._verify_signature(
            proposal.proposer, PROPOSAL_CONTEXT, _signing_bytes(proposal.body), proposal.signature
        )
        if previous is not None or known:
            first = previous if previous is not None else next(iter(known.values()))
            self._record_equivocation(first, proposal, "proposal")
            if previous is not None or len(known) >= MAX_PROPOSALS_PER_ROUND:
                return False
        known[value_id] = proposal
        self._senders.setdefault(proposal.round, set()).add(proposal.proposer)
        return True

    def _accept_vote(self, vote: Vote) -> bool:
        if vote.value_id is not None and len(vote.value_id) != 32:
            raise VerificationError("malformed value id")
        votes = self._votes.setdefault((vote.kind, vote.round), _RoundVotes())
        previous = votes.by_signer.get(vote.signer)
        if previous == vote:
            return False
        self._verify_signature(
            vote.signer, vote_context(vote.kind), _signing_bytes(vote.body), vote.signature
        )
        if previous is not None:
            self._record_equivocation(previous, vote, vote.kind.name.lower())
            return False
        weight = len(self.committee.shards_of(vote.signer))
        votes.by_signer[vote.signer] = vote
        votes.weight_for[vote.value_id] = votes.weight_for.get(vote.value_id, 0) + weight
        votes.total += weight
        self._senders.setdefault(vote.round, set()).add(vote.signer)
        return True

    def _record_equivocation(self, first: Signed, second: Signed, step: str) -> None:
        """Keep one piece of evidence per signer, step and round (a liar can sign without end)."""
        signer = first.proposer if isinstance(first, Proposal) else first.signer
        key = (signer, step, first.round)
        if key not in self._equivocators:
            self._equivocators.add(key)
            self.evidence.append(Equivocation(first, second))
            logger.info("equivocation signer=%s step=%s round=%d", signer, step, first.round)

    # The algorithm -------------------------------------------------------------------------

    def _quorum(self, weight: int) -> bool:
        return is_quorum(weight, self.n)

    def _weight(self, kind: VoteKind, round_: int, value_id: bytes | None) -> int:
        votes = self._votes.get((kind, round_))
        return 0 if votes is None else votes.weight_for.get(value_id, 0)

    def _total(self, kind: VoteKind, round_: int) -> int:
        votes = self._votes.get((kind, round_))
        return 0 if votes is None else votes.total

    def _well_formed(self, value: EpochValue) -> bool:
        """The objective checks every peer agrees on: network, epoch, a valid committee of n."""
        try:
            n_shards = value.committee.n_shards
        except VerificationError:
            return False
        return (
            value.network_id == self.network_id and value.epoch == self.epoch and n_shards == self.n
        )

    def _valid(self, value: EpochValue) -> bool:
        """Well formed and accepted by the application check (memoised per value id)."""
        value_id = value.value_id()
        cached = self._validity.get(value_id)
        if cached is None:
            cached = self._well_formed(value) and self._validate(value)
            self._validity[value_id] = cached
        return cached

    def _start_round(self, round_: int) -> None:
        self.round = round_
        self.step = Step.PROPOSE
        if self.proposer(round_) == self.peer_id and self.signer is not None:
            self._learn_earlier_polka()
            value = self.valid_value if self.valid_value is not None else self.own_value
            if value is not None:
                self._broadcast_proposal(value, self.valid_round)
                return
        self._schedule(Step.PROPOSE, round_)

    def _apply_rules(self) -> None:
        """Fire every rule whose condition holds, until none does (a rule may enable another)."""
        while self.decision is None and self._apply_one_rule():
            pass

    def _apply_one_rule(self) -> bool:
        """One rule of the algorithm (in the paper's order, decision first) if any applies."""
        round_ = self.round
        proposals = list(self._proposals.get(round_, {}).values())

        # Decide: a proposal of any round with a quorum of precommits for its value. Only the
        # objective checks apply here: a quorum precommitted it, so f+1 honest weight validated
        # it, and a peer whose own (clock-dependent) check disagrees must not be left behind.
        for proposal_round, by_value in self._proposals.items():
            for value_id, proposal in by_value.items():
                weight = self._weight(VoteKind.PRECOMMIT, proposal_round, value_id)
                if self._quorum(weight) and self._well_formed(proposal.value):
                    self._decide(proposal)
                    return True

        if self.step is Step.PROPOSE:
            for proposal in proposals:
                value = proposal.value
                value_id = value.value_id()
                valid_round = proposal.body.valid_round
                if valid_round == NO_ROUND:
                    good = self._valid(value) and (
                        self.locked_round == NO_ROUND or self._is_locked_on(value_id)
                    )
                elif self._quorum(self._weight(VoteKind.PREVOTE, valid_round, value_id)):
                    good = self._valid(value) and (
                        self.locked_round <= valid_round or self._is_locked_on(value_id)
                    )
                else:
                    continue
                self._broadcast_vote(VoteKind.PREVOTE, value_id if good else None)
                self.step = Step.PREVOTE
                return True

        if self.step >= Step.PREVOTE and round_ not in self._polka_done:
            for proposal in proposals:
                value_id = proposal.value.value_id()
                if self._quorum(self._weight(VoteKind.PREVOTE, round_, value_id)) and self._valid(
                    proposal.value
                ):
                    self._polka_done.add(round_)
                    if self.step is Step.PREVOTE:
                        self.locked_value = proposal.value
                        self.locked_value_id = value_id
                        self.locked_round = round_
                        self._broadcast_vote(VoteKind.PRECOMMIT, value_id)
                        self.step = Step.PRECOMMIT
                    self.valid_value = proposal.value
                    self.valid_round = round_
                    return True

        if self._learn_earlier_polka():
            return True

        if self.step is Step.PREVOTE:
            if self._quorum(self._weight(VoteKind.PREVOTE, round_, None)):
                self._broadcast_vote(VoteKind.PRECOMMIT, None)
                self.step = Step.PRECOMMIT
                return True
            if (
                self._quorum(self._total(VoteKind.PREVOTE, round_))
                and round_ not in self._prevote_timeout_done
            ):
                self._prevote_timeout_done.add(round_)
                self._schedule(Step.PREVOTE, round_)
                return True

        if (
            self._quorum(self._total(VoteKind.PRECOMMIT, round_))
            and round_ not in self._precommit_timeout_done
        ):
            self._precommit_timeout_done.add(round_)
            self._schedule(Step.PRECOMMIT, round_)
            return True

        # Round skip: f+1 weight is already in a later round, so at least one honest peer is.
        for later in sorted(self._senders):
            if later > round_:
                weight = self.committee.shard_weight(self._senders[later])
                if is_validity(weight, self.n):
                    self._start_round(later)
                    return True
        return False

    def _learn_earlier_polka(self) -> bool:
        """Take the newest polka of a round before this one, if newer than the valid round.

        Polkas of earlier rounds arrive late or through rebroadcasts. Adopting one as the valid
        value only changes what this peer proposes, never how it votes, so safety is untouched;
        it lets an honest proposer re-propose the newest value any honest peer may be locked on
        once the network heals (docs/epochs.md, liveness).
        """
        for earlier in range(self.round - 1, self.valid_round, -1):
            for proposal in self._proposals.get(earlier, {}).values():
                value_id = proposal.value.value_id()
                if self._quorum(self._weight(VoteKind.PREVOTE, earlier, value_id)) and self._valid(
                    proposal.value
                ):
                    self.valid_value = proposal.value
                    self.valid_round = earlier
                    return True
        return False

    def _is_locked_on(self, value_id: bytes) -> bool:
        return self.locked_value_id == value_id

    def _decide(self, proposal: Proposal) -> None:
        value_id = proposal.value.value_id()
        votes = self._votes[(VoteKind.PRECOMMIT, proposal.round)].by_signer.values()
        certificate = EpochCertificate(
            round=proposal.round,
            precommits=tuple(
                Signature(vote.signer, vote.signature)
                for vote in votes
                if vote.value_id == value_id
            ),
        )
        self.decision = EpochRecord(proposal.value, certificate)
        self._out_messages.append(self.decision)
        logger.info("epoch decided epoch=%d round=%d", self.epoch, proposal.round)

    # Sending -------------------------------------------------------------------------------

    def _schedule(self, step: Step, round_: int) -> None:
        deadline = self._now + self.timeouts.duration(step, round_)
        self._out_timeouts.append(Timeout(step, round_, deadline))

    def _can_vote(self) -> bool:
        return self.signer is not None and bool(self.committee.shards_of(self.signer.peer_id))

    def _already_signed(self, kind: VoteKind | None) -> bool:
        """Whether this peer signed a proposal (kind None) or vote of this round before."""
        for message in self._own:
            if message.round != self.round:
                continue
            if kind is None and isinstance(message, Proposal):
                return True
            if isinstance(message, Vote) and message.kind is kind:
                return True
        return False

    def _broadcast_proposal(self, value: EpochValue, valid_round: int) -> None:
        assert self.signer is not None
        if self._already_signed(None):
            return
        body = ProposalBody(self.network_id, self.epoch, self.round, value.value_id(), valid_round)
        signature = self.signer.sign(PROPOSAL_CONTEXT, signing_bytes(body))
        self._send(Proposal(body, value, self.signer.peer_id, signature))

    def _broadcast_vote(self, kind: VoteKind, value_id: bytes | None) -> None:
        if not self._can_vote() or self._already_signed(kind):
            return
        assert self.signer is not None
        body = VoteBody(kind, self.network_id, self.epoch, self.round, value_id)
        signature = self.signer.sign(vote_context(kind), signing_bytes(body))
        self._send(Vote(body, self.signer.peer_id, signature))

    def _send(self, message: Signed) -> None:
        """Broadcast, and count it here as if received (a peer hears its own messages)."""
        self._own.append(message)
        self._out_messages.append(message)
        self._accept(message)

    def _flush(self) -> Output:
        decision = None
        if self.decision is not None and not self._decision_reported:
            self._decision_reported = True
            decision = self.decision
        output = Output(
            messages=tuple(self._out_messages),
            timeouts=tuple(self._out_timeouts),
            decision=decision,
        )
        self._out_messages = []
        self._out_timeouts = []
        return output
