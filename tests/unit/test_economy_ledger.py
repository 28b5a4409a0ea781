"""The ledger: certified orders and settlements in any order give one state, supply is conserved,
storage resources, shared blobs, stake, rewards and prices follow docs/economics.md."""

from __future__ import annotations

import random

import pytest
from economy_helpers import LIFETIME, NETWORK, PRICES, Orders, committee_of, identities, new_ledger
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walrus_p2p.core import economy_messages as em
from walrus_p2p.core.economy import Prices, split_payout
from walrus_p2p.core.economy_messages import (
    AttachBlobBody,
    BuyStorageBody,
    EpochSettlement,
    ExtendSharedBlobBody,
    ExtendStorageBody,
    FundSharedBlobBody,
    ReleaseStorageBody,
    RequestWithdrawBody,
    ShareBlobBody,
    SplitKind,
    SplitStorageBody,
    StakeBody,
    TransferBody,
    VoteEntry,
    WithdrawBody,
)
from walrus_p2p.core.ledger import Ledger, Outcome, StakeState
from walrus_p2p.errors import OrderRefusedError

ALICE, BOB, CAROL = identities(3, salt=20)
MEMBERS = identities(4, salt=21)
KEYS = [member.public_key.raw for member in MEMBERS]
IDS = [member.peer_id for member in MEMBERS]
BLOB = bytes([9]) * 32


def committee(epoch: int, weights: tuple[int, ...] = (1, 1, 1, 1)) -> object:
    return committee_of(MEMBERS, list(weights), 4, epoch)


def settlement(epoch: int, payout: int = 0, **fields: object) -> EpochSettlement:
    values: dict[str, object] = {
        "votes": (),
        "stake_activations": (),
        "withdrawal_requests": (),
        "slashed": (),
    }
    values.update(fields)
    return EpochSettlement(NETWORK, epoch, payout, **values)  # type: ignore[arg-type]


def settle(ledger: Ledger, value: EpochSettlement) -> Outcome:
    return ledger.add_settlement(
        value,
        committee_of(MEMBERS, [1, 1, 1, 1], 4, value.epoch),
        committee_of(MEMBERS, [1, 1, 1, 1], 4, value.epoch + 1),
    )


def test_transfers_apply_in_sequence_and_conserve_supply() -> None:
    ledger = new_ledger({ALICE.public_key.raw: 100})
    alice = Orders(ALICE)
    first = alice.sign(TransferBody, recipient=BOB.public_key.raw, amount=30)
    second = alice.sign(TransferBody, recipient=CAROL.public_key.raw, amount=50)
    assert ledger.add_order(second) is Outcome.WAITING  # sequence 1 before 0: it waits
    assert ledger.waiting_orders() == [(ALICE.public_key.raw, 1)]
    assert ledger.add_order(first) is Outcome.APPLIED  # and unblocks sequence 1
    assert ledger.waiting_orders() == []
    assert ledger.balance(ALICE.public_key.raw) == 20
    assert ledger.balance(BOB.public_key.raw) == 30
    assert ledger.balance(CAROL.public_key.raw) == 50
    assert ledger.next_sequence(ALICE.public_key.raw) == 2
    assert ledger.total() == ledger.supply == 100
    before = ledger.snapshot()
    assert ledger.add_order(first) is Outcome.DUPLICATE  # a replayed certificate: nothing
    assert ledger.snapshot() == before


def test_an_uncovered_certified_order_waits_for_credits() -> None:
    ledger = new_ledger({ALICE.public_key.raw: 10, BOB.public_key.raw: 50})
    spend = Orders(ALICE).sign(TransferBody, recipient=CAROL.public_key.raw, amount=40)
    assert ledger.add_order(spend) is Outcome.WAITING
    assert ledger.balance(ALICE.public_key.raw) == 10
    credit = Orders(BOB).sign(TransferBody, recipient=ALICE.public_key.raw, amount=35)
    assert ledger.add_order(credit) is Outcome.APPLIED
    assert ledger.balance(ALICE.public_key.raw) == 5
    assert ledger.balance(CAROL.public_key.raw) == 40
    assert ledger.total() == 60


