"""The signing rule of a member, certificates, conflict evidence, and double spending."""

from __future__ import annotations

import dataclasses

import pytest
from economy_helpers import (
    NETWORK,
    Orders,
    approve_with,
    certify_all,
    committee_of,
    identities,
    new_ledger,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from walrus_p2p.core import economy_messages as em
from walrus_p2p.core.committee import Committee, is_quorum
from walrus_p2p.core.economy_messages import (
    AttachBlobBody,
    BuyStorageBody,
    ReleaseStorageBody,
    RequestWithdrawBody,
    StakeBody,
    TransferBody,
    WithdrawBody,
)
from walrus_p2p.core.ledger import Ledger, Outcome
from walrus_p2p.core.order_signer import OrderSigner
from walrus_p2p.core.records import Signature
from walrus_p2p.errors import ORDER_REFUSAL_REASONS, OrderRefusedError, VerificationError, WireError
from walrus_p2p.types import Epoch

OWNER, PAYEE, OTHER = identities(3, salt=40)
MEMBERS = identities(7, salt=41)
COMMITTEE = committee_of(MEMBERS[:4], [1, 1, 1, 1], 4, epoch=0)


def refusal(call: object, *arguments: object, **keywords: object) -> str:
    with pytest.raises(OrderRefusedError) as refused:
        call(*arguments, **keywords)  # type: ignore[operator]
    return refused.value.reason


def test_every_refusal_reason_is_stable_and_known() -> None:
    with pytest.raises(ValueError):
        OrderRefusedError("NOT_A_REASON", "x")
    assert OrderRefusedError("ORDER_FORGED", "x").reason == "ORDER_FORGED"
    assert len(ORDER_REFUSAL_REASONS) == 19


def test_the_signer_refuses_bad_orders_with_their_reasons() -> None:
    ledger = new_ledger({OWNER.public_key.raw: 100})
    signer = OrderSigner(MEMBERS[0], NETWORK)
    owner = Orders(OWNER)
    payee = PAYEE.public_key.raw
    seen: set[str] = set()

    def expect(reason: str, order: em.SignedOrder, epoch: int = 0) -> None:
        before = (ledger.snapshot(), signer.rows())
        assert refusal(signer.approve, order, ledger, epoch) == reason
        assert (ledger.snapshot(), signer.rows()) == before  # a refusal changes nothing
        seen.add(reason)

    good = owner.sign(TransferBody, recipient=payee, amount=10)
    forged = dataclasses.replace(good, signature=bytes(64))
    expect("ORDER_FORGED", forged)
    other_network = em.sign_order(
        OWNER, TransferBody(bytes(32), OWNER.public_key.raw, 0, Epoch(0), payee, 1)
    )
    expect("ORDER_WRONG_NETWORK", other_network)
    expect("ORDER_MALFORMED", em.SignedOrder(b"\x00", bytes(64)))
    expect("ORDER_WRONG_EPOCH", good, 2)  # epoch 1 still completes an order of epoch 0
    overdrawn = Orders(OWNER).sign(TransferBody, recipient=payee, amount=101)
    expect("ORDER_OVERDRAWN", overdrawn)
    expect("ORDER_MALFORMED", Orders(OWNER).sign(TransferBody, recipient=payee, amount=0))
    expect(
        "ORDER_OUT_OF_SEQUENCE",
        Orders(OWNER, start=1).sign(TransferBody, recipient=payee, amount=1),
    )
    expect(
        "ORDER_PRICE_MISMATCH",
        Orders(OWNER).sign(BuyStorageBody, units=1, start_epoch=0, end_epoch=2, amount=7),
    )
    expect(
        "ORDER_LIFETIME_TOO_LONG",
        Orders(OWNER).sign(BuyStorageBody, units=1, start_epoch=0, end_epoch=11, amount=110),
    )
    expect("RESOURCE_UNKNOWN", Orders(OWNER).sign(ReleaseStorageBody, resource=bytes(32)))
    expect("STAKE_UNKNOWN", Orders(OWNER).sign(WithdrawBody, stake=bytes(32)))
    # the good order is approved, and approved again identically (the same slot, the same order)
    approval = signer.approve(good, ledger, 0)
    assert signer.approve(good, ledger, 0) == approval
    conflicting = Orders(OWNER).sign(TransferBody, recipient=OTHER.public_key.raw, amount=10)
    expect("ORDER_CONFLICT", conflicting)
    ledger.add_order(certify_all(good, MEMBERS[:3], 0).order)
    expect(
        "ORDER_REPLAYED", Orders(OWNER).sign(TransferBody, recipient=OTHER.public_key.raw, amount=1)
    )
    # storage and stake states
    buy = owner.sign(BuyStorageBody, units=1, start_epoch=0, end_epoch=2, amount=20)
    assert ledger.add_order(buy) is Outcome.APPLIED
    resource = em.order_id(buy)
    too_big = Orders(OWNER, owner.sequence).sign(
        AttachBlobBody,
        resource=resource,
        blob_id=bytes(32),
        encoded_size=(1 << 20) + 1,
        deletable=True,
        amount=6,
    )
    expect("RESOURCE_UNUSABLE", too_big)
    stake = owner.sign(StakeBody, peer=MEMBERS[0].public_key.raw, amount=5)
    ledger.add_order(stake)
    early = Orders(OWNER, owner.sequence).sign(WithdrawBody, stake=em.order_id(stake))
    expect("STAKE_NOT_WITHDRAWABLE", early)
    ledger.add_order(owner.sign(RequestWithdrawBody, stake=em.order_id(stake)))
    twice = Orders(OWNER, owner.sequence).sign(RequestWithdrawBody, stake=em.order_id(stake))
    expect("STAKE_NOT_WITHDRAWABLE", twice)
    waiting = Orders(OWNER, owner.sequence).sign(WithdrawBody, stake=em.order_id(stake))
    expect("STAKE_NOT_WITHDRAWABLE", waiting)  # requested, not complete before a settlement
    # RESOURCE_IN_USE is the storage peer's (it reads its record book): test_paid_storage.py
    assert seen == ORDER_REFUSAL_REASONS - {
        "CERTIFICATE_INVALID",
        "SETTLEMENT_INVALID",
        "RESOURCE_IN_USE",
        "HANDOVER_PENDING",  # the storage peer's gate: test_economy_handover.py
        "HANDOVER_NOT_READY",
    }


def test_signer_state_survives_a_restart_and_keeps_refusing_conflicts() -> None:
    ledger = new_ledger({OWNER.public_key.raw: 100})
    signer = OrderSigner(MEMBERS[1], NETWORK)
    first = Orders(OWNER).sign(TransferBody, recipient=PAYEE.public_key.raw, amount=10)
    approval = signer.approve(first, ledger, 0)
    written = signer.take_changes()  # what the peer writes before the approval leaves
    assert [key for key, _ in written] == [em.order_key(OWNER.public_key.raw, 0)]
    assert signer.take_changes() == []  # nothing changed since
    rows = signer.rows()
    restored = OrderSigner.from_rows(rows, MEMBERS[1], NETWORK)
    assert restored.rows() == rows
    assert restored.locked(OWNER.public_key.raw, 0) == (0, em.order_id(first))
    conflicting = Orders(OWNER).sign(TransferBody, recipient=OTHER.public_key.raw, amount=10)
    assert refusal(restored.approve, conflicting, ledger, 0) == "ORDER_CONFLICT"
    assert restored.approve(first, ledger, 0) == approval
    # a fresh signer (a lost journal) would have signed it: the journal is what prevents it
    assert OrderSigner(MEMBERS[1], NETWORK).approve(conflicting, ledger, 0)
    key, value = rows[0]
    for bad in (b"", b"\xa0", value[:-1], value + b"\x00"):
        with pytest.raises(WireError):
            OrderSigner.from_rows([(key, bad)], MEMBERS[1], NETWORK)
    with pytest.raises(WireError):
        OrderSigner.from_rows([(key[:-1], value)], MEMBERS[1], NETWORK)
    with pytest.raises(WireError, match="another network"):
        OrderSigner.from_rows(rows, MEMBERS[1], bytes(32))
    ledger.add_order(first)
    # a decided slot's lock is kept while a hand-over may still report it, then dropped
    assert restored.prune(ledger, 2) == 0
    assert refusal(restored.approve, conflicting, ledger, 0) == "ORDER_REPLAYED"
    restored.take_changes()
    assert restored.prune(ledger, 3) == 1
    assert restored.take_changes() == [(key, None)]  # the row is deleted
    assert restored.locked(OWNER.public_key.raw, 0) is None
    assert refusal(restored.approve, conflicting, ledger, 0) == "ORDER_REPLAYED"


def test_certificates_need_a_quorum_of_valid_approvals() -> None:
    order = Orders(OWNER).sign(TransferBody, recipient=PAYEE.public_key.raw, amount=1)

    def committee_of_epoch(epoch: Epoch) -> Committee | None:
        return COMMITTEE if epoch == 0 else None

    good = certify_all(order, MEMBERS[:3], 0)  # 3 of 4 shards: 9 >= 9
    body = em.verify_certified_order(good, NETWORK, committee_of_epoch)
    assert isinstance(body, TransferBody) and body.amount == 1
    for bad in (
        certify_all(order, MEMBERS[:2], 0),  # 2 of 4 shards
        certify_all(order, [*MEMBERS[:2], MEMBERS[5]], 0),  # a non-member
        certify_all(order, MEMBERS[:3], 1),  # approvals for another epoch
        em.certify(
            order,
            [
                *certify_all(order, MEMBERS[:2], 0).approvals,
                Signature(MEMBERS[2].peer_id, bytes(64)),
            ],
            0,
        ),
        # approvals of epoch 0 presented as approvals of the next epoch
        dataclasses.replace(certify_all(order, MEMBERS[:3], 0), epoch=Epoch(1)),
    ):
        assert refusal(em.verify_certified_order, bad, NETWORK, committee_of_epoch) == (
            "CERTIFICATE_INVALID"
        )
    later = Orders(OWNER).sign(TransferBody, 3, recipient=PAYEE.public_key.raw, amount=1)
    assert (
        refusal(
            em.verify_certified_order,
            certify_all(later, MEMBERS[:3], 3),
            NETWORK,
            committee_of_epoch,
        )
        == "CERTIFICATE_INVALID"
    )
    forged = em.CertifiedOrder(
        dataclasses.replace(order, signature=bytes(64)), good.approvals, good.epoch
    )
    assert refusal(em.verify_certified_order, forged, NETWORK, committee_of_epoch) == "ORDER_FORGED"


def test_conflict_evidence_is_checkable_by_anyone() -> None:
    cheat = MEMBERS[3]
    first = Orders(OWNER).sign(TransferBody, recipient=PAYEE.public_key.raw, amount=5)
    second = Orders(OWNER).sign(TransferBody, recipient=OTHER.public_key.raw, amount=5)
    approvals = [em.approve(cheat, NETWORK, 0, em.order_id(o)).signature for o in (first, second)]
    evidence = em.ConflictEvidence(
        cheat.public_key.raw, first, approvals[0], Epoch(0), second, approvals[1], Epoch(0)
    )
    assert em.verify_conflict_evidence(evidence, NETWORK) == (OWNER.public_key.raw, 0)
    for bad in (
        dataclasses.replace(evidence, second=first, second_approval=approvals[0]),
        dataclasses.replace(evidence, public_key=MEMBERS[2].public_key.raw),
        dataclasses.replace(evidence, second_epoch=Epoch(1)),
        dataclasses.replace(
            evidence,
            second=Orders(OWNER, 1).sign(TransferBody, recipient=PAYEE.public_key.raw, amount=5),
        ),
    ):
        with pytest.raises(VerificationError):
            em.verify_conflict_evidence(bad, NETWORK)


# Double spending ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(1, 4), min_size=4, max_size=7),
    n_shards=st.integers(4, 16),
    data=st.data(),
)
def test_two_conflicting_orders_never_both_reach_a_quorum(
    weights: list[int], n_shards: int, data: st.DataObject
) -> None:
    """One owner signs two conflicting transfers and sends them to two parts of the committee
    at once. Byzantine members holding at most f shards approve everything; honest members
    follow the signing rule. At most one order gets approvals of quorum weight."""
    members = MEMBERS[: len(weights)]
    committee = committee_of(members, weights, n_shards, epoch=0)
    f = (n_shards - 1) // 3
    order = data.draw(st.permutations(list(range(len(members)))))
    byzantine: set[int] = set()
    held = 0
    for index in order:  # as many Byzantine members as f shards allow, in a random order
        shards = len(committee.shards_of(members[index].peer_id))
        if held + shards <= f and data.draw(st.booleans()):
            byzantine.add(index)
            held += shards
    ledger = new_ledger({OWNER.public_key.raw: 10})
    first = Orders(OWNER).sign(TransferBody, recipient=PAYEE.public_key.raw, amount=10)
    second = Orders(OWNER).sign(TransferBody, recipient=OTHER.public_key.raw, amount=10)
    # which honest member sees which order first (or only one of them)
    arrival = {
        index: data.draw(
            st.sampled_from(["first", "second", "first-then-second", "second-then-first"])
        )
        for index in range(len(members))
    }
    approvers: dict[str, set[str]] = {"first": set(), "second": set()}
    for index, member in enumerate(members):
        if index in byzantine:
            approvers["first"].add(member.peer_id)
            approvers["second"].add(member.peer_id)
            continue
        signer = OrderSigner(member, NETWORK)
        for name in arrival[index].split("-then-"):
            signed = first if name == "first" else second
            if approve_with([signer], ledger, signed, 0):
                approvers[name].add(member.peer_id)
    certified = [name for name, peers in approvers.items() if committee.is_quorum(peers)]
    assert len(certified) <= 1
    # the honest approvals of the two orders are disjoint: the signing rule at work
    honest = {m.peer_id for i, m in enumerate(members) if i not in byzantine}
    assert not approvers["first"] & approvers["second"] & honest
    assert held <= f and is_quorum(committee.shard_weight(honest), n_shards)


