"""Shared blobs in the ledger and the settlement (docs/economics.md, "Shared blobs"): sharing,
funding, extension requests carried out by the epoch change from the funds, the checks of a
validator, lapsing, and the blob state's end taken from the chain."""

from __future__ import annotations

import dataclasses

import pytest
from economy_helpers import LIFETIME, NETWORK, Orders, committee_of, identities, new_ledger

from walrus_p2p.core import economy_messages as em
from walrus_p2p.core import records
from walrus_p2p.core.economy_messages import (
    AttachBlobBody,
    BuyStorageBody,
    EpochSettlement,
    ExtendSharedBlobBody,
    ExtendStorageBody,
    FundSharedBlobBody,
    ShareBlobBody,
    SharedExtension,
)
from walrus_p2p.core.ledger import Ledger, Outcome
from walrus_p2p.core.settlements import check_settlement, encode_settlement, propose_settlement
from walrus_p2p.errors import OrderRefusedError, VerificationError
from walrus_p2p.types import BlobId

OWNER, FUNDER, ASKER = identities(3, salt=40)
MEMBERS = identities(4, salt=41)
BLOB = BlobId(bytes([7]) * 32)
UNITS = 2
PRICE = 10  # economy_helpers.PRICES.storage_price


def settle(ledger: Ledger, value: EpochSettlement) -> Outcome:
    return ledger.add_settlement(
        value,
        committee_of(MEMBERS, [1, 1, 1, 1], 4, value.epoch),
        committee_of(MEMBERS, [1, 1, 1, 1], 4, value.epoch + 1),
    )


def empty_settlement(epoch: int, **fields: object) -> EpochSettlement:
    return EpochSettlement(NETWORK, epoch, 0, (), (), (), (), **fields)  # type: ignore[arg-type]


def shared_setup(
    *, deletable: bool = False, end: int = 4, share_amount: int = 0
) -> tuple[Ledger, Orders, bytes, list[em.SignedOrder]]:
    """OWNER bought UNITS for epochs [0, end), attached BLOB and (unless deletable) shared it."""
    ledger = new_ledger({OWNER.public_key.raw: 100_000, FUNDER.public_key.raw: 5_000})
    owner = Orders(OWNER)
    buy = owner.sign(
        BuyStorageBody, units=UNITS, start_epoch=0, end_epoch=end, amount=UNITS * PRICE * end
    )
    resource = em.order_id(buy)
    attach = owner.sign(
        AttachBlobBody,
        resource=resource,
        blob_id=BLOB,
        encoded_size=UNITS << 20,
        deletable=deletable,
        amount=UNITS * 3,
    )
    orders = [buy, attach]
    for order in orders:
        assert ledger.add_order(order) is Outcome.APPLIED
    if not deletable:
        share = owner.sign(ShareBlobBody, resource=resource, amount=share_amount)
        orders.append(share)
        assert ledger.add_order(share) is Outcome.APPLIED
    return ledger, owner, resource, orders


def test_share_fund_and_extend_through_the_settlement() -> None:
    ledger, owner, shared, _ = shared_setup(share_amount=100)
    assert ledger.resource(shared).shared  # type: ignore[union-attr]
    assert ledger.shared_funds(shared) == 100
    funder = Orders(FUNDER)
    fund = funder.sign(FundSharedBlobBody, shared=shared, amount=250)
    ledger.check_order(em.decode_order_body(fund), em.order_id(fund))
    assert ledger.add_order(fund) is Outcome.APPLIED
    assert ledger.shared_funds(shared) == 350
    assert ledger.balance(FUNDER.public_key.raw) == 4_750
    ask = Orders(ASKER).sign(ExtendSharedBlobBody, shared=shared, epochs=3)
    ledger.check_order(em.decode_order_body(ask), em.order_id(ask))
    assert ledger.add_order(ask) is Outcome.APPLIED
    assert ledger.pending_shared_requests(shared) == 1
    pools_before = dict(ledger.pools)

    # The proposer at the end of epoch 0 lists it with the new end; a validator accepts it.
    committee = committee_of(MEMBERS, [1, 1, 1, 1], 4, 0)
    value = propose_settlement(ledger, committee, votes={}, certified=None)
    assert value.shared_extensions == (SharedExtension(em.order_id(ask), BLOB, owner.account, 7),)
    ledger.check_shared_extensions(value)
    assert settle(ledger, value) is Outcome.APPLIED
    # 3 epochs x 2 units x 10 FROST = 60 from the funds into the pools of epochs 4, 5, 6
    assert ledger.resource(shared).end_epoch == 7  # type: ignore[union-attr]
    assert ledger.shared_funds(shared) == 290
    for epoch in (4, 5, 6):
        assert ledger.pools[epoch] == pools_before.get(epoch, 0) + 20
    assert ledger.pending_shared_requests(shared) == 0
    assert ledger.total() == ledger.supply


