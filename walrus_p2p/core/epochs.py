"""Epoch changes around the agreement: what a peer proposes, what it accepts, and the sync messages.

Owner: the application rules of an epoch change (docs/design.md §6.4, ``docs/epochs.md``), kept
pure so that every peer computes the same thing from the same inputs.
:mod:`walrus_p2p.core.consensus` decides *one* value; this module says which values an honest
peer proposes and prevotes:

- :func:`member_weight` -- the single source of a member's weight: a genesis member keeps its
  genesis weight, any other candidate gets at most the smallest genesis weight (a newcomer cannot
  buy a majority of shards by declaring a large weight); on a network with an economy that base
  is scaled to a bootstrap stake and the member's active stake is added (shards from stake);
- :func:`propose_next` -- the committee of epoch e+1 from the verified candidacies a peer has
  seen: members of epoch e that renewed their candidacy during e (a member that nobody heard
  from for the whole epoch is dropped), plus new candidates; D'Hondt with the genesis cap and
  minimal moves from epoch e; start time ``genesis.epoch_start(e+1)``;
- :func:`check_next` -- the ``validate`` callback: the start time is the scheduled one, weights
  come from :func:`member_weight`, the shard map is exactly D'Hondt with minimal moves for the
  proposed members, and every newcomer has a candidacy this peer verified. It does not judge
  which members were dropped (that depends on what each peer heard): a faulty proposer can
  drop live members for one epoch, never add unknown keys or skew the shard map.

The sync messages (:class:`GetEpochRecordsRequest` / :class:`GetEpochRecordsReply`, type ids
65/66) let a peer or light peer fetch the epoch records it lacks over a stream; the asker verifies
the chain itself (:func:`walrus_p2p.core.records.verify_epoch_chain`). The consensus messages of
an agreement travel directly between committee members in :class:`EpochMessagesRequest` /
:class:`EpochMessagesReply` (type ids 82/83; docs/epochs.md, "Transport").
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated

from walrus_p2p.core import wire
from walrus_p2p.core.committee import Committee, Member, is_quorum
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.core.records import Candidacy, EpochNumber, EpochRecord, EpochValue, Round
from walrus_p2p.core.wire import BytesSpec, IntSpec, ListSpec, Message, register
from walrus_p2p.errors import ConfigError, VerificationError, WireError
from walrus_p2p.types import Epoch, PeerId

MAX_EPOCH_RECORD_SIZE = 256 * 1024
"""256 members with 8 addresses each and 256 precommits stay well under this."""
MAX_EPOCH_RECORDS_PER_REPLY = 32
"""Records per sync reply; the asker pages with ``from_epoch``."""


# --------------------------------------------------------------------------------------------
# Sync messages


@register(65)
@dataclass(frozen=True, slots=True)
class GetEpochRecordsRequest(Message):
    """Ask for the epoch records of epochs ``from_epoch`` .. (at most ``limit`` of them)."""

    from_epoch: EpochNumber
    limit: Annotated[int, IntSpec(1, MAX_EPOCH_RECORDS_PER_REPLY)]


EncodedEpochRecords = Annotated[
    tuple[bytes, ...],
    ListSpec(
        BytesSpec(min_length=1, max_length=MAX_EPOCH_RECORD_SIZE), MAX_EPOCH_RECORDS_PER_REPLY
    ),
]


@register(66)
@dataclass(frozen=True, slots=True)
class GetEpochRecordsReply(Message):
    """Consecutive records from the requested epoch on (each its canonical encoding), and the
    latest epoch the serving peer knows: the asker pages until it reaches ``latest_epoch``."""

    records: EncodedEpochRecords
    latest_epoch: EpochNumber


MAX_EPOCH_MESSAGES_PER_BATCH = 256
"""Consensus messages in one direct batch (a peer's own messages of every round plus one polka
fit: three a round, and at most one prevote per member)."""
INCARNATION_LENGTH = 8
Incarnation = Annotated[
    bytes, BytesSpec(min_length=INCARNATION_LENGTH, max_length=INCARNATION_LENGTH)
]

EncodedConsensusMessages = Annotated[
    tuple[bytes, ...],
    ListSpec(
        BytesSpec(min_length=1, max_length=MAX_EPOCH_RECORD_SIZE), MAX_EPOCH_MESSAGES_PER_BATCH
    ),
]


@register(82)
@dataclass(frozen=True, slots=True)
class EpochMessagesRequest(Message):
    """Consensus messages (``Proposal``, ``Vote``, ``EpochRecord`` encodings) sent directly to one
    committee member, with the sender's position: the epoch it is agreeing on, its round, and
    the random ``incarnation`` of its process (a new one tells the receiver that the sender
    restarted and lost what it was sent). docs/epochs.md, "Transport"."""

    epoch: EpochNumber
    round: Round
    incarnation: Incarnation
    messages: EncodedConsensusMessages


@register(83)
@dataclass(frozen=True, slots=True)
class EpochMessagesReply(Message):
    """The receiver's answer: its own position, and what it saw the sender lacks (the record of
    an epoch the sender is still agreeing on, or its own messages and polka after the sender
    restarted or fell behind). Empty in the common case."""

    epoch: EpochNumber
    round: Round
    messages: EncodedConsensusMessages


def decode_epoch_records(encoded: tuple[bytes, ...]) -> list[EpochRecord]:
    """Decode records of a sync reply; ``WireError`` on anything malformed."""
    return [wire.decode(item, EpochRecord) for item in encoded]


# --------------------------------------------------------------------------------------------
# Weights and proposals


def newcomer_weight_cap(genesis: Genesis) -> int:
    """The largest weight a peer outside the genesis committee can have: the smallest positive
    genesis weight."""
    weights = [member.weight for member in genesis.members if member.weight > 0]
    return min(weights) if weights else 1


def member_weight(
    genesis: Genesis,
    peer_id: PeerId,
    declared: int,
    stake: Mapping[PeerId, int] | None = None,
) -> int:
    """The weight a member gets in every committee after genesis (the one weight source).

    Without an economy (``stake`` None): genesis members keep their genesis weight whatever
    they declare; others get what they declare, capped at :func:`newcomer_weight_cap`.

    On a network with an economy, ``stake`` is the active stake per peer that the next
    committee counts (``Ledger.stake_after`` of the settlement in the same epoch value), and
    the weight is a **bootstrap stake** plus that stake: ``base · stake_per_weight +
    stake``, where ``base`` is the genesis weight of a genesis member and
    :func:`newcomer_weight_cap` for anyone else (declarations do not count: stake decides the
    differences). So shards follow D'Hondt over stake, and a network without stake keeps its
    genesis proportions (docs/economics.md, "Shards from stake").
    """
    if peer_id in genesis.committee:
        base = genesis.committee.member(peer_id).weight
    elif stake is None:
        return max(0, min(declared, newcomer_weight_cap(genesis)))
    else:
        base = newcomer_weight_cap(genesis)
    if stake is None:
        return base
    return base * genesis.economy_or_default.stake_per_weight + stake.get(peer_id, 0)


def is_renewed(candidacy: Candidacy | None, next_epoch: int) -> bool:
    """Signed for ``next_epoch`` or later: its peer was alive during the epoch before."""
    return candidacy is not None and candidacy.body.epoch >= next_epoch


def propose_next(
    genesis: Genesis,
    current: Committee,
    candidacies: Mapping[PeerId, Candidacy],
    also_alive: Collection[PeerId] = (),
    stake: Mapping[PeerId, int] | None = None,
    excluded: Collection[PeerId] = (),
) -> EpochValue:
    """The value this peer proposes for epoch ``current.epoch + 1``.

    ``candidacies`` are verified, the latest per peer. Members of ``current`` stay if they renewed
    their candidacy for the next epoch or are in ``also_alive`` (the caller heard from them during
    the epoch in another way: a connection, a signed message); candidates with a renewed
    candidacy join. If that leaves
    too few peers to fill n shards under the cap (or no quorum of the current shard weight renewed,
    which means this peer is probably the one cut off), every current member stays.
    """
    next_epoch = Epoch(current.epoch + 1)
    members: dict[PeerId, Member] = {}
    for member in current.members:
        if member.peer_id in excluded:
            continue
        candidacy = candidacies.get(member.peer_id)
        if is_renewed(candidacy, next_epoch):
            assert candidacy is not None
            members[member.peer_id] = _member_of(genesis, candidacy, stake)
        elif member.peer_id in also_alive:
            members[member.peer_id] = Member(
                peer_id=member.peer_id,
                public_key=member.public_key,
                weight=member_weight(genesis, member.peer_id, member.weight, stake),
                addresses=member.addresses,
            )
    renewed_weight = current.shard_weight(members)
    for peer_id, candidacy in sorted(candidacies.items()):
        if peer_id in excluded:
            continue
        if peer_id not in members and peer_id not in current and is_renewed(candidacy, next_epoch):
            member = _member_of(genesis, candidacy, stake)
            if member.weight > 0:
                members[peer_id] = member
    committee = None
    if is_quorum(renewed_weight, current.n_shards):
        committee = _try_create(genesis, next_epoch, members.values(), current)
    if committee is None:
        kept = {
            member.peer_id: _reweighed(genesis, member, stake)
            for member in current.members
            if member.peer_id not in excluded
        }
        kept.update({peer_id: m for peer_id, m in members.items() if peer_id not in current})
        committee = _try_create(genesis, next_epoch, kept.values(), current)
    if committee is None:  # even the voted-out members are kept rather than no committee
        everyone = [_reweighed(genesis, member, stake) for member in current.members]
        committee = _try_create(genesis, next_epoch, everyone, current)
    if committee is None:  # the current committee always fills its own shards
        raise ConfigError(f"cannot build a committee for epoch {next_epoch}")
    return EpochValue.from_committee(genesis.network_id, committee, genesis.epoch_start(next_epoch))


def _member_of(
    genesis: Genesis, candidacy: Candidacy, stake: Mapping[PeerId, int] | None
) -> Member:
    member = candidacy.member()
    return Member(
        peer_id=member.peer_id,
        public_key=member.public_key,
        weight=member_weight(genesis, member.peer_id, candidacy.body.weight, stake),
        addresses=member.addresses,
    )


def _reweighed(genesis: Genesis, member: Member, stake: Mapping[PeerId, int] | None) -> Member:
    """A current member kept as it is, with its weight by the rule for the next committee."""
    if stake is None:
        return member
    return Member(
        peer_id=member.peer_id,
        public_key=member.public_key,
        weight=member_weight(genesis, member.peer_id, member.weight, stake),
        addresses=member.addresses,
    )


def _try_create(
    genesis: Genesis, epoch: Epoch, members: Iterable[Member], previous: Committee
) -> Committee | None:
    try:
        return Committee.create(
            epoch,
            tuple(members),
            genesis.n_shards,
            max_shards_per_peer=genesis.max_shards_per_peer,
            previous=previous,
        )
    except ConfigError:
        return None


def check_next(
    genesis: Genesis,
    current: Committee,
    candidacies: Mapping[PeerId, Candidacy],
    value: EpochValue,
    stake: Mapping[PeerId, int] | None = None,
    excluded: Collection[PeerId] = (),
) -> bool:
    """The ``validate`` callback of the agreement for epoch ``current.epoch + 1`` (see module);
    ``stake`` as for :func:`member_weight` (None without an economy); ``excluded``: voted-out
    peers the committee must not include unless it cannot be formed without them."""
    try:
        _check_next(genesis, current, candidacies, value, stake, excluded)
    except (VerificationError, ConfigError, WireError):
        return False
    return True


def _check_next(
    genesis: Genesis,
    current: Committee,
    candidacies: Mapping[PeerId, Candidacy],
    value: EpochValue,
    stake: Mapping[PeerId, int] | None,
    excluded: Collection[PeerId] = (),
) -> None:
    next_epoch = current.epoch + 1
    if value.network_id != genesis.network_id or value.epoch != next_epoch:
        raise VerificationError("value for another network or epoch")
    if value.start_time != genesis.epoch_start(next_epoch):
        raise VerificationError("start time is not the scheduled one")
    committee = value.committee
    for member in committee.members:
        if member.peer_id not in current:
            candidacy = candidacies.get(member.peer_id)
            if candidacy is None or candidacy.body.public_key != member.public_key:
                raise VerificationError(f"no candidacy known for newcomer {member.peer_id}")
            declared = candidacy.body.weight
        else:
            declared = member.weight
        rule_weight = member_weight(genesis, member.peer_id, declared, stake)
        if member.weight != rule_weight or member.weight < 1:
            raise VerificationError(f"weight of {member.peer_id} is not its rule weight")
    expected = Committee.create(
        committee.epoch,
        committee.members,
        genesis.n_shards,
        max_shards_per_peer=genesis.max_shards_per_peer,
        previous=current,
    )
    if expected.shard_map != committee.shard_map:
        raise VerificationError("shard map is not D'Hondt with minimal moves")
    kept_out = [member for member in committee.members if member.peer_id in excluded]
    if kept_out:
        others = [member for member in committee.members if member.peer_id not in excluded]
        if others and _try_create(genesis, committee.epoch, others, current) is not None:
            raise VerificationError(f"voted-out member {kept_out[0].peer_id} kept")


__all__ = [
    "INCARNATION_LENGTH",
    "MAX_EPOCH_MESSAGES_PER_BATCH",
    "MAX_EPOCH_RECORDS_PER_REPLY",
    "EpochMessagesReply",
    "EpochMessagesRequest",
    "GetEpochRecordsReply",
    "GetEpochRecordsRequest",
    "check_next",
    "decode_epoch_records",
    "is_renewed",
    "member_weight",
    "newcomer_weight_cap",
    "propose_next",
]
