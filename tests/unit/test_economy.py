"""The economy's arithmetic: units, pool splits, quorum price quantiles, payout and D'Hondt."""

from __future__ import annotations

import pytest
from economy_helpers import committee_of, identities
from hypothesis import given, settings
from hypothesis import strategies as st

from walrus_p2p.core import economy
from walrus_p2p.core.economy import (
    MIB,
    Prices,
    largest_remainder,
    quorum_high,
    quorum_low,
    split_evenly,
    split_payout,
    storage_units,
)
from walrus_p2p.core.economy_messages import VoteEntry
from walrus_p2p.types import PeerId

MEMBERS = identities(5, salt=1)
IDS = [member.peer_id for member in MEMBERS]


def test_units_are_mib_of_encoded_size_rounded_up() -> None:
    assert [storage_units(size) for size in (0, 1, MIB - 1, MIB, MIB + 1, 3 * MIB)] == [
        0,
        1,
        1,
        1,
        2,
        3,
    ]
    # A 1-byte blob at n = 10 still stores n * (kp + ks) * 2 bytes.
    assert economy.encoded_size(1, 10) == 10 * (4 + 7) * 2
    quote = economy.quote(economy.encoded_size(5 * MIB, 10), 4, Prices(7, 5))
    assert quote.units == storage_units(economy.encoded_size(5 * MIB, 10))
    assert quote.storage_cost == quote.units * 7 * 4
    assert quote.write_fee == quote.units * 5
    assert quote.total == quote.storage_cost + quote.write_fee


def test_split_evenly_gives_the_remainder_to_the_first_epoch() -> None:
    assert split_evenly(10, 3, 6) == {3: 4, 4: 3, 5: 3}
    assert split_evenly(2, 0, 5) == {0: 2, 1: 0, 2: 0, 3: 0, 4: 0}
    with pytest.raises(ValueError):
        split_evenly(5, 4, 4)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**15), st.integers(0, 100), st.integers(1, 60))
def test_split_evenly_preserves_the_amount(amount: int, start: int, epochs: int) -> None:
    parts = split_evenly(amount, start, start + epochs)
    assert sum(parts.values()) == amount
    assert sorted(parts) == list(range(start, start + epochs))
    assert all(parts[e] == amount // epochs for e in parts if e != start)
    assert parts[start] == amount // epochs + amount % epochs


def test_largest_remainder_examples() -> None:
    assert largest_remainder(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    assert largest_remainder(7, {"a": 1, "b": 2, "c": 0}) == {"a": 2, "b": 5, "c": 0}
    # remainders 100*1 mod 3 = 1 and 100*2 mod 3 = 2: the larger remainder gets the unit
    assert largest_remainder(100, {"a": 1, "b": 2}) == {"a": 33, "b": 67}
    assert largest_remainder(0, {"a": 0}) == {"a": 0}
    with pytest.raises(ValueError):
        largest_remainder(1, {"a": 0})


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 10**12),
    st.dictionaries(st.text(min_size=1, max_size=3), st.integers(0, 10**6), min_size=1),
)
def test_largest_remainder_is_exact_and_fair(total: int, weights: dict[str, int]) -> None:
    if sum(weights.values()) == 0:
        return
    shares = largest_remainder(total, weights)
    assert sum(shares.values()) == total
    whole = sum(weights.values())
    for key, weight in weights.items():
        exact = total * weight / whole
        assert abs(shares[key] - exact) < 1 + 1e-9 * max(1.0, exact)


# Price quantiles --------------------------------------------------------------------------------


def test_price_is_the_lowest_that_a_quorum_voted_at_or_below() -> None:
    committee = committee_of(MEMBERS[:4], [1, 1, 1, 1], 4, epoch=1)  # one shard each, quorum 3
    votes = {IDS[0]: 10, IDS[1]: 30, IDS[2]: 20, IDS[3]: 40}
    assert quorum_low(votes, committee) == 30  # 10, 20, 30 hold 3 of 4 shards
    assert quorum_high(votes, committee) == 20  # 40, 30, 20 hold 3 of 4 shards
    # ties: two members at 20 and one at 10 reach the quorum at 20
    assert quorum_low({IDS[0]: 20, IDS[1]: 20, IDS[2]: 10, IDS[3]: 99}, committee) == 20
    # without a quorum of voters there is no price
    assert quorum_low({IDS[0]: 1, IDS[1]: 1}, committee) is None


