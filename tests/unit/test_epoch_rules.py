"""Epoch-change rules around the agreement: weights, the proposed committee, its validation."""

from __future__ import annotations

import dataclasses

import pytest

from walrus_p2p.core import wire
from walrus_p2p.core.committee import Committee, Member, count_moves
from walrus_p2p.core.epochs import (
    GetEpochRecordsReply,
    GetEpochRecordsRequest,
    check_next,
    member_weight,
    propose_next,
)
from walrus_p2p.core.genesis import EconomyGenesis, Genesis, create_genesis_toml, parse_genesis
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.records import Candidacy, EpochValue
from walrus_p2p.errors import WireError
from walrus_p2p.types import Epoch, PeerId

GENESIS_IDS = [Identity.from_seed(bytes([1, index]) * 16) for index in range(4)]
NEWCOMERS = [Identity.from_seed(bytes([2, index]) * 16) for index in range(2)]


def make_genesis(weights: list[int], cap: int | None = None) -> Genesis:
    members = [
        Member.from_public_key(ident.public_key.raw, weight, [f"/ip4/10.0.0.{i}/tcp/4001"])
        for i, (ident, weight) in enumerate(zip(GENESIS_IDS, weights, strict=True))
    ]
    text = create_genesis_toml(
        network="rules",
        n_shards=10,
        members=members,
        genesis_time=1_800_000_000,
        epoch_duration_seconds=3600,
        max_shards_per_peer=cap,
    )
    return parse_genesis(text)


def candidacy(genesis: Genesis, ident: Identity, epoch: int, weight: int = 1) -> Candidacy:
    return Candidacy.create(
        ident,
        network_id=genesis.network_id,
        epoch=epoch,
        addresses=["/ip4/10.1.0.1/tcp/4001"],
        weight=weight,
        capacity=1 << 30,
    )


def renewals(genesis: Genesis, idents: list[Identity], epoch: int) -> dict[PeerId, Candidacy]:
    return {ident.peer_id: candidacy(genesis, ident, epoch) for ident in idents}


def test_weight_source_keeps_genesis_weight_and_caps_newcomers() -> None:
    genesis = make_genesis([5, 3, 3, 2])
    assert member_weight(genesis, GENESIS_IDS[0].peer_id, declared=1) == 5
    assert member_weight(genesis, GENESIS_IDS[3].peer_id, declared=100) == 2
    assert member_weight(genesis, NEWCOMERS[0].peer_id, declared=100) == 2
    assert member_weight(genesis, NEWCOMERS[0].peer_id, declared=1) == 1


def test_all_renewed_keeps_the_committee_and_the_schedule() -> None:
    genesis = make_genesis([1, 1, 1, 1])
    value = propose_next(genesis, genesis.committee, renewals(genesis, GENESIS_IDS, 1))
    assert value.epoch == 1
    assert value.start_time == genesis.epoch_start(1)
    assert value.committee.shard_map == genesis.committee.shard_map
    assert check_next(genesis, genesis.committee, {}, value)


def test_newcomer_joins_and_silent_member_leaves_with_minimal_moves() -> None:
    genesis = make_genesis([1, 1, 1, 1])
    seen = renewals(genesis, GENESIS_IDS[:3], 1) | renewals(genesis, NEWCOMERS[:1], 1)
    value = propose_next(genesis, genesis.committee, seen)
    committee = value.committee
    assert GENESIS_IDS[3].peer_id not in committee
    assert committee.shards_of(NEWCOMERS[0].peer_id)
    # Only the silent member's shards move (to the newcomer): D'Hondt counts stay 3/3/2/2.
    assert count_moves(genesis.committee.shard_map, committee.shard_map) == len(
        genesis.committee.shards_of(GENESIS_IDS[3].peer_id)
    )
    assert check_next(genesis, genesis.committee, seen, value)