def test_a_conflicting_certificate_is_refused_and_changes_nothing() -> None:
    ledger = new_ledger({ALICE.public_key.raw: 100})
    order = Orders(ALICE).sign(TransferBody, recipient=BOB.public_key.raw, amount=30)
    other = Orders(ALICE).sign(TransferBody, recipient=CAROL.public_key.raw, amount=30)
    ledger.add_order(order)
    before = ledger.snapshot()
    with pytest.raises(OrderRefusedError) as refused:
        ledger.add_order(other)
    assert refused.value.reason == "ORDER_CONFLICT"
    assert ledger.snapshot() == before
    # the same holds while the first one is still waiting
    waiting = new_ledger({})
    assert waiting.add_order(order) is Outcome.WAITING
    before = waiting.snapshot()
    with pytest.raises(OrderRefusedError, match="another order"):
        waiting.add_order(other)
    assert waiting.snapshot() == before


def test_a_certified_but_impossible_order_is_void() -> None:
    ledger = new_ledger({ALICE.public_key.raw: 100})
    alice = Orders(ALICE)
    nonsense = alice.sign(ReleaseStorageBody, resource=bytes(32))  # owns no resource
    after = alice.sign(TransferBody, recipient=BOB.public_key.raw, amount=1)
    assert ledger.add_order(nonsense) is Outcome.VOID
    assert ledger.void_reason(ALICE.public_key.raw, 0) == "RESOURCE_UNKNOWN"
    assert ledger.add_order(after) is Outcome.APPLIED  # the sequence number moved on
    assert ledger.balance(BOB.public_key.raw) == 1


def test_storage_resources_buy_split_attach_release_reuse_extend() -> None:
    ledger = new_ledger({ALICE.public_key.raw: 10_000})
    alice = Orders(ALICE)
    buy = alice.sign(BuyStorageBody, units=4, start_epoch=0, end_epoch=3, amount=4 * 10 * 3 + 1)
    assert ledger.add_order(buy) is Outcome.APPLIED
    resource = em.order_id(buy)
    # 121 over epochs 0..2: 40 each, the remainder 1 to epoch 0
    assert ledger.pools == {0: 41, 1: 40, 2: 40}
    by_size = alice.sign(SplitStorageBody, resource=resource, kind=SplitKind.SIZE, at=1)
    ledger.add_order(by_size)
    small, large = em.split_resource_ids(em.order_id(by_size))
    assert ledger.resource(resource) is None
    assert (ledger.resource(small).units, ledger.resource(large).units) == (1, 3)  # type: ignore[union-attr]
    by_epoch = alice.sign(SplitStorageBody, resource=large, kind=SplitKind.EPOCH, at=1)
    ledger.add_order(by_epoch)
    early, late = em.split_resource_ids(em.order_id(by_epoch))
    assert (ledger.resource(early).end_epoch, ledger.resource(late).start_epoch) == (1, 1)  # type: ignore[union-attr]
    attach = alice.sign(
        AttachBlobBody,
        resource=small,
        blob_id=BLOB,
        encoded_size=1 << 20,
        deletable=True,
        amount=3,
    )
    assert ledger.add_order(attach) is Outcome.APPLIED
    assert ledger.resource(small).blob_id == BLOB  # type: ignore[union-attr]
    assert ledger.pools[0] == 44  # the write fee goes to the pool of the order's epoch
    # attached: a second registration on it is void; a release frees it for reuse
    again = alice.sign(
        AttachBlobBody,
        resource=small,
        blob_id=bytes(32),
        encoded_size=1,
        deletable=False,
        amount=3,
    )
    assert ledger.add_order(again) is Outcome.VOID
    assert ledger.add_order(alice.sign(ReleaseStorageBody, resource=small)) is Outcome.APPLIED
    reuse = alice.sign(
        AttachBlobBody,
        resource=small,
        blob_id=bytes(32),
        encoded_size=5,
        deletable=False,
        amount=3,
    )
    assert ledger.add_order(reuse) is Outcome.APPLIED
    # not deletable: it cannot be released
    assert ledger.add_order(alice.sign(ReleaseStorageBody, resource=small)) is Outcome.VOID
    extend = alice.sign(ExtendStorageBody, resource=small, end_epoch=5, amount=1 * 10 * 2)
    assert ledger.add_order(extend) is Outcome.APPLIED
    assert ledger.resource(small).end_epoch == 5  # type: ignore[union-attr]
    assert ledger.pools[3] == ledger.pools[4] == 10
    assert ledger.total() == 10_000


def test_a_purchase_beyond_the_maximum_lifetime_is_void() -> None:
    ledger = new_ledger({ALICE.public_key.raw: 10_000})
    order = Orders(ALICE).sign(
        BuyStorageBody, epoch=2, units=1, start_epoch=2, end_epoch=3 + LIFETIME, amount=0
    )
    assert ledger.add_order(order) is Outcome.VOID
    assert ledger.void_reason(ALICE.public_key.raw, 0) == "ORDER_LIFETIME_TOO_LONG"