def test_price_quantile_counts_shards_not_members() -> None:
    # weights 6:1:1:1:1 over 10 shards: the heavy member alone holds 6 < 7 (quorum of 10)
    committee = committee_of(MEMBERS, [6, 1, 1, 1, 1], 10, epoch=1)
    shards = {peer: len(committee.shards_of(peer)) for peer in IDS}
    assert shards[IDS[0]] == 6
    heavy_cheap = {IDS[0]: 5, IDS[1]: 50, IDS[2]: 60, IDS[3]: 70, IDS[4]: 80}
    assert quorum_low(heavy_cheap, committee) == 50  # 6 + 1 = 7 shards at or below 50
    heavy_dear = {IDS[0]: 500, IDS[1]: 50, IDS[2]: 60, IDS[3]: 70, IDS[4]: 80}
    # the four light members hold 4 shards: the price goes up to the heavy member's vote
    assert quorum_low(heavy_dear, committee) == 500
    # votes of non-members are ignored
    outsider = identities(1, salt=9)[0].peer_id
    assert quorum_low({**heavy_cheap, outsider: 1}, committee) == 50


def test_prices_in_force_keep_the_previous_price_without_a_quorum() -> None:
    committee = committee_of(MEMBERS[:4], [1, 1, 1, 1], 4, epoch=1)
    votes = [VoteEntry(IDS[i], 10 * (i + 1), 7, 1000 * (i + 1), 0) for i in range(3)]
    assert economy.prices_in_force(votes, committee, Prices(1, 2)) == Prices(30, 7)
    assert economy.capacity_in_force(votes, committee) == 1000
    assert economy.prices_in_force(votes[:2], committee, Prices(1, 2)) == Prices(1, 2)
    assert economy.capacity_in_force(votes[:2], committee) is None


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(1, 9), min_size=4, max_size=5),
    st.lists(st.integers(0, 1000), min_size=5, max_size=5),
)
def test_price_quantile_matches_its_definition(weights: list[int], prices: list[int]) -> None:
    members = MEMBERS[: len(weights)]
    committee = committee_of(members, weights, 13, epoch=2)
    votes = {member.peer_id: price for member, price in zip(members, prices, strict=False)}

    def at_or_below(value: int) -> int:
        return committee.shard_weight(peer for peer, vote in votes.items() if vote <= value)

    price = quorum_low(votes, committee)
    assert price is not None  # every member voted
    assert 3 * at_or_below(price) >= 2 * 13 + 1
    assert all(3 * at_or_below(value) < 2 * 13 + 1 for value in range(price))


# Payout ----------------------------------------------------------------------------------------


def test_payout_follows_shards_commission_and_stake_to_the_unit() -> None:
    committee = committee_of(MEMBERS[:3], [2, 1, 1], 8, epoch=4)
    shards = {peer: len(committee.shards_of(peer)) for peer in IDS[:3]}
    assert shards == {IDS[0]: 4, IDS[1]: 2, IDS[2]: 2}
    split = split_payout(
        100_000,
        committee,
        commissions={IDS[0]: 1000, IDS[1]: 2500},  # 10 %, 25 %; IDS[2] the default, 0 %
        stakes={IDS[0]: {b"s1": 3, b"s2": 1}, IDS[1]: {b"s3": 5}, IDS[2]: {}},
    )
    # 3 % burned: 3000; 97000 over 8 shards: 48500, 24250, 24250
    assert split.burned == 3000
    # IDS[0]: commission 4850, stakers 43650 at 3:1 -> 32737.5, 10912.5: tie by key to s1
    assert split.member_rewards[IDS[0]] == 4850
    assert split.staker_rewards[b"s1"] == 32738
    assert split.staker_rewards[b"s2"] == 10912
    # IDS[1]: 25 % of 24250 = 6062 (rounded down), the rest 18188 to its one staker
    assert split.member_rewards[IDS[1]] == 6062
    assert split.staker_rewards[b"s3"] == 18188
    # IDS[2] has no stakers: the whole share is its own
    assert split.member_rewards[IDS[2]] == 24250
    assert split.total == 100_000