def test_stale_candidacy_is_not_a_renewal() -> None:
    genesis = make_genesis([1, 1, 1, 1])
    seen = renewals(genesis, GENESIS_IDS, 1) | renewals(genesis, NEWCOMERS[:1], 0)
    value = propose_next(genesis, genesis.committee, seen)
    assert NEWCOMERS[0].peer_id not in value.committee


def test_without_a_quorum_of_renewals_every_member_stays() -> None:
    # A proposer that heard from too few members is probably the one cut off: drop nobody.
    genesis = make_genesis([1, 1, 1, 1])
    value = propose_next(genesis, genesis.committee, renewals(genesis, GENESIS_IDS[:2], 1))
    assert set(value.committee.peer_ids) == set(genesis.committee.peer_ids)


def test_cap_is_respected() -> None:
    genesis = make_genesis([10, 1, 1, 1], cap=4)
    value = propose_next(genesis, genesis.committee, renewals(genesis, GENESIS_IDS, 1))
    assert max(len(value.committee.shards_of(p)) for p in value.committee.peer_ids) <= 4
    assert check_next(genesis, genesis.committee, {}, value)


def _with_members(value: EpochValue, committee: Committee) -> EpochValue:
    return EpochValue.from_committee(value.network_id, committee, value.start_time)


def test_validation_rejects_what_a_faulty_proposer_could_slip_in() -> None:
    genesis = make_genesis([1, 1, 1, 1])
    current = genesis.committee
    seen = renewals(genesis, GENESIS_IDS, 1) | renewals(genesis, NEWCOMERS[:1], 1)
    good = propose_next(genesis, current, seen)
    assert check_next(genesis, current, seen, good)
    # Another start time.
    assert not check_next(genesis, current, seen, dataclasses.replace(good, start_time=1))
    # A newcomer this peer has no candidacy for.
    assert not check_next(genesis, current, {}, good)
    # An inflated weight (same members, shards recomputed for it).
    members = [
        dataclasses.replace(member, weight=member.weight * 9) if index == 0 else member
        for index, member in enumerate(good.committee.members)
    ]
    inflated = Committee.create(Epoch(1), members, 10, previous=current)
    assert not check_next(genesis, current, seen, _with_members(good, inflated))
    # A shard map that is not D'Hondt with minimal moves (two owners swapped).
    shard_map = list(good.committee.shard_map)
    first = shard_map[0]
    other = next(index for index, owner in enumerate(shard_map) if owner != first)
    shard_map[0], shard_map[other] = shard_map[other], shard_map[0]
    skewed = Committee(Epoch(1), good.committee.members, tuple(shard_map))
    assert not check_next(genesis, current, seen, _with_members(good, skewed))
    # Another epoch.
    assert not check_next(genesis, current, seen, dataclasses.replace(good, epoch=Epoch(2)))


def test_sync_messages_round_trip_and_are_capped() -> None:
    request = GetEpochRecordsRequest(from_epoch=Epoch(3), limit=32)
    assert wire.decode(wire.encode(request), GetEpochRecordsRequest) == request
    reply = GetEpochRecordsReply(records=(b"\x01",), latest_epoch=Epoch(7))
    assert wire.decode(wire.encode(reply), GetEpochRecordsReply) == reply
    with pytest.raises(WireError):
        wire.encode(GetEpochRecordsRequest(from_epoch=Epoch(3), limit=33))


def test_sync_message_type_ids_are_pinned() -> None:
    assert wire.message_type_id(GetEpochRecordsRequest) == 65
    assert wire.message_type_id(GetEpochRecordsReply) == 66


def test_member_heard_from_otherwise_is_kept_without_a_renewal() -> None:
    genesis = make_genesis([1, 1, 1, 1])
    seen = renewals(genesis, GENESIS_IDS[:3], 1)
    silent = GENESIS_IDS[3].peer_id
    assert silent not in propose_next(genesis, genesis.committee, seen).committee
    value = propose_next(genesis, genesis.committee, seen, also_alive={silent})
    assert value.committee.shard_map == genesis.committee.shard_map
    assert check_next(genesis, genesis.committee, seen, value)