def test_stake_rewards_and_withdrawal_through_settlements() -> None:
    ledger = new_ledger({ALICE.public_key.raw: 1000, BOB.public_key.raw: 1000})
    alice, bob = Orders(ALICE), Orders(BOB)
    stake = alice.sign(StakeBody, peer=KEYS[0], amount=600)
    ledger.add_order(stake)
    stake_id = em.order_id(stake)
    assert ledger.stake(stake_id).state is StakeState.PENDING  # type: ignore[union-attr]
    # bob pays for storage in epochs 0..1: the pools fund the payouts
    ledger.add_order(bob.sign(BuyStorageBody, units=10, start_epoch=0, end_epoch=2, amount=200))
    # epoch 0 settles: the stake is listed and counts from committee 1 on; it earns nothing in 0
    votes = (VoteEntry(IDS[0], 5, 1, 10**9, 2000),)
    assert settle(ledger, settlement(0, 100, stake_activations=(stake_id,), votes=votes)) is (
        Outcome.APPLIED
    )
    position = ledger.stake(stake_id)
    assert position is not None and position.state is StakeState.ACTIVE
    assert position.active_from == 1 and position.rewards == 0
    assert ledger.stake_by_peer(1) == {IDS[0]: 600}
    # 100 paid: 3 burned, 97 over 4 shards: 25, 24, 24, 24 (largest remainder, tie by peer id)
    assert ledger.burned == 3
    # epoch 1: member 0's 24 or 25 goes to its staker (commission 0 until epoch 2)
    request = alice.sign(RequestWithdrawBody, stake=stake_id)
    ledger.add_order(request)
    withdraw = alice.sign(WithdrawBody, stake=stake_id)
    assert ledger.add_order(withdraw) is Outcome.WAITING  # not complete before the settlement
    payout = 100
    committee_1 = committee_of(MEMBERS, [1, 1, 1, 1], 4, 1)
    expected = split_payout(
        payout, committee_1, commissions={}, stakes={IDS[0]: {stake_id: 600}}
    ).staker_rewards[stake_id]
    outcome = settle(ledger, settlement(1, payout, withdrawal_requests=(em.order_id(request),)))
    assert outcome is Outcome.APPLIED
    assert ledger.stake(stake_id) is None  # the waiting withdrawal went through
    assert ledger.balance(ALICE.public_key.raw) == 400 + 600 + expected
    assert ledger.stake_by_peer(2) == {}
    # commission voted at the end of epoch 0 applies to the rewards of epoch 2
    assert ledger.commission(IDS[0], 1) == 0
    assert ledger.commission(IDS[0], 2) == 2000
    assert ledger.total() == 2000


def test_prices_of_the_next_epoch_come_from_the_votes() -> None:
    ledger = new_ledger({})
    votes = tuple(sorted(VoteEntry(IDS[i], 10 * (i + 1), 2 * (i + 1), 1000, 0) for i in range(4)))
    settle(ledger, settlement(0, 0, votes=votes))
    assert ledger.prices(0) == PRICES
    assert ledger.prices(1) == Prices(30, 6)  # 3 of 4 shards voted at or below
    assert ledger.prices(5) == Prices(30, 6)  # until another settlement says otherwise
    assert ledger.capacity(1) == 1000


def test_a_settlement_waits_for_its_orders_and_for_a_covered_payout() -> None:
    ledger = new_ledger({ALICE.public_key.raw: 1000})
    alice = Orders(ALICE)
    buy = alice.sign(BuyStorageBody, units=1, start_epoch=0, end_epoch=1, amount=10)
    stake = alice.sign(StakeBody, peer=KEYS[1], amount=5)
    first = settlement(0, 10, stake_activations=(em.order_id(stake),))
    assert settle(ledger, first) is Outcome.WAITING
    assert settle(ledger, first) is Outcome.WAITING  # the same one again
    assert settle(ledger, settlement(1, 0)) is Outcome.WAITING  # epoch 1 waits for epoch 0
    with pytest.raises(OrderRefusedError) as refused:
        settle(ledger, settlement(0, 9))
    assert refused.value.reason == "SETTLEMENT_INVALID"
    ledger.add_order(buy)  # pays the pool of epoch 0: the payout is covered...
    assert ledger.waiting_settlements() == [0, 1]  # ...but the stake order is missing
    ledger.add_order(stake)
    assert ledger.waiting_settlements() == []
    assert ledger.settled_epoch == 1
    assert settle(ledger, first) is Outcome.DUPLICATE
    # a late payment for a settled epoch goes to the reward fund
    late = alice.sign(BuyStorageBody, units=1, start_epoch=0, end_epoch=1, amount=7)
    ledger.add_order(late)
    assert ledger.reward_fund == 7
    assert ledger.total() == 1000