def test_the_owner_cannot_extend_a_shared_blob_directly_nor_share_twice() -> None:
    ledger, owner, shared, _ = shared_setup()
    extend = owner.sign(ExtendStorageBody, resource=shared, end_epoch=6, amount=UNITS * PRICE * 2)
    with pytest.raises(OrderRefusedError) as refused:
        ledger.check_order(em.decode_order_body(extend), em.order_id(extend))
    assert refused.value.reason == "RESOURCE_UNUSABLE"
    again = Orders(OWNER, start=owner.sequence - 1).sign(ShareBlobBody, resource=shared, amount=0)
    with pytest.raises(OrderRefusedError) as refused:
        ledger.check_order(em.decode_order_body(again), em.order_id(again))
    assert refused.value.reason == "RESOURCE_UNUSABLE"


def test_a_deletable_blob_cannot_be_shared_and_strangers_cannot_be_funded() -> None:
    ledger, owner, resource, _ = shared_setup(deletable=True)
    share = owner.sign(ShareBlobBody, resource=resource, amount=0)
    with pytest.raises(OrderRefusedError) as refused:
        ledger.check_order(em.decode_order_body(share), em.order_id(share))
    assert refused.value.reason == "RESOURCE_UNUSABLE"
    for body, fields in (
        (FundSharedBlobBody, {"shared": resource, "amount": 5}),
        (ExtendSharedBlobBody, {"shared": resource, "epochs": 1}),
    ):
        order = Orders(FUNDER).sign(body, **fields)
        with pytest.raises(OrderRefusedError) as refused:
            ledger.check_order(em.decode_order_body(order), em.order_id(order))
        assert refused.value.reason == "RESOURCE_UNKNOWN"
    overdrawn = Orders(ASKER).sign(FundSharedBlobBody, shared=resource, amount=5)
    with pytest.raises(OrderRefusedError):
        ledger.check_order(em.decode_order_body(overdrawn), em.order_id(overdrawn))


def test_requests_the_funds_do_not_cover_are_not_listed_and_lapse() -> None:
    ledger, _, shared, _ = shared_setup(share_amount=30)  # covers one epoch (20), not two
    asker = Orders(ASKER)
    big = asker.sign(ExtendSharedBlobBody, shared=shared, epochs=2)
    small = asker.sign(ExtendSharedBlobBody, shared=shared, epochs=1)
    ledger.add_order(big)
    ledger.add_order(small)
    listed = ledger.shared_extensions_to_list(0, 256)
    assert [entry.order_id for entry in listed] == [em.order_id(small)]
    assert listed[0].end_epoch == 5
    # the settlement of epoch 0 carries out only the covered one; the other stays for epoch 1
    assert settle(ledger, empty_settlement(0, shared_extensions=tuple(listed))) is Outcome.APPLIED
    assert ledger.shared_funds(shared) == 10
    assert ledger.pending_shared_requests(shared) == 1
    assert ledger.shared_extensions_to_list(1, 256) == []
    # the settlement of epoch 1 passes it by: it lapses
    settle(ledger, empty_settlement(1))
    assert ledger.pending_shared_requests(shared) == 0
    assert ledger.total() == ledger.supply