def economy_genesis(weights: list[int], cap: int | None = None) -> Genesis:
    return dataclasses.replace(make_genesis(weights, cap), economy=EconomyGenesis())


def test_with_an_economy_the_weight_is_bootstrap_stake_plus_active_stake() -> None:
    genesis = economy_genesis([5, 3, 3, 2])
    unit = genesis.economy_or_default.stake_per_weight
    first, newcomer = GENESIS_IDS[0].peer_id, NEWCOMERS[0].peer_id
    assert member_weight(genesis, first, declared=1, stake={}) == 5 * unit
    assert member_weight(genesis, first, declared=1, stake={first: 7}) == 5 * unit + 7
    # a newcomer's declaration does not count: the cap is its base, stake the difference
    assert member_weight(genesis, newcomer, declared=1, stake={}) == 2 * unit
    assert member_weight(genesis, newcomer, declared=100, stake={newcomer: unit}) == 3 * unit


def test_stake_moves_shards_and_validators_check_the_stake_weights() -> None:
    genesis = economy_genesis([1, 1, 1, 1], cap=6)
    unit = genesis.economy_or_default.stake_per_weight
    seen = renewals(genesis, GENESIS_IDS, 1)
    # no stake: the genesis proportions, no shard moves
    plain = propose_next(genesis, genesis.committee, seen, stake={})
    assert plain.committee.shard_map == genesis.committee.shard_map
    assert check_next(genesis, genesis.committee, seen, plain, stake={})
    # peer 1 has 5 units of stake: it holds most shards, within the cap
    heavy = GENESIS_IDS[1].peer_id
    stake = {heavy: 5 * unit}
    staked = propose_next(genesis, genesis.committee, seen, stake=stake)
    counts = {peer: len(staked.committee.shards_of(peer)) for peer in staked.committee.peer_ids}
    assert counts[heavy] == 6
    assert count_moves(genesis.committee.shard_map, staked.committee.shard_map) > 0
    assert check_next(genesis, genesis.committee, seen, staked, stake=stake)
    # a validator whose ledger counts other stake refuses it, and the plain one too
    assert not check_next(genesis, genesis.committee, seen, staked, stake={})
    assert not check_next(genesis, genesis.committee, seen, plain, stake=stake)
    # a newcomer with stake joins with its bootstrap weight plus its stake
    newcomer = NEWCOMERS[0]
    seen_all = seen | renewals(genesis, [newcomer], 1)
    joined = propose_next(genesis, genesis.committee, seen_all, stake={newcomer.peer_id: unit})
    assert joined.committee.member(newcomer.peer_id).weight == 2 * unit
    assert check_next(genesis, genesis.committee, seen_all, joined, stake={newcomer.peer_id: unit})


def test_a_voted_out_member_is_left_out_unless_the_committee_needs_it() -> None:
    genesis = make_genesis([1, 1, 1, 1])
    seen = renewals(genesis, GENESIS_IDS, 1)
    out = GENESIS_IDS[3].peer_id
    value = propose_next(genesis, genesis.committee, seen, excluded={out})
    assert out not in value.committee
    assert check_next(genesis, genesis.committee, seen, value, excluded={out})
    # a value that keeps it is refused while the others can form the committee
    kept = propose_next(genesis, genesis.committee, seen)
    assert out in kept.committee
    assert not check_next(genesis, genesis.committee, seen, kept, excluded={out})
    # with a cap the others cannot fill every shard: then it stays, and that is accepted
    capped = make_genesis([1, 1, 1, 1], cap=3)
    seen = renewals(capped, GENESIS_IDS, 1)
    needed = propose_next(capped, capped.committee, seen, excluded={out})
    assert out in needed.committee
    assert check_next(capped, capped.committee, seen, needed, excluded={out})