def test_settlement_form_is_checked() -> None:
    ledger = new_ledger({})
    for bad in (
        settlement(0, 0, stake_activations=(bytes([2]) * 32, bytes([1]) * 32)),
        settlement(0, 0, withdrawal_requests=(bytes(32), bytes(32))),
        settlement(0, 0, stake_activations=(bytes(32),), withdrawal_requests=(bytes(32),)),
        settlement(0, 0, slashed=(IDS[1], IDS[0]) if IDS[1] > IDS[0] else (IDS[0], IDS[1])),
        settlement(0, 0, votes=(VoteEntry(IDS[0], 1, 1, 1, 10_001),)),
        EpochSettlement(bytes(32), 0, 0, (), (), (), ()),
    ):
        with pytest.raises(OrderRefusedError) as refused:
            settle(ledger, bad)
        assert refused.value.reason == "SETTLEMENT_INVALID"
    with pytest.raises(OrderRefusedError, match="wrong committees"):
        ledger.add_settlement(settlement(0), committee_of(MEMBERS, [1] * 4, 4, 1), committee(1))  # type: ignore[arg-type]
    assert ledger.snapshot() == new_ledger({}).snapshot()


# A random history, applied in two random orders ------------------------------------------------

ACCOUNTS = identities(4, salt=30)