def test_a_validator_refuses_what_its_ledger_would_not_carry_out() -> None:
    ledger, owner, shared, _ = shared_setup(share_amount=100)
    ask = Orders(ASKER).sign(ExtendSharedBlobBody, shared=shared, epochs=2)
    ledger.add_order(ask)
    good = SharedExtension(em.order_id(ask), BLOB, owner.account, 6)
    committee = committee_of(MEMBERS, [1, 1, 1, 1], 4, 0)
    bad_entries = {
        "a longer end": dataclasses.replace(good, end_epoch=9),
        "another blob": dataclasses.replace(good, blob_id=BlobId(bytes(32))),
        "an unknown request": dataclasses.replace(good, order_id=bytes([1]) * 32),
    }
    for why, entry in bad_entries.items():
        value = empty_settlement(0, shared_extensions=(entry,))
        with pytest.raises(OrderRefusedError):
            ledger.check_shared_extensions(value)
        with pytest.raises(VerificationError, match="shared-blob extension"):
            check_settlement(ledger, committee, value_with(value), certified=None)
        assert why  # each case is refused
    # funds too small: the same request with only 10 FROST in the funds
    poor, owner2, shared2, _ = shared_setup(share_amount=10)
    ask2 = Orders(ASKER).sign(ExtendSharedBlobBody, shared=shared2, epochs=2)
    poor.add_order(ask2)
    entry = SharedExtension(em.order_id(ask2), BLOB, owner2.account, 6)
    with pytest.raises(OrderRefusedError, match="funds"):
        poor.check_shared_extensions(empty_settlement(0, shared_extensions=(entry,)))
    # the good one passes
    ledger.check_shared_extensions(empty_settlement(0, shared_extensions=(good,)))


def value_with(settlement: EpochSettlement) -> records.EpochValue:
    committee = committee_of(MEMBERS, [1, 1, 1, 1], 4, 1)
    return records.EpochValue.from_committee(NETWORK, committee, 1, encode_settlement(settlement))


def test_an_extension_needs_the_blob_alive_in_the_next_epoch_and_stays_within_the_lifetime() -> (
    None
):
    ledger, _, shared, _ = shared_setup(end=2, share_amount=10_000)
    asker = Orders(ASKER)
    ledger.add_order(asker.sign(ExtendSharedBlobBody, shared=shared, epochs=3))
    # ends at 2: the settlement of epoch 1 would be too late, the one of epoch 0 is in time
    settle(
        ledger, empty_settlement(0, shared_extensions=tuple(ledger.shared_extensions_to_list(0, 9)))
    )
    assert ledger.resource(shared).end_epoch == 5  # type: ignore[union-attr]
    ledger.add_order(asker.sign(ExtendSharedBlobBody, 1, shared=shared, epochs=1000))
    (capped,) = ledger.shared_extensions_to_list(1, 9)
    assert capped.end_epoch == 1 + 1 + LIFETIME
    late, _, late_shared, _ = shared_setup(end=2, share_amount=10_000)
    settle(late, empty_settlement(0))
    late.add_order(Orders(ASKER).sign(ExtendSharedBlobBody, 1, shared=late_shared, epochs=1))
    assert late.shared_extensions_to_list(1, 9) == []


def test_a_settlement_waits_for_the_funds_and_requests_it_lists() -> None:
    ledger, _, shared, orders = shared_setup()
    fund = Orders(FUNDER).sign(FundSharedBlobBody, shared=shared, amount=200)
    ask = Orders(ASKER).sign(ExtendSharedBlobBody, shared=shared, epochs=1)
    for order in (fund, ask):
        ledger.add_order(order)
    value = empty_settlement(0, shared_extensions=tuple(ledger.shared_extensions_to_list(0, 9)))
    assert len(value.shared_extensions) == 1
    # another peer learns the settlement first, then the orders, in any order
    other = new_ledger({OWNER.public_key.raw: 100_000, FUNDER.public_key.raw: 5_000})
    assert settle(other, value) is Outcome.WAITING
    assert other.settlement_ready(value) is not None
    for order in [ask, *orders]:
        other.add_order(order)
    assert other.waiting_settlements() == [0]  # the funds are not there yet
    other.add_order(fund)
    assert other.waiting_settlements() == []
    settle(ledger, value)
    assert other.snapshot() == ledger.snapshot()


def test_the_blob_state_end_counts_shared_ends_of_live_registrations() -> None:
    key = (OWNER.public_key.raw, 0)
    registered = records.BlobState(
        BLOB, {key: records.Registration(registered=True, size=5, end_epoch=4, permanent=True)}
    )
    extended = registered.with_shared_ends({OWNER.public_key.raw: 9})
    assert (registered.end_epoch, extended.end_epoch) == (4, 9)
    # a shared end of another owner, or without a registration, extends nothing
    assert registered.with_shared_ends({FUNDER.public_key.raw: 12}).end_epoch == 4
    assert (
        records.BlobState.empty(BLOB).with_shared_ends({OWNER.public_key.raw: 9}).end_epoch is None
    )
    # a join: commutative and keeps the latest end
    other = registered.with_shared_ends({OWNER.public_key.raw: 7})
    assert extended.join(other) == other.join(extended)
    assert extended.join(other).end_epoch == 9