def test_slashing_burns_the_commission_never_the_stakers_share() -> None:
    committee = committee_of(MEMBERS[:2], [1, 1], 4, epoch=4)
    arguments = {
        "commissions": {IDS[0]: 2000},
        "stakes": {IDS[0]: {b"s": 10}},
    }
    honest = split_payout(10_000, committee, **arguments)  # type: ignore[arg-type]
    slashed = split_payout(10_000, committee, slashed={IDS[0]}, **arguments)  # type: ignore[arg-type]
    assert slashed.staker_rewards == honest.staker_rewards
    assert IDS[0] not in slashed.member_rewards
    assert slashed.burned == honest.burned + honest.member_rewards[IDS[0]]
    assert slashed.total == honest.total == 10_000


@settings(max_examples=150, deadline=None)
@given(
    payout=st.integers(0, 10**15),
    weights=st.lists(st.integers(1, 5), min_size=4, max_size=5),
    commissions=st.lists(st.integers(0, 10_000), min_size=5, max_size=5),
    stakes=st.lists(
        st.dictionaries(st.binary(min_size=1, max_size=2), st.integers(0, 10**9), max_size=4),
        min_size=5,
        max_size=5,
    ),
    slashed=st.sets(st.integers(0, 4)),
)
def test_payout_is_exact_and_proportional(
    payout: int,
    weights: list[int],
    commissions: list[int],
    stakes: list[dict[bytes, int]],
    slashed: set[int],
) -> None:
    members = MEMBERS[: len(weights)]
    committee = committee_of(members, weights, 16, epoch=3)
    punished = {members[i].peer_id for i in slashed if i < len(members)}
    # stake ids must be distinct across members
    stake_map = {
        member.peer_id: {bytes([index]) + key: amount for key, amount in stakes[index].items()}
        for index, member in enumerate(members)
    }
    split = split_payout(
        payout,
        committee,
        commissions={m.peer_id: commissions[i] for i, m in enumerate(members)},
        stakes=stake_map,
        slashed=punished,
    )
    assert split.total == payout
    distributable = payout - payout * 300 // 10_000
    burned_commissions = split.burned - payout * 300 // 10_000
    assert burned_commissions >= 0
    assert burned_commissions == 0 or punished
    for index, member in enumerate(members):
        peer = member.peer_id
        stakers = sum(split.staker_rewards.get(key, 0) for key in stake_map[peer])
        exact = distributable * len(committee.shards_of(peer)) / 16
        if peer in punished:
            assert peer not in split.member_rewards
            continue
        share = split.member_rewards.get(peer, 0) + stakers
        assert abs(share - exact) < 1 + 1e-9 * exact  # proportional to shards, to the unit
        if sum(stake_map[peer].values()):
            assert split.member_rewards.get(peer, 0) == share * commissions[index] // 10_000


# D'Hondt over stake ----------------------------------------------------------------------------


def test_shards_from_stake_follow_dhondt_with_the_cap() -> None:
    stake = {PeerId("a"): 600, PeerId("b"): 300, PeerId("c"): 100, PeerId("d"): 0}
    assert economy.shard_counts_from_stake(stake, 10) == {"a": 6, "b": 3, "c": 1, "d": 0}
    capped = economy.shard_counts_from_stake(stake, 10, max_shards_per_peer=4)
    assert capped == {"a": 4, "b": 4, "c": 2, "d": 0}
    # quotients 600/1, 300/1, 600/2, 600/3 = 200 vs 300/2 = 150 vs 100/1: a tie at 300 between
    # a's second seat and b's first goes to the seat already held, then to the smaller id
    assert economy.shard_counts_from_stake(stake, 4) == {"a": 3, "b": 1, "c": 0, "d": 0}
    held = economy.shard_counts_from_stake(
        {PeerId("a"): 100, PeerId("b"): 100}, 5, previous_counts={PeerId("b"): 3}
    )
    assert held == {"a": 2, "b": 3}
