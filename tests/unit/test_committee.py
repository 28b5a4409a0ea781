"""Quorum arithmetic, D'Hondt shard assignment with a cap and minimal moves, the Committee value."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walrus_p2p.core import committee as c
from walrus_p2p.core.committee import Committee, Member
from walrus_p2p.core.identity import Identity
from walrus_p2p.errors import ConfigError
from walrus_p2p.types import Epoch, PeerId

P = [PeerId(f"peer-{index:02d}") for index in range(20)]


# -- quorums ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "quorum", "validity", "f"),
    [
        (4, 3, 2, 1),
        (5, 4, 2, 1),
        (7, 5, 3, 2),
        (10, 7, 4, 3),
        (100, 67, 34, 33),
        (256, 171, 86, 85),
    ],
)
def test_thresholds(n: int, quorum: int, validity: int, f: int) -> None:
    assert c.quorum_threshold(n) == quorum
    assert c.validity_threshold(n) == validity
    assert c.max_faulty(n) == f
    assert c.is_quorum(quorum, n) and not c.is_quorum(quorum - 1, n)
    assert c.is_validity(validity, n) and not c.is_validity(validity - 1, n)
    # the defining inequalities hold exactly at the threshold
    assert 3 * quorum >= 2 * n + 1 > 3 * (quorum - 1)
    assert 3 * validity >= n + 1 > 3 * (validity - 1)
    # two quorums intersect in more than f shards; a validity set beats f
    assert 2 * quorum - n >= f + 1
    assert validity >= f + 1


@pytest.mark.parametrize("n", [3, 257, 0])
def test_thresholds_reject_bad_n(n: int) -> None:
    with pytest.raises(ConfigError):
        c.quorum_threshold(n)


# -- D'Hondt --------------------------------------------------------------------------------


def test_dhondt_is_proportional() -> None:
    counts = c.allocate_shards({P[0]: 1, P[1]: 2, P[2]: 3}, 60)
    assert counts == {P[0]: 10, P[1]: 20, P[2]: 30}
    counts = c.allocate_shards({P[0]: 7, P[1]: 3}, 10)
    assert counts == {P[0]: 7, P[1]: 3}


def test_dhondt_known_result() -> None:
    # Textbook example: votes 100000, 80000, 30000, 20000 for 8 seats -> 4, 3, 1, 0.
    weights = {P[0]: 100_000, P[1]: 80_000, P[2]: 30_000, P[3]: 20_000}
    assert c.allocate_shards(weights, 8) == {P[0]: 4, P[1]: 3, P[2]: 1, P[3]: 0}


def test_dhondt_ties_go_to_lower_peer_id() -> None:
    counts = c.allocate_shards({P[2]: 1, P[0]: 1, P[1]: 1}, 4)
    assert counts == {P[0]: 2, P[1]: 1, P[2]: 1}


def test_cap_limits_and_redistributes() -> None:
    counts = c.allocate_shards({P[0]: 10, P[1]: 1, P[2]: 1, P[3]: 1}, 12, max_shards_per_peer=4)
    assert counts == {P[0]: 4, P[1]: 3, P[2]: 3, P[3]: 2}
    uncapped = c.allocate_shards({P[0]: 10, P[1]: 1, P[2]: 1, P[3]: 1}, 12)
    assert uncapped[P[0]] == 10


def test_cap_that_cannot_fill_n_is_an_error() -> None:
    with pytest.raises(ConfigError, match="cannot hold"):
        c.allocate_shards({P[0]: 1, P[1]: 1}, 10, max_shards_per_peer=4)
    with pytest.raises(ConfigError):
        c.allocate_shards({P[0]: 0, P[1]: 0}, 4)
    with pytest.raises(ConfigError):
        c.allocate_shards({P[0]: -1, P[1]: 5}, 4)


def test_zero_weight_gets_nothing() -> None:
    assert c.allocate_shards({P[0]: 0, P[1]: 1}, 4) == {P[0]: 0, P[1]: 4}


def test_assignment_without_previous_is_runs_in_peer_order() -> None:
    shard_map = c.assign_shards({P[1]: 1, P[0]: 1}, 4)
    assert shard_map == (P[0], P[0], P[1], P[1])


def test_assignment_is_deterministic_whatever_the_input_order() -> None:
    weights = {peer: (index * 7) % 5 + 1 for index, peer in enumerate(P[:9])}
    expected = c.assign_shards(weights, 100, max_shards_per_peer=20)
    items = list(weights.items())
    for seed in range(5):
        random.Random(seed).shuffle(items)
        assert c.assign_shards(dict(items), 100, max_shards_per_peer=20) == expected


# -- minimal moves --------------------------------------------------------------------------


def _counts(shard_map: tuple[PeerId, ...]) -> dict[PeerId, int]:
    result: dict[PeerId, int] = {}
    for peer in shard_map:
        result[peer] = result.get(peer, 0) + 1
    return result


def test_adding_a_member_moves_only_what_it_needs() -> None:
    before = c.assign_shards(dict.fromkeys(P[:4], 1), 20)
    after = c.assign_shards(dict.fromkeys(P[:5], 1), 20, previous=before)
    assert _counts(after) == dict.fromkeys(P[:5], 4)
    assert c.count_moves(before, after) == 4
    for old, new in zip(before, after, strict=True):
        assert old == new or new == P[4]


def test_removing_a_member_moves_only_its_shards() -> None:
    before = c.assign_shards(dict.fromkeys(P[:5], 1), 20)
    after = c.assign_shards(dict.fromkeys([P[0], P[1], P[3], P[4]], 1), 20, previous=before)
    moved = [shard for shard in range(20) if before[shard] != after[shard]]
    assert len(moved) == 4
    assert all(before[shard] == P[2] for shard in moved)


def test_weight_change_moves_only_the_difference() -> None:
    before = c.assign_shards({P[0]: 1, P[1]: 1, P[2]: 2}, 40)
    after = c.assign_shards({P[0]: 2, P[1]: 1, P[2]: 2}, 40, previous=before)
    assert _counts(after) == {P[0]: 16, P[1]: 8, P[2]: 16}
    assert c.count_moves(before, after) == 16 - 10


def test_same_weights_move_nothing_even_from_a_shuffled_map() -> None:
    weights = {P[0]: 3, P[1]: 2, P[2]: 2}
    before = list(c.assign_shards(weights, 21))
    random.Random(1).shuffle(before)
    after = c.assign_shards(weights, 21, previous=tuple(before))
    assert after == tuple(before)


def test_ties_prefer_keeping_shards() -> None:
    # P[1] already holds two shards; a tie at the last seat keeps them rather than moving one.
    previous = (P[1], P[1], P[0], P[2])
    after = c.assign_shards(dict.fromkeys(P[:3], 1), 4, previous=previous)
    assert after == previous


@settings(max_examples=60, deadline=None)
@given(
    old=st.dictionaries(st.sampled_from(P[:8]), st.integers(1, 9), min_size=2),
    new=st.dictionaries(st.sampled_from(P[:8]), st.integers(0, 9), min_size=2),
    n=st.integers(4, 64),
)
def test_moves_are_the_minimum_for_the_new_counts(
    old: dict[PeerId, int], new: dict[PeerId, int], n: int
) -> None:
    if sum(new.values()) == 0:
        return
    before = c.assign_shards(old, n)
    after = c.assign_shards(new, n, previous=before)
    previous_counts = _counts(before)
    counts = c.allocate_shards(new, n, previous_counts=previous_counts)
    assert _counts(after) == {peer: count for peer, count in counts.items() if count}
    lower_bound = sum(max(0, held - counts.get(peer, 0)) for peer, held in previous_counts.items())
    assert c.count_moves(before, after) == lower_bound
    assert c.assign_shards(new, n, previous=before) == after


def test_previous_of_wrong_size_is_an_error() -> None:
    with pytest.raises(ConfigError):
        c.assign_shards({P[0]: 1}, 4, previous=(P[0],) * 5)


# -- Committee value ------------------------------------------------------------------------


def _member(index: int, weight: int) -> Member:
    key = Identity.from_seed(bytes([index]) * 32).public_key.raw
    return Member.from_public_key(key, weight, [f"/ip4/10.0.0.{index}/tcp/4001"])


def test_committee_lookups() -> None:
    members = [_member(1, 1), _member(2, 2), _member(3, 3)]
    committee = Committee.create(Epoch(0), members, 12)
    assert committee.n_shards == 12
    assert list(committee.peer_ids) == sorted(member.peer_id for member in members)
    for member in members:
        shards = committee.shards_of(member.peer_id)
        assert len(shards) == 2 * member.weight
        assert all(committee.peer_of(shard) == member.peer_id for shard in shards)
        assert committee.member(member.peer_id) == member
        assert member.peer_id in committee
    light, medium, heavy = (member.peer_id for member in members)  # 2, 4, 6 shards of 12
    assert committee.shard_weight([heavy, light, heavy]) == 8
    # quorum of 12 is 9 shards, validity is 5
    assert committee.is_quorum([heavy, medium]) and not committee.is_quorum([heavy, light])
    assert committee.is_validity([heavy]) and not committee.is_validity([medium])
    assert committee.is_validity([medium, light])
    assert committee.shard_weight([PeerId("unknown")]) == 0
    with pytest.raises(IndexError):
        committee.peer_of(12)


def test_committee_next_epoch_moves_minimally() -> None:
    members = [_member(index, 1) for index in range(1, 5)]
    first = Committee.create(Epoch(0), members, 20)
    second = Committee.create(Epoch(1), [*members, _member(5, 1)], 20, previous=first)
    assert c.count_moves(first.shard_map, second.shard_map) == 4


def test_committee_checks_consistency() -> None:
    members = (_member(1, 1), _member(2, 1))
    with pytest.raises(ConfigError, match="not a member"):
        Committee(Epoch(0), members, (members[0].peer_id,) * 3 + (PeerId("x"),))
    with pytest.raises(ConfigError, match="twice"):
        Committee(Epoch(0), (members[0], members[0]), (members[0].peer_id,) * 4)
    with pytest.raises(ConfigError, match="does not match"):
        Member(members[0].peer_id, members[1].public_key, 1, ())