def _history(draw: st.DrawFn) -> tuple[dict[bytes, int], list[object]]:
    """Orders of several accounts (transfers, storage, stake) and settlements, as the ledger of
    one honest run would have certified them."""
    allocations = {a.public_key.raw: draw(st.integers(0, 2000)) for a in ACCOUNTS}
    ledger = new_ledger(allocations)
    owners = [Orders(account) for account in ACCOUNTS]
    items: list[object] = []
    epoch = 0
    for _ in range(draw(st.integers(1, 60))):
        owner = draw(st.sampled_from(owners))
        account = owner.account
        balance = ledger.balance(account)
        resources = sorted(ledger.resources_of(account).items())
        free = [(k, r) for k, r in resources if r.blob_id is None and r.end_epoch > epoch]
        deletable = [k for k, r in resources if r.blob_id is not None and r.deletable]
        extendable = [
            k for k, r in resources if epoch < r.end_epoch < epoch + LIFETIME and not r.shared
        ]
        shareable = [
            k
            for k, r in resources
            if r.blob_id is not None and not r.deletable and not r.shared and r.end_epoch > epoch
        ]
        shared = sorted(
            k
            for a in ACCOUNTS
            for k, r in ledger.resources_of(a.public_key.raw).items()
            if r.shared
        )
        stakes = sorted(
            k for k, p in ledger.stakes.items() if p.staker == account and p.request is None
        )
        withdrawable = sorted(
            k
            for k, p in ledger.stakes.items()
            if p.staker == account and p.state is StakeState.WITHDRAWABLE
        )
        options = ["settle"]
        options += ["transfer", "buy", "stake"] if balance else []
        options += ["attach", "split"] if free else []
        options += ["release"] if deletable else []
        options += ["extend"] if extendable and balance else []
        options += ["request"] if stakes else []
        options += ["withdraw"] if withdrawable else []
        options += ["share"] if shareable else []
        options += ["fund"] if shared and balance else []
        options += ["ask"] if shared else []
        choice = draw(st.sampled_from(options))
        if choice == "settle":
            fund = ledger.reward_fund + sum(a for e, a in ledger.pools.items() if e <= epoch)
            pending = sorted(k for k, p in ledger.stakes.items() if p.state is StakeState.PENDING)
            requests = sorted(
                p.request
                for p in ledger.stakes.values()
                if p.request is not None and p.state is not StakeState.WITHDRAWABLE
            )
            value = settlement(
                epoch,
                draw(st.integers(0, fund)),
                stake_activations=tuple(draw(st.sampled_from([pending, []]))),
                withdrawal_requests=tuple(requests),
                slashed=tuple(sorted(draw(st.sets(st.sampled_from(IDS), max_size=1)))),
                votes=(VoteEntry(IDS[0], 1, 1, 1, draw(st.integers(0, 10_000))),),
                shared_extensions=tuple(ledger.shared_extensions_to_list(epoch, 256)),
            )
            assert settle(ledger, value) is Outcome.APPLIED
            items.append(value)
            epoch += 1
            continue
        order: em.SignedOrder
        if choice == "transfer":
            recipient = draw(st.sampled_from([a for a in owners if a is not owner])).account
            amount = draw(st.integers(1, balance))
            order = owner.sign(TransferBody, epoch, recipient=recipient, amount=amount)
        elif choice == "buy":
            start = epoch + draw(st.integers(0, 2))
            order = owner.sign(
                BuyStorageBody,
                epoch,
                units=draw(st.integers(1, 3)),
                start_epoch=start,
                end_epoch=start + draw(st.integers(1, 6)),
                amount=draw(st.integers(0, balance)),
            )
        elif choice == "attach":
            order = owner.sign(
                AttachBlobBody,
                epoch,
                resource=draw(st.sampled_from(free))[0],
                blob_id=BLOB,
                encoded_size=1,
                deletable=draw(st.booleans()),
                amount=draw(st.integers(0, balance)),
            )
        elif choice == "split":
            key, resource = draw(st.sampled_from(free))
            if resource.units > 1:
                order = owner.sign(SplitStorageBody, epoch, resource=key, kind=SplitKind.SIZE, at=1)
            elif resource.end_epoch - resource.start_epoch > 1:
                order = owner.sign(
                    SplitStorageBody,
                    epoch,
                    resource=key,
                    kind=SplitKind.EPOCH,
                    at=resource.start_epoch + 1,
                )
            else:
                continue
        elif choice == "release":
            order = owner.sign(ReleaseStorageBody, epoch, resource=draw(st.sampled_from(deletable)))
        elif choice == "extend":
            key = draw(st.sampled_from(extendable))
            order = owner.sign(
                ExtendStorageBody,
                epoch,
                resource=key,
                end_epoch=ledger.resources_of(account)[key].end_epoch + 1,
                amount=draw(st.integers(0, balance)),
            )
        elif choice == "stake":
            order = owner.sign(
                StakeBody,
                epoch,
                peer=draw(st.sampled_from(KEYS)),
                amount=draw(st.integers(1, balance)),
            )
        elif choice == "share":
            order = owner.sign(
                ShareBlobBody,
                epoch,
                resource=draw(st.sampled_from(shareable)),
                amount=draw(st.just(balance) | st.integers(0, balance)),
            )
        elif choice == "fund":
            order = owner.sign(
                FundSharedBlobBody,
                epoch,
                shared=draw(st.sampled_from(shared)),
                amount=draw(st.just(balance) | st.integers(1, balance)),
            )
        elif choice == "ask":
            order = owner.sign(
                ExtendSharedBlobBody,
                epoch,
                shared=draw(st.sampled_from(shared)),
                epochs=draw(st.integers(1, 4)),
            )
        elif choice == "request":
            order = owner.sign(RequestWithdrawBody, epoch, stake=draw(st.sampled_from(stakes)))
        else:
            order = owner.sign(WithdrawBody, epoch, stake=draw(st.sampled_from(withdrawable)))
        assert ledger.add_order(order) is Outcome.APPLIED
        items.append(order)
        assert ledger.total() == ledger.supply
    return allocations, items


histories = st.composite(_history)()


def _replay(allocations: dict[bytes, int], items: list[object]) -> Ledger:
    ledger = new_ledger(allocations)
    for item in items:
        if isinstance(item, EpochSettlement):
            settle(ledger, item)
        else:
            assert isinstance(item, em.SignedOrder)
            ledger.add_order(item)
        assert ledger.total() == ledger.supply  # conserved after every step, in any order
    return ledger


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(history=histories, seed=st.integers(0, 2**32))
def test_any_history_in_any_order_conserves_supply_and_reaches_one_state(
    history: tuple[dict[bytes, int], list[object]], seed: int
) -> None:
    allocations, items = history
    in_order = _replay(allocations, items)
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    other = _replay(allocations, shuffled)
    assert other.snapshot() == in_order.snapshot()
    assert other.waiting_orders() == [] and other.waiting_settlements() == []
    assert in_order.total() == sum(allocations.values())
    assert all(in_order.balance(a.public_key.raw) >= 0 for a in ACCOUNTS)
