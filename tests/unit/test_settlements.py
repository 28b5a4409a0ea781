"""The settlement inside the epoch value: what a proposer lists and what a validator accepts
(walrus_p2p/core/settlements.py; docs/economics.md, "Settlements in the epoch change")."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from economy_helpers import NETWORK, Orders, committee_of, identities, new_ledger

from walrus_p2p.core import economy_messages as em
from walrus_p2p.core import wire
from walrus_p2p.core.challenge_payout import certified_payout
from walrus_p2p.core.economy import VOTE_OUT_EPOCHS, split_payout
from walrus_p2p.core.economy_messages import (
    MAX_COMMISSION_BPS,
    BuyStorageBody,
    EpochSettlement,
    RequestWithdrawBody,
    StakeBody,
    VoteEntry,
)
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.ledger import Ledger, Outcome, StakeState
from walrus_p2p.core.records import MAX_SETTLEMENT_SIZE, EpochValue
from walrus_p2p.core.settlements import (
    MAX_SETTLEMENT_MOVES,
    check_settlement,
    encode_settlement,
    propose_settlement,
    settlement_of,
)
from walrus_p2p.errors import VerificationError
from walrus_p2p.types import Epoch, PeerId

ALICE, BOB = identities(2, salt=40)
MEMBERS = identities(4, salt=41)
KEYS = [member.public_key.raw for member in MEMBERS]
IDS = [member.peer_id for member in MEMBERS]
COMMITTEE_0 = committee_of(MEMBERS, [1, 1, 1, 1], 4, 0)
COMMITTEE_1 = committee_of(MEMBERS, [1, 1, 1, 1], 4, 1)


def value_with(settlement: EpochSettlement | bytes | None, epoch: int = 1) -> EpochValue:
    encoded = (
        encode_settlement(settlement) if isinstance(settlement, EpochSettlement) else settlement
    )
    return EpochValue.from_committee(
        NETWORK, committee_of(MEMBERS, [1, 1, 1, 1], 4, epoch), 1_000 + epoch, encoded
    )


def funded_ledger() -> tuple[Ledger, Orders, bytes, bytes]:
    """Alice staked with member 0 and asked to withdraw another stake; Bob paid 200 for
    storage in epochs 0..1 (100 in each pool)."""
    ledger = new_ledger({ALICE.public_key.raw: 1000, BOB.public_key.raw: 1000})
    alice, bob = Orders(ALICE), Orders(BOB)
    stake = alice.sign(StakeBody, peer=KEYS[0], amount=300)
    other = alice.sign(StakeBody, peer=KEYS[1], amount=100)
    request = alice.sign(RequestWithdrawBody, stake=em.order_id(other))
    for order in (stake, other, request):
        assert ledger.add_order(order) is Outcome.APPLIED
    ledger.add_order(bob.sign(BuyStorageBody, units=10, start_epoch=0, end_epoch=2, amount=200))
    return ledger, alice, em.order_id(stake), em.order_id(request)


def check(ledger: Ledger | None, value: EpochValue, **known: object) -> EpochSettlement | None:
    options: dict[str, object] = {"certified": None}
    options.update(known)
    return check_settlement(ledger, COMMITTEE_0, value, **options)  # type: ignore[arg-type]


def test_a_proposal_lists_what_the_ledger_knows_and_a_peer_with_the_same_view_accepts_it() -> None:
    ledger, _, stake, request = funded_ledger()
    settlement = propose_settlement(ledger, COMMITTEE_0, votes={}, certified=None)
    assert settlement.epoch == 0
    assert settlement.payout == 100  # the pool of epoch 0; epoch 1's stays for later
    assert settlement.stake_activations == tuple(sorted(ledger.stakes_to_activate()))
    assert stake in settlement.stake_activations
    assert settlement.withdrawal_requests == (request,)
    assert settlement.certified is None
    value = value_with(settlement)
    decoded = wire.decode(wire.encode(value), EpochValue)
    assert settlement_of(decoded) == settlement
    assert check(ledger, decoded) == settlement
    # the record of epoch 1 applies it: the stake counts from committee 1 on
    assert ledger.add_settlement(settlement, COMMITTEE_0, COMMITTEE_1) is Outcome.APPLIED
    position = ledger.stake(stake)
    assert position is not None and position.state is StakeState.ACTIVE
    assert ledger.stake_by_peer(1) == {IDS[0]: 300}
    assert ledger.total() == ledger.supply
    # the next proposal lists neither again, and pays the pool of epoch 1
    following = propose_settlement(ledger, COMMITTEE_1, votes={}, certified=None)
    assert following.stake_activations == ()
    assert following.withdrawal_requests == ()
    assert following.payout == 100


def test_payable_counts_an_agreed_settlement_that_is_not_applied_yet() -> None:
    ledger, alice, _, _ = funded_ledger()
    late_stake = alice.sign(StakeBody, peer=KEYS[2], amount=10)
    waiting = dataclasses.replace(
        propose_settlement(ledger, COMMITTEE_0, votes={}, certified=None),
        stake_activations=(em.order_id(late_stake),),
        withdrawal_requests=(),
    )
    # epoch 0's settlement names a stake this ledger has not seen: it waits, owing 100
    assert ledger.add_settlement(waiting, COMMITTEE_0, COMMITTEE_1) is Outcome.WAITING
    assert ledger.payable(1) == 100
    assert propose_settlement(ledger, COMMITTEE_1, votes={}, certified=None).payout == 100
    # a ledger that does not know epoch 0's settlement cannot tell: it proposes no payout
    fresh, _, _, _ = funded_ledger()
    assert fresh.payable(1) is None
    assert propose_settlement(fresh, COMMITTEE_1, votes={}, certified=None).payout == 0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"payout": 101}, "more than the 100 known payable"),
        ({"stake_activations": (bytes([7]) * 32,)}, "unknown stake orders"),
        ({"withdrawal_requests": (bytes([8]) * 32,)}, "unknown withdrawal requests"),
        ({"epoch": Epoch(1)}, "expected 0"),
        ({"slashed": (IDS[1],)}, "without conflict evidence here"),
        ({"votes": (VoteEntry(IDS[0], 5, 1, 10, 0),)}, "one signature and epoch per vote"),
        ({"certified": (IDS[0],)}, "without a certificate known here"),
        ({"network_id": bytes(32)}, "another network"),
        ({"withdrawal_requests": (bytes([2]) * 32, bytes([1]) * 32)}, "not sorted"),
    ],
)
def test_a_validator_refuses_what_it_cannot_check(change: dict[str, object], reason: str) -> None:
    ledger, _, _, _ = funded_ledger()
    good = propose_settlement(ledger, COMMITTEE_0, votes={}, certified=None)
    with pytest.raises(VerificationError, match=reason):
        check(ledger, value_with(dataclasses.replace(good, **change)))  # type: ignore[arg-type]


def vote_of(member: Identity, epoch: int, storage_price: int = 5) -> em.ParameterVote:
    return em.sign_parameter_vote(
        member,
        network_id=NETWORK,
        epoch=epoch,
        storage_price=storage_price,
        write_price=1,
        capacity=10**9,
        commission_bps=500,
    )


def test_votes_carry_signatures_and_certificates_are_accepted_only_as_verified_here() -> None:
    ledger, _, _, _ = funded_ledger()
    stranger = identities(1, salt=42)[0]
    votes = {
        IDS[2]: vote_of(MEMBERS[2], 0),
        IDS[1]: vote_of(MEMBERS[1], 1),  # cast in the next epoch: not listed now
        stranger.peer_id: vote_of(stranger, 0),  # not a member: not listed
    }
    proposal = propose_settlement(ledger, COMMITTEE_0, votes=votes, certified={IDS[0], IDS[3]})
    assert proposal.votes == (VoteEntry(IDS[2], 5, 1, 10**9, 500),)
    assert proposal.vote_signatures == (votes[IDS[2]].signature,)
    assert proposal.vote_epochs == (0,)
    assert proposal.certified == tuple(sorted((IDS[0], IDS[3])))
    value = value_with(proposal)
    # a validator that never received the vote checks its signature against the committee
    assert check(ledger, value, certified=frozenset(IDS)) == proposal
    with pytest.raises(VerificationError, match="without a certificate"):
        check(ledger, value, certified=frozenset({IDS[0]}))
    # an entry changed after signing, a missing signature, a non-member's vote: refused
    altered = dataclasses.replace(proposal, votes=(VoteEntry(IDS[2], 4, 1, 10**9, 500),))
    with pytest.raises(VerificationError):
        check(ledger, value_with(altered), certified=frozenset(IDS))
    unsigned = dataclasses.replace(proposal, vote_signatures=(), vote_epochs=())
    with pytest.raises(VerificationError, match="one signature and epoch per vote"):
        check(ledger, value_with(unsigned), certified=frozenset(IDS))
    foreign = dataclasses.replace(
        proposal,
        votes=(VoteEntry(stranger.peer_id, 5, 1, 10**9, 500),),
        vote_signatures=(votes[stranger.peer_id].signature,),
        vote_epochs=(0,),
    )
    with pytest.raises(VerificationError, match="not a member"):
        check(ledger, value_with(foreign), certified=frozenset(IDS))
    # a proposer that ignores the challenge is refused by a peer that knows its certificates
    everyone = value_with(dataclasses.replace(proposal, certified=None))
    with pytest.raises(VerificationError, match="pays everyone"):
        check(ledger, everyone, certified=frozenset({IDS[0]}))
    assert check(ledger, everyone, certified=None) is not None


def test_an_economy_needs_a_settlement_in_every_value_and_no_economy_forbids_one() -> None:
    ledger, _, _, _ = funded_ledger()
    with pytest.raises(VerificationError, match="carries no settlement"):
        check(ledger, value_with(None))
    with pytest.raises(VerificationError, match="settlement:"):
        check(ledger, value_with(b"\x01\x02"))
    good = value_with(propose_settlement(ledger, COMMITTEE_0, votes={}, certified=None))
    with pytest.raises(VerificationError, match="without an economy"):
        check(None, good)
    assert check(None, value_with(None)) is None


def test_the_moves_of_one_settlement_are_bounded_and_the_rest_wait() -> None:
    ledger = new_ledger({ALICE.public_key.raw: 10**6})
    alice = Orders(ALICE)
    for _ in range(MAX_SETTLEMENT_MOVES + 3):
        assert ledger.add_order(alice.sign(StakeBody, peer=KEYS[0], amount=1)) is Outcome.APPLIED
    first = propose_settlement(ledger, COMMITTEE_0, votes={}, certified=None)
    assert len(first.stake_activations) == MAX_SETTLEMENT_MOVES
    assert check(ledger, value_with(first)) == first
    too_many = dataclasses.replace(
        first, stake_activations=tuple(sorted(ledger.stakes_to_activate()))
    )
    with pytest.raises(VerificationError, match="stake moves"):
        check(ledger, value_with(too_many))
    ledger.add_settlement(first, COMMITTEE_0, COMMITTEE_1)
    second = propose_settlement(ledger, COMMITTEE_1, votes={}, certified=None)
    assert len(second.stake_activations) == 3


def test_the_largest_settlement_fits_its_field() -> None:
    members = identities(128, salt=43) + identities(128, salt=44)
    peer_ids = sorted(PeerId(member.peer_id) for member in members)
    largest = EpochSettlement(
        network_id=NETWORK,
        epoch=Epoch(2**40),
        payout=2**63 - 1,
        votes=tuple(
            VoteEntry(peer, 2**64 - 1, 2**64 - 1, 2**64 - 1, MAX_COMMISSION_BPS)
            for peer in peer_ids
        ),
        stake_activations=tuple(sorted(bytes([i, 1]) * 16 for i in range(128))),
        withdrawal_requests=tuple(sorted(bytes([i, 2]) * 16 for i in range(128))),
        slashed=tuple(peer_ids),
        certified=tuple(peer_ids),
    )
    encoded = encode_settlement(largest)
    assert len(encoded) <= MAX_SETTLEMENT_SIZE
    assert wire.decode(wire.encode(value_with(encoded)), EpochValue).settlement == encoded


def test_a_settlement_with_certified_members_burns_the_others_shares() -> None:
    ledger, _, stake, _ = funded_ledger()
    first = propose_settlement(ledger, COMMITTEE_0, votes={}, certified=None)
    ledger.add_settlement(first, COMMITTEE_0, COMMITTEE_1)
    burned_before = ledger.burned
    balances_before = {key: ledger.balance(key) for key in KEYS}
    # epoch 1: members 1 and 2 proved availability; 0 (with Alice's stake) and 3 did not
    paid = (IDS[1], IDS[2])
    second = propose_settlement(ledger, COMMITTEE_1, votes={}, certified=set(paid))
    committee_2 = committee_of(MEMBERS, [1, 1, 1, 1], 4, 2)
    assert ledger.add_settlement(second, COMMITTEE_1, committee_2) is Outcome.APPLIED
    expected = certified_payout(
        second.payout,
        COMMITTEE_1,
        frozenset(paid),
        commissions={peer: 0 for peer in IDS},
        stakes={IDS[0]: {stake: 300}},
    )
    assert set(expected.unpaid) == {IDS[0], IDS[3]}
    assert ledger.burned - burned_before == expected.split.burned
    assert (
        expected.split.burned
        > split_payout(
            second.payout, COMMITTEE_1, commissions={}, stakes={IDS[0]: {stake: 300}}
        ).burned
    )
    for index, key in enumerate(KEYS):
        gained = ledger.balance(key) - balances_before[key]
        assert gained == expected.split.member_rewards.get(IDS[index], 0)
    assert ledger.stake(stake).rewards == 0  # type: ignore[union-attr]
    assert ledger.total() == ledger.supply


def test_a_vote_stays_in_force_until_its_voter_casts_another() -> None:
    ledger = new_ledger({})
    committees = [committee_of(MEMBERS, [1, 1, 1, 1], 4, epoch) for epoch in range(4)]
    votes = {IDS[i]: vote_of(MEMBERS[i], 0, storage_price=10 * (i + 1)) for i in range(4)}
    first = propose_settlement(ledger, committees[0], votes=votes, certified=None)
    assert len(first.votes) == 4
    assert check(ledger, value_with(first)) == first
    ledger.add_settlement(first, committees[0], committees[1])
    assert ledger.prices(1).storage_price == 30  # 3 of 4 shards voted at or below 30
    # unchanged votes are not listed again, and the prices stay
    second = propose_settlement(ledger, committees[1], votes=votes, certified=None)
    assert second.votes == ()
    ledger.add_settlement(second, committees[1], committees[2])
    assert ledger.prices(2).storage_price == 30
    # member 3 lowers its price in epoch 2: only its new vote is listed, the others stay
    votes[IDS[3]] = vote_of(MEMBERS[3], 2, storage_price=5)
    third = propose_settlement(ledger, committees[2], votes=votes, certified=None)
    assert [entry.peer_id for entry in third.votes] == [IDS[3]] and third.vote_epochs == (2,)
    # replaying member 3's older vote is refused by a validator that has the newer one
    ledger.add_settlement(third, committees[2], committees[3])
    assert ledger.prices(3).storage_price == 20
    stale = dataclasses.replace(
        third,
        epoch=Epoch(3),
        votes=(VoteEntry(IDS[3], 40, 1, 10**9, 500),),
        vote_signatures=(vote_of(MEMBERS[3], 0, storage_price=40).signature,),
        vote_epochs=(0,),
    )
    committee_3 = committees[3]
    with pytest.raises(VerificationError, match="older than the one in force"):
        check_settlement(ledger, committee_3, value_with(stale, epoch=4), certified=None)
    assert ledger.total() == ledger.supply


def test_a_member_without_certificates_three_epochs_in_a_row_is_voted_out() -> None:
    ledger = new_ledger({})
    committees = [committee_of(MEMBERS, [1, 1, 1, 1], 4, epoch) for epoch in range(4)]
    # member 3 is left out of the committees of epochs 4..6 (core/epochs.py does that)
    committees += [committee_of(MEMBERS[:3], [1, 1, 1], 4, epoch) for epoch in range(4, 8)]
    honest = {IDS[0], IDS[1], IDS[2]}
    # epoch 0: no challenge ran (certified None): nobody's streak moves
    settled = propose_settlement(ledger, committees[0], votes={}, certified=None)
    assert ledger.voted_out_after(settled, committees[0]) == set()
    ledger.add_settlement(settled, committees[0], committees[1])
    for epoch in (1, 2):
        settled = propose_settlement(ledger, committees[epoch], votes={}, certified=honest)
        assert ledger.voted_out_after(settled, committees[epoch]) == set()
        ledger.add_settlement(settled, committees[epoch], committees[epoch + 1])
    # the third uncertified epoch in a row: out of the committees of epochs 4, 5 and 6
    third = propose_settlement(ledger, committees[3], votes={}, certified=honest)
    assert ledger.voted_out_after(third, committees[3]) == {IDS[3]}
    ledger.add_settlement(third, committees[3], committees[4])
    for epoch in (4, 5):
        settled = propose_settlement(ledger, committees[epoch], votes={}, certified=honest)
        assert ledger.voted_out_after(settled, committees[epoch]) == {IDS[3]}
        ledger.add_settlement(settled, committees[epoch], committees[epoch + 1])
    settled = propose_settlement(ledger, committees[6], votes={}, certified=honest)
    assert ledger.voted_out_after(settled, committees[6]) == set()
    # a certificate in between resets the streak
    other = new_ledger({})
    full = [committee_of(MEMBERS, [1, 1, 1, 1], 4, epoch) for epoch in range(5)]
    for epoch, paid in ((0, honest), (1, honest | {IDS[3]}), (2, honest), (3, honest)):
        settled = propose_settlement(other, full[epoch], votes={}, certified=paid)
        assert other.voted_out_after(settled, full[epoch]) == set()
        other.add_settlement(settled, full[epoch], full[epoch + 1])


def test_a_member_with_conflict_evidence_is_slashed_once_per_piece() -> None:
    ledger, _, _, _ = funded_ledger()
    evidence = {IDS[1]: 1, "12D3KooWNotAMember": 3}  # a stranger's evidence counts for nothing
    proposed = propose_settlement(ledger, COMMITTEE_0, votes={}, certified=None, evidence=evidence)
    assert proposed.slashed == (IDS[1],)
    assert check(ledger, value_with(proposed), evidence=evidence) == proposed
    # and voted out: left out of the next VOTE_OUT_EPOCHS committees
    assert ledger.voted_out_after(proposed, COMMITTEE_0) == {IDS[1]}
    # a validator without the evidence refuses the slash
    with pytest.raises(VerificationError, match="without conflict evidence here"):
        check(ledger, value_with(proposed), evidence={})
    assert ledger.add_settlement(proposed, COMMITTEE_0, COMMITTEE_1) is Outcome.APPLIED
    assert ledger.slash_count(IDS[1]) == 1
    # the same piece does not slash again; a second piece does
    following = propose_settlement(ledger, COMMITTEE_1, votes={}, certified=None, evidence=evidence)
    assert following.slashed == ()
    assert ledger.voted_out_after(following, COMMITTEE_1) == {IDS[1]}  # still out
    again = propose_settlement(ledger, COMMITTEE_1, votes={}, certified=None, evidence={IDS[1]: 2})
    assert again.slashed == (IDS[1],)
    # a ledger that has not applied the settlement before cannot count: it slashes nobody
    fresh, _, _, _ = funded_ledger()
    assert (
        propose_settlement(fresh, COMMITTEE_1, votes={}, certified=None, evidence=evidence).slashed
        == ()
    )
    # out of the committees of epochs 1, 2 and 3 (VOTE_OUT_EPOCHS), back for epoch 4
    later = [committee_of(MEMBERS, [1, 1, 1, 1], 4, epoch) for epoch in range(1, 5)]
    for committee, after in itertools.pairwise(later):
        settled = propose_settlement(ledger, committee, votes={}, certified=None)
        out = ledger.voted_out_after(settled, committee)
        assert out == ({IDS[1]} if committee.epoch + 1 <= VOTE_OUT_EPOCHS else set())
        assert ledger.add_settlement(settled, committee, after) is Outcome.APPLIED
