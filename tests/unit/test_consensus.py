"""Epoch agreement on a deterministic simulated network: a mock clock, a message queue with random
delays (so random delivery orders), drops, crashed peers and Byzantine peers that equivocate."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import pytest

from walrus_p2p.core import consensus, records, wire
from walrus_p2p.core.committee import Committee, Member
from walrus_p2p.core.consensus import (
    EpochAgreement,
    Message,
    Output,
    Proposal,
    Step,
    Timeout,
    TimeoutPolicy,
    Vote,
)
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.records import EpochRecord, EpochValue, ProposalBody, VoteBody, VoteKind
from walrus_p2p.errors import VerificationError
from walrus_p2p.types import Epoch, PeerId

NETWORK = bytes(range(32))
TIMEOUTS = TimeoutPolicy(propose=3.0, prevote=1.0, precommit=1.0, increment=1.0)


def make_identities(count: int, salt: int = 0) -> list[Identity]:
    return [Identity.from_seed(bytes([salt, index + 1]) * 16) for index in range(count)]


def make_committee(epoch: int, identities: Sequence[Identity], shards: Sequence[int]) -> Committee:
    members = [
        Member(ident.peer_id, ident.public_key.raw, max(count, 1), ())
        for ident, count in zip(identities, shards, strict=True)
    ]
    shard_map = [
        ident.peer_id for ident, count in zip(identities, shards, strict=True) for _ in range(count)
    ]
    return Committee(epoch=Epoch(epoch), members=tuple(members), shard_map=tuple(shard_map))


def value_for(committee: Committee, start_time: int) -> EpochValue:
    """A candidate value for epoch e+1: the same peers, distinguished by the start time."""
    next_committee = Committee(
        epoch=Epoch(committee.epoch + 1), members=committee.members, shard_map=committee.shard_map
    )
    return EpochValue.from_committee(NETWORK, next_committee, start_time)


def arrange(shards_by_role: Sequence[int], salt: int = 0) -> tuple[list[Identity], Committee]:
    """Identities in proposer order (round r's proposer is ``identities[r % k]``) with the given
    shard counts, for a committee of epoch 0 deciding epoch 1."""
    identities = make_identities(len(shards_by_role), salt)
    probe = make_committee(0, identities, [1] * len(identities))
    order = consensus.proposer_order(probe, 1)
    by_peer = {ident.peer_id: ident for ident in identities}
    ordered = [by_peer[peer_id] for peer_id in order]
    return ordered, make_committee(0, ordered, shards_by_role)


# --------------------------------------------------------------------------------------------
# The simulated network


class Byzantine:
    """A faulty committee member that equivocates in every round it hears of: to one half of the
    honest peers it proposes (when proposer) and votes value A, to the other half value B."""

    def __init__(
        self, signer: Identity, committee: Committee, halves: tuple[set[PeerId], set[PeerId]]
    ) -> None:
        self.signer = signer
        self.committee = committee
        self.halves = halves
        self.values = (value_for(committee, 777), value_for(committee, 888))
        self.rounds_done: set[int] = set()

    def react(self, message: Message) -> list[tuple[PeerId, Message]]:
        if isinstance(message, EpochRecord):
            return []
        round_ = message.round
        if round_ in self.rounds_done:
            return []
        self.rounds_done.add(round_)
        epoch = Epoch(self.committee.epoch + 1)
        out: list[tuple[PeerId, Message]] = []
        proposer = consensus.proposer_order(self.committee, epoch)
        is_proposer = proposer[round_ % len(proposer)] == self.signer.peer_id
        for half, value in zip(self.halves, self.values, strict=True):
            value_id = value.value_id()
            items: list[Message] = []
            if is_proposer:
                body = ProposalBody(NETWORK, epoch, round_, value_id, -1)
                signature = self.signer.sign(records.PROPOSAL_CONTEXT, wire.signing_bytes(body))
                items.append(Proposal(body, value, self.signer.peer_id, signature))
            for kind in VoteKind:
                vote_body = VoteBody(kind, NETWORK, epoch, round_, value_id)
                signature = self.signer.sign(
                    records.vote_context(kind), wire.signing_bytes(vote_body)
                )
                items.append(Vote(vote_body, self.signer.peer_id, signature))
            out += [(peer_id, item) for peer_id in sorted(half) for item in items]
        return out


@dataclass
class Network:
    """Honest state machines, a queue of deliveries and timers ordered by a mock clock."""

    nodes: dict[PeerId, EpochAgreement]
    rng: random.Random
    byzantine: list[Byzantine] = field(default_factory=list)
    max_delay: float = 0.5
    drop: Callable[[float, PeerId, Message], bool] = lambda now, to, message: False
    rebroadcast_every: float | None = None
    now: float = 0.0
    decisions: dict[PeerId, EpochRecord] = field(default_factory=dict)
    delivered: int = 0
    journal: dict[PeerId, list[Proposal | Vote]] | None = None
    """If set: what each peer's glue persists (its own messages, the proposals it received)."""
    _queue: list[tuple[float, int, str, PeerId, object]] = field(default_factory=list)
    _sequence: itertools.count[int] = field(default_factory=itertools.count)

    def push(self, at: float, kind: str, to: PeerId, item: object) -> None:
        heapq.heappush(self._queue, (at, next(self._sequence), kind, to, item))

    def send(self, to: PeerId, message: Message) -> None:
        if self.drop(self.now, to, message):
            return
        self.push(self.now + self.rng.uniform(0.0, self.max_delay), "message", to, message)

    def broadcast(self, sender: PeerId, messages: Sequence[Message]) -> None:
        for message in messages:
            for peer_id in [*self.nodes, *(b.signer.peer_id for b in self.byzantine)]:
                if peer_id != sender:
                    self.send(peer_id, message)

    def apply(self, peer_id: PeerId, output: Output) -> None:
        if self.journal is not None:
            own = [m for m in output.messages if isinstance(m, Proposal | Vote)]
            self.journal.setdefault(peer_id, []).extend(own)
        self.broadcast(peer_id, output.messages)
        for timeout in output.timeouts:
            assert timeout.deadline > self.now
            self.push(timeout.deadline, "timeout", peer_id, timeout)
        if output.decision is not None:
            assert peer_id not in self.decisions, "a peer decided twice"
            self.decisions[peer_id] = output.decision

    def run(self, until: float = 200.0) -> None:
        for peer_id, node in self.nodes.items():
            if not node.started:
                self.apply(peer_id, node.start(self.now))
                if self.rebroadcast_every is not None:
                    self.push(self.now + self.rebroadcast_every, "rebroadcast", peer_id, None)
        while self._queue and len(self.decisions) < len(self.nodes):
            at, _, kind, peer_id, item = heapq.heappop(self._queue)
            if at > until:
                heapq.heappush(self._queue, (at, next(self._sequence), kind, peer_id, item))
                self.now = until
                break
            self.now = at
            if kind == "rebroadcast":
                self.broadcast(peer_id, self.nodes[peer_id].rebroadcast())
                assert self.rebroadcast_every is not None
                self.push(at + self.rebroadcast_every, "rebroadcast", peer_id, None)
                continue
            fault = next((b for b in self.byzantine if b.signer.peer_id == peer_id), None)
            if fault is not None:
                if kind == "message":
                    assert isinstance(item, Proposal | Vote | EpochRecord)
                    for to, message in fault.react(item):
                        self.send(to, message)
                continue
            target = self.nodes.get(peer_id)
            if target is None:  # crashed
                continue
            if kind == "message":
                assert isinstance(item, Proposal | Vote | EpochRecord)
                self.delivered += 1
                if self.journal is not None and isinstance(item, Proposal):
                    self.journal.setdefault(peer_id, []).append(item)
                self.apply(peer_id, target.handle(item, self.now))
            else:
                assert isinstance(item, Timeout)
                self.apply(peer_id, target.on_timeout(item, self.now))

    def agreed(self) -> EpochRecord:
        """All honest peers decided, on one value, with a certificate that verifies."""
        assert set(self.decisions) == set(self.nodes), "some honest peer did not decide"
        values = {record.value for record in self.decisions.values()}
        assert len(values) == 1, "honest peers decided different values"
        for record in self.decisions.values():
            record.verify(next(iter(self.nodes.values())).committee, NETWORK)
        return next(iter(self.decisions.values()))


def honest_nodes(
    identities: Sequence[Identity],
    committee: Committee,
    *,
    validate: Callable[[EpochValue], bool] = lambda value: True,
) -> dict[PeerId, EpochAgreement]:
    return {
        ident.peer_id: EpochAgreement(
            network_id=NETWORK,
            committee=committee,
            signer=ident,
            own_value=value_for(committee, 1000 + index),
            validate=validate,
            timeouts=TIMEOUTS,
        )
        for index, ident in enumerate(identities)
    }


# Five peers in proposer order holding 3, 2, 2, 2, 1 of n = 10 shards (f = 3, quorum 7).
SHARDS = [3, 2, 2, 2, 1]
PEERS, COMMITTEE = arrange(SHARDS)


# --------------------------------------------------------------------------------------------
# Agreement under random delivery orders


@pytest.mark.parametrize("seed", range(12))
def test_all_honest_decide_the_same_value(seed: int) -> None:
    network = Network(honest_nodes(PEERS, COMMITTEE), random.Random(seed), max_delay=2.0)
    network.run()
    record = network.agreed()
    assert record.value == value_for(COMMITTEE, 1000) or record.certificate.round > 0
    assert records.verify_epoch_chain(COMMITTEE, [record], NETWORK) == record.committee


def test_fast_path_decides_the_first_proposal_in_round_zero() -> None:
    network = Network(honest_nodes(PEERS, COMMITTEE), random.Random(1), max_delay=0.1)
    network.run()
    record = network.agreed()
    assert record.certificate.round == 0
    assert record.value == value_for(COMMITTEE, 1000)
    assert network.now < TIMEOUTS.propose


# --------------------------------------------------------------------------------------------
# Crashes: a dead proposer only delays the change


@pytest.mark.parametrize("seed", range(4))
def test_crashed_round_zero_proposer_delays_only(seed: int) -> None:
    nodes = honest_nodes(PEERS, COMMITTEE)
    del nodes[PEERS[0].peer_id]  # the round-0 proposer, 3 of 10 shards, never starts
    network = Network(nodes, random.Random(seed))
    network.run()
    record = network.agreed()
    assert record.certificate.round >= 1
    assert record.value != value_for(COMMITTEE, 1000)  # the dead proposer's value
    assert network.now > TIMEOUTS.propose


def test_two_crashed_proposers_in_a_row() -> None:
    """Rounds 0 and 1 have dead proposers (4 of 13 shards: just under a third)."""
    peers, committee = arrange([2, 2, 3, 3, 3], salt=2)
    nodes = honest_nodes(peers, committee)
    del nodes[peers[0].peer_id], nodes[peers[1].peer_id]
    network = Network(nodes, random.Random(5))
    network.run()
    assert network.agreed().certificate.round >= 2


def test_a_third_of_the_weight_crashed_blocks_without_forking() -> None:
    """Control for the quorum arithmetic: with 4 of 10 shards down nobody can decide (6 < 7),
    and once the peer is back (rebroadcasts fill it in) everyone decides."""
    peers, committee = arrange([1, 4, 2, 2, 1], salt=3)
    nodes = honest_nodes(peers, committee)
    down = nodes.pop(peers[1].peer_id)
    network = Network(nodes, random.Random(0), rebroadcast_every=2.0)
    network.run(until=60.0)
    assert network.decisions == {}
    assert network.delivered > 0
    network.nodes[peers[1].peer_id] = down
    network.run(until=200.0)
    assert network.agreed()


def test_timeouts_grow_with_the_round() -> None:
    node = honest_nodes(PEERS, COMMITTEE)[PEERS[1].peer_id]
    output = node.start(10.0)
    assert output.timeouts == (Timeout(Step.PROPOSE, 0, 13.0),)
    output = node.on_timeout(output.timeouts[0], 13.0)
    assert [vote.value_id for vote in output.messages if isinstance(vote, Vote)] == [None]
    durations = [TIMEOUTS.duration(step, r) for step in Step for r in (0, 5)]
    assert durations == [3.0, 8.0, 1.0, 6.0, 1.0, 6.0]


# --------------------------------------------------------------------------------------------
# Byzantine peers: equivocation cannot fork, and less than a third cannot block


def split(peers: Sequence[Identity], faulty: set[PeerId]) -> tuple[set[PeerId], set[PeerId]]:
    honest = [ident.peer_id for ident in peers if ident.peer_id not in faulty]
    return set(honest[::2]), set(honest[1::2])


@pytest.mark.parametrize("seed", range(10))
def test_equivocating_proposer_cannot_fork(seed: int) -> None:
    """The round-0 proposer (3 of 10 shards) sends value A to one half and B to the other, and
    votes for both, in every round; the honest 7 shards still decide exactly one value."""
    liar = PEERS[0]
    halves = split(PEERS, {liar.peer_id})
    nodes = honest_nodes(PEERS[1:], COMMITTEE)
    network = Network(
        nodes,
        random.Random(seed),
        byzantine=[Byzantine(liar, COMMITTEE, halves)],
        max_delay=1.5,
    )
    network.push(0.0, "message", liar.peer_id, _nudge(liar))
    network.run()
    network.agreed()


@pytest.mark.parametrize("seed", range(8))
def test_two_byzantine_peers_just_under_a_third(seed: int) -> None:
    """Faulty peers holding 2 + 2 of 13 shards (f = 4) equivocate in every round while one honest
    peer is slow; the honest 9 shards (quorum) decide one value."""
    peers, committee = arrange([2, 3, 2, 3, 3], salt=4)
    faulty = {peers[0].peer_id, peers[2].peer_id}
    halves = split(peers, faulty)
    liars = [Byzantine(ident, committee, halves) for ident in peers if ident.peer_id in faulty]
    nodes = honest_nodes([ident for ident in peers if ident.peer_id not in faulty], committee)
    network = Network(nodes, random.Random(seed), byzantine=liars, max_delay=1.5)
    for liar in liars:
        network.push(0.0, "message", liar.signer.peer_id, _nudge(liar.signer))
    network.run()
    network.agreed()


def _nudge(liar: Identity) -> Message:
    """A message of round 0 that makes a Byzantine peer act at once."""
    body = VoteBody(VoteKind.PREVOTE, NETWORK, Epoch(1), 0, None)
    signature = liar.sign(records.PREVOTE_CONTEXT, wire.signing_bytes(body))
    return Vote(body, liar.peer_id, signature)


def test_equivocating_votes_are_counted_once_and_kept_as_evidence() -> None:
    _, b, c, d, e = PEERS  # weights 2, 2, 2, 1 (the proposer holds 3)
    node = honest_nodes(PEERS, COMMITTEE)[c.peer_id]
    node.start(0.0)
    proposal = _proposal(PEERS[0], value_for(COMMITTEE, 5))
    value_id = proposal.value.value_id()
    output = node.handle(proposal, 0.1)
    assert [message.value_id for message in output.messages if isinstance(message, Vote)] == [
        value_id
    ]  # c prevotes (2)
    node.handle(_vote(b, VoteKind.PREVOTE, None), 0.2)
    output = node.handle(_vote(b, VoteKind.PREVOTE, value_id), 0.3)  # b equivocates
    assert len(node.evidence) == 1
    node.handle(_vote(e, VoteKind.PREVOTE, value_id), 0.4)
    output = node.handle(_vote(d, VoteKind.PREVOTE, value_id), 0.5)
    # Counted once, b's second vote would make 2 + 2 + 2 + 1 = 7: a polka. It must not.
    assert not any(isinstance(m, Vote) and m.kind is VoteKind.PRECOMMIT for m in output.messages)
    output = node.handle(_vote(PEERS[0], VoteKind.PREVOTE, value_id), 0.6)
    precommits = [m for m in output.messages if isinstance(m, Vote)]
    assert [(m.kind, m.value_id) for m in precommits] == [(VoteKind.PRECOMMIT, value_id)]
    assert node.locked_round == 0
    # The same equivocation again adds no second piece of evidence.
    node.handle(_vote(b, VoteKind.PREVOTE, value_for(COMMITTEE, 6).value_id()), 0.7)
    assert len(node.evidence) == 1


def test_equivocating_proposal_is_evidence() -> None:
    node = honest_nodes(PEERS, COMMITTEE)[PEERS[2].peer_id]
    node.start(0.0)
    node.handle(_proposal(PEERS[0], value_for(COMMITTEE, 5)), 0.1)
    node.handle(_proposal(PEERS[0], value_for(COMMITTEE, 6)), 0.2)
    assert len(node.evidence) == 1
    assert isinstance(node.evidence[0].first, Proposal)


def _proposal(signer: Identity, value: EpochValue, round_: int = 0, valid: int = -1) -> Proposal:
    body = ProposalBody(NETWORK, Epoch(1), round_, value.value_id(), valid)
    signature = signer.sign(records.PROPOSAL_CONTEXT, wire.signing_bytes(body))
    return Proposal(body, value, signer.peer_id, signature)


def _vote(signer: Identity, kind: VoteKind, value_id: bytes | None, round_: int = 0) -> Vote:
    body = VoteBody(kind, NETWORK, Epoch(1), round_, value_id)
    signature = signer.sign(records.vote_context(kind), wire.signing_bytes(body))
    return Vote(body, signer.peer_id, signature)


# --------------------------------------------------------------------------------------------
# Bad messages, lost messages, late peers


def test_forged_and_foreign_messages_are_dropped() -> None:
    node = honest_nodes(PEERS, COMMITTEE)[PEERS[2].peer_id]
    node.start(0.0)
    value = value_for(COMMITTEE, 5)
    outsider = make_identities(1, salt=8)[0]
    good = _proposal(PEERS[0], value)
    bad_messages: list[Message] = [
        _proposal(PEERS[1], value),  # not the proposer of round 0
        replace(good, signature=bytes(64)),  # bad signature
        replace(good, value=value_for(COMMITTEE, 6)),  # signs another value
        replace(good, proposer=outsider.peer_id),
        _vote(outsider, VoteKind.PREVOTE, value.value_id()),  # not a member
        _proposal(PEERS[0], value, round_=consensus.MAX_ROUNDS_AHEAD + 5),  # too far ahead
    ]
    wrong_network = VoteBody(VoteKind.PREVOTE, bytes(32), Epoch(1), 0, None)
    bad_messages.append(
        Vote(
            wrong_network,
            PEERS[1].peer_id,
            PEERS[1].sign(records.PREVOTE_CONTEXT, wire.signing_bytes(wrong_network)),
        )
    )
    for message in bad_messages:
        assert node.handle(message, 0.5) == Output()
    assert node.step is Step.PROPOSE and node.evidence == []
    output = node.handle(good, 0.6)
    assert len(output.messages) == 1


def test_messages_survive_the_wire() -> None:
    proposal = _proposal(PEERS[0], value_for(COMMITTEE, 5))
    vote = _vote(PEERS[1], VoteKind.PRECOMMIT, None, round_=3)
    for message in (proposal, vote):
        decoded = wire.decode(wire.encode(message), consensus.MESSAGE_TYPES)
        assert decoded == message


def test_lossy_network_decides_after_it_heals() -> None:
    """Until t = 20 every message is lost; periodic rebroadcasts then bring everyone to agree."""
    network = Network(
        honest_nodes(PEERS, COMMITTEE),
        random.Random(3),
        drop=lambda now, to, message: now < 20.0,
        rebroadcast_every=2.0,
    )
    network.run(until=300.0)
    assert network.agreed().certificate.round >= 1


def test_lossy_network_random_drops() -> None:
    rng = random.Random(11)
    network = Network(
        honest_nodes(PEERS, COMMITTEE),
        random.Random(4),
        drop=lambda now, to, message: now < 30.0 and rng.random() < 0.4,
        rebroadcast_every=2.0,
    )
    network.run(until=300.0)
    network.agreed()


def test_late_peer_adopts_a_certified_record() -> None:
    network = Network(honest_nodes(PEERS, COMMITTEE), random.Random(2))
    late = network.nodes.pop(PEERS[4].peer_id)
    network.run()
    record = network.agreed()
    assert late.adopt(record).decision == record
    assert late.decision == record
    assert late.adopt(record).decision is None  # reported once
    fresh = honest_nodes(PEERS, COMMITTEE)[PEERS[4].peer_id]
    forged = replace(record, value=value_for(COMMITTEE, 4242))
    with pytest.raises(VerificationError):
        fresh.adopt(forged)
    assert fresh.decision is None


def test_straggler_decides_from_rebroadcast() -> None:
    """A peer that missed everything decides from a decided peer's rebroadcast alone."""
    network = Network(honest_nodes(PEERS, COMMITTEE), random.Random(6))
    straggler = network.nodes.pop(PEERS[3].peer_id)
    network.run()
    record = network.agreed()
    straggler.start(network.now)
    messages = next(iter(network.nodes.values())).rebroadcast()
    output = Output()
    for message in messages:
        output = straggler.handle(message, network.now)
        if output.decision is not None:
            break
    assert output.decision == record


def test_validation_is_applied_before_prevoting() -> None:
    """Honest peers refuse values their check rejects: the decided value passes it."""
    rejected = value_for(COMMITTEE, 1000)  # what the round-0 proposer proposes

    def validate(value: EpochValue) -> bool:
        return value != rejected

    network = Network(honest_nodes(PEERS, COMMITTEE, validate=validate), random.Random(9))
    network.run()
    record = network.agreed()
    assert record.value != rejected
    assert record.certificate.round >= 1


def test_lock_is_kept_until_a_later_polka() -> None:
    """A peer that precommitted A in round 0 prevotes nil for a fresh B later (the lock is what
    stops a fork), and prevotes B once B is re-proposed with a polka newer than its lock."""
    proposer, b, c, d, e = PEERS  # proposer of round r is PEERS[r % 5]
    node = honest_nodes(PEERS, COMMITTEE)[c.peer_id]
    node.start(0.0)
    a_value, b_value = value_for(COMMITTEE, 5), value_for(COMMITTEE, 6)
    node.handle(_proposal(proposer, a_value), 0.1)
    sent: list[Message] = []
    for voter in (proposer, b):  # with c's own prevote: 3 + 2 + 2 = 7 shards, a polka
        sent += node.handle(_vote(voter, VoteKind.PREVOTE, a_value.value_id()), 0.2).messages
    assert [(m.kind, m.value_id) for m in sent if isinstance(m, Vote)] == [
        (VoteKind.PRECOMMIT, a_value.value_id())
    ]
    assert node.locked_round == 0
    # f+1 weight in round 4 pulls the peer there; e proposes a fresh B.
    node.handle(_vote(b, VoteKind.PRECOMMIT, None, round_=4), 1.0)
    node.handle(_vote(d, VoteKind.PRECOMMIT, None, round_=4), 1.1)
    assert node.round == 4
    output = node.handle(_proposal(e, b_value, round_=4), 1.2)
    assert [m.value_id for m in output.messages if isinstance(m, Vote)] == [None]
    # A polka for B in round 2 (newer than the lock) and a re-proposal of B in round 5.
    for voter in (proposer, b, d, e):
        node.handle(_vote(voter, VoteKind.PREVOTE, b_value.value_id(), round_=2), 2.0)
    for voter in (proposer, b):
        node.handle(_vote(voter, VoteKind.PRECOMMIT, None, round_=5), 2.1)
    assert node.round == 5
    output = node.handle(_proposal(proposer, b_value, round_=5, valid=2), 2.2)
    assert [m.value_id for m in output.messages if isinstance(m, Vote)] == [b_value.value_id()]


def test_malformed_or_wrong_epoch_value_gets_a_nil_prevote() -> None:
    """A proposer's value that is no valid committee (members out of order) or names the wrong
    epoch is answered with a nil prevote, not an exception."""
    good = value_for(COMMITTEE, 5)
    unsorted = replace(good, members=tuple(reversed(good.members)))
    wrong_epoch = EpochValue.from_committee(NETWORK, COMMITTEE, 5)  # epoch 0, not 1
    for bad in (unsorted, wrong_epoch):
        node = honest_nodes(PEERS, COMMITTEE)[PEERS[1].peer_id]
        node.start(0.0)
        output = node.handle(_proposal(PEERS[0], bad), 0.1)
        assert [m.value_id for m in output.messages if isinstance(m, Vote)] == [None]


def test_observer_without_shards_learns_the_decision() -> None:
    nodes = honest_nodes(PEERS, COMMITTEE)
    observer = EpochAgreement(
        network_id=NETWORK, committee=COMMITTEE, signer=None, own_value=None, timeouts=TIMEOUTS
    )
    network = Network(nodes, random.Random(8))
    network.run()
    record = network.agreed()
    output = observer.start(0.0)
    assert output.messages == ()
    assert observer.handle(record, network.now).decision == record


@pytest.mark.parametrize("seed", range(30))
def test_random_committees_faults_and_losses(seed: int) -> None:
    """Random shard weights; faulty peers (crashed or equivocating) holding at most f shards;
    random delays; up to 30 % of messages lost until the network heals. Everyone honest decides,
    on one value. (Run with more seeds while changing the algorithm: 1,500 passed.)"""
    rng = random.Random(seed)
    shards = [rng.randint(1, 4) for _ in range(rng.randint(4, 7))]
    n = sum(shards)
    peers, committee = arrange(shards, salt=40 + seed)
    faulty: set[PeerId] = set()
    weight = 0
    for index in rng.sample(range(len(peers)), len(peers)):
        if weight + shards[index] <= (n - 1) // 3 and rng.random() < 0.6:
            faulty.add(peers[index].peer_id)
            weight += shards[index]
    honest = [ident for ident in peers if ident.peer_id not in faulty]
    liars = []
    if rng.random() < 0.5:
        halves = split(peers, faulty)
        liars = [Byzantine(ident, committee, halves) for ident in peers if ident.peer_id in faulty]
    loss, heal, losses = rng.random() * 0.3, rng.choice([0.0, 10.0, 30.0]), random.Random(seed)
    network = Network(
        honest_nodes(honest, committee),
        random.Random(seed),
        byzantine=liars,
        max_delay=rng.choice([0.5, 2.0, 6.0]),
        drop=lambda now, to, message: now < heal and losses.random() < loss,
        rebroadcast_every=3.0,
    )
    for liar in liars:
        network.push(0.0, "message", liar.signer.peer_id, _nudge(liar.signer))
    network.run(until=2000.0)
    network.agreed()


def test_proposer_re_proposes_a_polka_it_learned_late() -> None:
    """A polka of round 1 that reaches the proposer of round 3 late (say, by a rebroadcast)
    becomes its valid value: it re-proposes that value with valid round 1, so peers locked on it
    can vote for it."""
    proposer0, b, c, d, _ = PEERS  # d proposes in round 3
    node = honest_nodes(PEERS, COMMITTEE)[d.peer_id]
    node.start(0.0)
    for voter in (b, c):  # 4 shards in round 2: the peer skips there
        node.handle(_vote(voter, VoteKind.PRECOMMIT, None, round_=2), 0.05)
    assert node.round == 2
    late = value_for(COMMITTEE, 55)
    node.handle(_proposal(b, late, round_=1), 0.1)
    for voter in (proposer0, b, c):  # 3 + 2 + 2 = 7 shards
        node.handle(_vote(voter, VoteKind.PREVOTE, late.value_id(), round_=1), 0.2)
    assert node.round == 2 and node.valid_round == 1
    node.handle(_vote(b, VoteKind.PRECOMMIT, None, round_=3), 0.3)
    output = node.handle(_vote(c, VoteKind.PRECOMMIT, None, round_=3), 0.4)
    proposals = [m for m in output.messages if isinstance(m, Proposal)]
    assert [(p.round, p.value, p.body.valid_round) for p in proposals] == [(3, late, 1)]
    assert node.locked_round == -1  # a late polka never locks
    assert late in {m.value for m in node.rebroadcast() if isinstance(m, Proposal)}


# --------------------------------------------------------------------------------------------
# Restarts: what a peer signed survives it


def test_restart_keeps_votes_and_lock() -> None:
    proposer, b, c, d, e = PEERS
    node = honest_nodes(PEERS, COMMITTEE)[c.peer_id]
    sent: list[Message] = list(node.start(0.0).messages)
    a_value, b_value = value_for(COMMITTEE, 5), value_for(COMMITTEE, 6)
    a_proposal = _proposal(proposer, a_value)
    sent += node.handle(a_proposal, 0.1).messages
    for voter in (proposer, b):
        sent += node.handle(_vote(voter, VoteKind.PREVOTE, a_value.value_id()), 0.2).messages
    own = [m for m in sent if isinstance(m, Vote) and m.signer == c.peer_id]
    assert [(m.kind, m.round) for m in own] == [(VoteKind.PREVOTE, 0), (VoteKind.PRECOMMIT, 0)]

    # The process dies; a new one is built from what the glue persisted.
    restarted = honest_nodes(PEERS, COMMITTEE)[c.peer_id]
    restarted.restore([*own, a_proposal])
    output = restarted.start(5.0)
    assert set(output.messages) == set(own)  # it resends, and signs nothing new
    assert (restarted.round, restarted.step, restarted.locked_round) == (0, Step.PRECOMMIT, 0)
    assert restarted.handle(a_proposal, 5.1).messages == ()
    # Still locked on A: a fresh B in round 4 gets a nil prevote.
    restarted.handle(_vote(b, VoteKind.PRECOMMIT, None, round_=4), 6.0)
    restarted.handle(_vote(d, VoteKind.PRECOMMIT, None, round_=4), 6.1)
    output = restarted.handle(_proposal(e, b_value, round_=4), 6.2)
    assert [m.value_id for m in output.messages if isinstance(m, Vote)] == [None]


def test_restore_rejects_forged_messages() -> None:
    node = honest_nodes(PEERS, COMMITTEE)[PEERS[2].peer_id]
    forged = replace(_vote(PEERS[2], VoteKind.PREVOTE, None), signature=bytes(64))
    with pytest.raises(VerificationError):
        node.restore([forged])
    node.start(0.0)
    with pytest.raises(ValueError, match="before start"):
        node.restore([])


@pytest.mark.parametrize("seed", range(6))
def test_peers_restarting_mid_agreement_still_agree(seed: int) -> None:
    """Every second and a half one undecided honest peer is replaced by a fresh process restored
    from its journal (what it signed, the proposals it received); all still decide one value."""
    rng = random.Random(seed)
    nodes = honest_nodes(PEERS, COMMITTEE)
    network = Network(nodes, random.Random(seed), max_delay=3.0, rebroadcast_every=2.0, journal={})
    assert network.journal is not None
    until = 0.0
    restarts = 0
    while until < 300.0:
        until += 1.5
        network.run(until=until)
        undecided = sorted(set(nodes) - set(network.decisions))
        if not undecided:
            break
        victim = rng.choice(undecided)
        fresh = honest_nodes(PEERS, COMMITTEE)[victim]
        fresh.restore(network.journal.get(victim, []))
        network.nodes[victim] = fresh
        restarts += 1
    network.agreed()
    assert restarts >= 1