def test_with_more_than_f_byzantine_shards_both_could_be_certified() -> None:
    """The control: the bound is tight. n = 4, f = 1; two Byzantine members (2 shards) and a
    split of the two honest ones certify both orders."""
    ledger = new_ledger({OWNER.public_key.raw: 10})
    first = Orders(OWNER).sign(TransferBody, recipient=PAYEE.public_key.raw, amount=10)
    second = Orders(OWNER).sign(TransferBody, recipient=OTHER.public_key.raw, amount=10)
    honest = [OrderSigner(member, NETWORK) for member in MEMBERS[:2]]
    byzantine = MEMBERS[2:4]
    first_approvals = approve_with(honest[:1], ledger, first, 0) + [
        em.approve(m, NETWORK, 0, em.order_id(first)) for m in byzantine
    ]
    second_approvals = approve_with(honest[1:], ledger, second, 0) + [
        em.approve(m, NETWORK, 0, em.order_id(second)) for m in byzantine
    ]
    lookup = {Epoch(0): COMMITTEE}.get
    em.verify_certified_order(em.certify(first, first_approvals, 0), NETWORK, lookup)
    em.verify_certified_order(em.certify(second, second_approvals, 0), NETWORK, lookup)
    # and the ledger that sees both refuses the second one: evidence of more than f faults
    ledger_view = new_ledger({OWNER.public_key.raw: 10})
    ledger_view.add_order(first)
    assert refusal(ledger_view.add_order, second) == "ORDER_CONFLICT"


def test_a_certified_order_through_the_signing_rule_applies() -> None:
    ledger = new_ledger({OWNER.public_key.raw: 10})
    signers = [OrderSigner(member, NETWORK) for member in MEMBERS[:4]]
    order = Orders(OWNER).sign(TransferBody, recipient=PAYEE.public_key.raw, amount=4)
    certificate = em.certify(order, approve_with(signers, ledger, order, 0), 0)
    em.verify_certified_order(certificate, NETWORK, {Epoch(0): COMMITTEE}.get)
    assert ledger.add_order(certificate.order) is Outcome.APPLIED
    assert isinstance(ledger, Ledger) and ledger.balance(PAYEE.public_key.raw) == 4
