"""Orders across an epoch change: approvals sign the member's current epoch, the old committee's
locks are handed over to the new one, and an owner cannot spend one slot twice across the change
(docs/economics.md, "Double spending"). Pure: the signing rule and its reports, no network; the
peers' part is tests/node/test_handover_network.py."""

from __future__ import annotations

import cbor2
import pytest
from economy_helpers import NETWORK, Orders, committee_of, identities, new_ledger
from hypothesis import given, settings
from hypothesis import strategies as st

from walrus_p2p.core import economy_messages as em
from walrus_p2p.core.committee import Committee, is_quorum
from walrus_p2p.core.economy_messages import TransferBody
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.ledger import Ledger
from walrus_p2p.core.order_signer import HANDOVERS_KEY, KEEP_HANDOVERS, OrderSigner
from walrus_p2p.core.records import Signature
from walrus_p2p.errors import OrderRefusedError, WireError
from walrus_p2p.types import Epoch

OWNER, PAYEE, OTHER = identities(3, salt=60)
POOL = identities(10, salt=61)


def refusal(call: object, *arguments: object) -> str:
    with pytest.raises(OrderRefusedError) as refused:
        call(*arguments)  # type: ignore[operator]
    return refused.value.reason


def transfer(
    epoch: int, recipient: Identity, amount: int = 10, sequence: int = 0
) -> em.SignedOrder:
    return Orders(OWNER, sequence).sign(
        TransferBody, epoch, recipient=recipient.public_key.raw, amount=amount
    )


def test_an_order_of_the_last_epoch_is_approved_in_the_current_one() -> None:
    """An order whose approvals were under way at the change is completed by the new committee:
    the approval signs the member's current epoch; an order two epochs old is refused."""
    ledger = new_ledger({OWNER.public_key.raw: 100})
    signer = OrderSigner(POOL[0], NETWORK)
    order = transfer(0, PAYEE)
    assert refusal(signer.approve, order, ledger, 2) == "ORDER_WRONG_EPOCH"
    signature = signer.approve(order, ledger, 1)
    assert signature == em.approve(POOL[0], NETWORK, 1, em.order_id(order)).signature
    assert signer.locked(OWNER.public_key.raw, 0) == (1, em.order_id(order))
    # asked again in a later epoch, it approves the same order again, signing that epoch
    later = transfer(1, PAYEE)
    assert refusal(signer.approve, later, ledger, 1) == "ORDER_CONFLICT"


def test_adopted_locks_refuse_conflicts_and_let_the_same_order_complete() -> None:
    ledger = new_ledger({OWNER.public_key.raw: 100})
    newcomer = OrderSigner(POOL[1], NETWORK)
    first, second, third = transfer(3, PAYEE), transfer(4, OTHER), transfer(4, PAYEE, 11)
    assert newcomer.adopt(first, ledger, 4)
    assert not newcomer.adopt(first, ledger, 4)  # reported twice: no change
    assert refusal(newcomer.approve, second, ledger, 4) == "ORDER_CONFLICT"
    assert newcomer.approve(first, ledger, 4)  # the reported order itself completes
    # a second order reported for the slot: the owner equivocated, nothing of it is approved
    assert newcomer.adopt(second, ledger, 4)
    assert not newcomer.adopt(third, ledger, 4)  # contested already: two orders kept
    assert refusal(newcomer.approve, first, ledger, 4) == "ORDER_CONFLICT"
    assert refusal(newcomer.approve, second, ledger, 4) == "ORDER_CONFLICT"
    # a reporter cannot invent a lock: only the owner signs orders
    forged = em.SignedOrder(transfer(4, OTHER, sequence=1).body, bytes(64))
    assert refusal(newcomer.adopt, forged, ledger, 4) == "ORDER_FORGED"
    # a slot the ledger has decided is not adopted
    ledger.add_order(transfer(0, PAYEE, sequence=0))
    fresh = OrderSigner(POOL[2], NETWORK)
    assert not fresh.adopt(transfer(4, OTHER), ledger, 4)
    assert fresh.locked(OWNER.public_key.raw, 0) is None


def test_a_report_holds_the_locks_of_two_epochs_in_pages_that_keep_slots_whole() -> None:
    owners = identities(6, salt=62)
    ledger = new_ledger({owner.public_key.raw: 100 for owner in owners})
    signer = OrderSigner(POOL[3], NETWORK)
    orders = {}
    for index, owner in enumerate(owners):
        epoch = 3 + index % 3  # epochs 3, 4, 5
        order = Orders(owner).sign(TransferBody, epoch, recipient=PAYEE.public_key.raw, amount=1)
        signer.approve(order, ledger, epoch)
        orders[owner.public_key.raw] = (epoch, em.wire.encode(order))
        if index in (0, 2):
            # decided here: owner 0's in epoch 3 is not reported for epoch 5 (an undecided one
            # of epoch 3, owner 3's, still is); owner 2's in epoch 5 is, as a decided slot
            ledger.add_order(order)
    contested = owners[1]  # its lock is of epoch 4
    signer.adopt(
        Orders(contested).sign(TransferBody, 4, recipient=OTHER.public_key.raw, amount=1),
        ledger,
        5,
    )
    decided = owners[2].public_key.raw
    wanted = sorted(
        (em.order_key(account, 0), encoded)
        for account, (epoch, encoded) in orders.items()
        if account not in (owners[0].public_key.raw, decided)
    )
    report = signer.report(ledger, 5, None, 64, 16)
    everything = report.orders
    assert report.next_start is None and len(everything) == len(wanted) + 1
    assert [e for e in everything if e in dict(wanted).values()] == [e for _, e in wanted]
    decided_order = em.wire.decode(orders[decided][1], em.SignedOrder)
    assert report.decided == [(decided, 0, em.order_id(decided_order))]  # an id, not the order
    pages, start = [], None
    for _ in range(10):
        page = signer.report(ledger, 5, start, 2, 16)
        assert len(page.orders) <= 2 and (page.orders or page.decided)
        pages.append(page.orders)
        start = page.next_start
        if start is None:
            break
    assert [order for page in pages for order in page] == everything
    assert any(len(page) == 2 and page[0] != page[1] for page in pages)
    assert signer.report(ledger, 5, None, 64, 0).decided == []  # a page that holds none
    # locks of later epochs are in it too: a member of both committees may re-tag a lock
    # (approving or adopting it again) before it answers for the epoch it left
    earlier = signer.report(ledger, 2, None, 64, 16)
    assert earlier.orders == everything
    assert set(earlier.decided) == {
        *report.decided,
        (
            owners[0].public_key.raw,
            0,
            em.order_id(em.wire.decode(orders[owners[0].public_key.raw][1], em.SignedOrder)),
        ),
    }
    # a lock approved again in a later epoch is that epoch's: reported by its hand-over
    again = owners[3]
    signer.approve(
        Orders(again).sign(TransferBody, 3, recipient=PAYEE.public_key.raw, amount=1), ledger, 4
    )
    assert signer.locked(again.public_key.raw, 0) == (
        4,
        em.order_id(em.wire.decode(orders[again.public_key.raw][1], em.SignedOrder)),
    )


def test_the_rows_keep_orders_and_hand_overs_and_the_old_journal_still_reads() -> None:
    ledger = new_ledger({OWNER.public_key.raw: 100})
    signer = OrderSigner(POOL[4], NETWORK)
    order = transfer(2, PAYEE)
    signer.approve(order, ledger, 2)
    for epoch in range(1, KEEP_HANDOVERS + 4):
        signer.handover_done(epoch)
    assert signer.handovers == tuple(range(4, KEEP_HANDOVERS + 4))
    rows = signer.rows()
    restored = OrderSigner.from_rows(rows, POOL[4], NETWORK)
    assert restored.rows() == rows and restored.handovers == signer.handovers
    assert restored.report(ledger, 2, None, 8, 8).orders == [em.wire.encode(order)]
    (lock_key, lock_row), (handovers_key, handovers_row) = rows
    assert handovers_key == HANDOVERS_KEY
    tag, network, _ = cbor2.loads(handovers_row)
    epoch, identifier, orders = cbor2.loads(lock_row)
    for bad in (
        (handovers_key, cbor2.dumps([tag, network, [5, 4]])),  # hand-overs out of order
        (handovers_key, cbor2.dumps([tag, network, [-1]])),
        (lock_key, cbor2.dumps([epoch, identifier, [b"a", b"b", b"c"]])),  # three orders
        (lock_key, cbor2.dumps([epoch, identifier[:31], orders])),
    ):
        with pytest.raises(WireError):
            OrderSigner.from_rows([bad], POOL[4], NETWORK)
    # a journal of the version before: locks without their orders, still refusing conflicts
    old = cbor2.dumps(
        ["walrus-p2p order signer v1", NETWORK, [[OWNER.public_key.raw, 0, 2, em.order_id(order)]]],
        canonical=True,
    )
    upgraded = OrderSigner.from_journal(old, POOL[4], NETWORK)
    assert upgraded.locked(OWNER.public_key.raw, 0) == (2, em.order_id(order))
    assert len(upgraded.take_changes()) == 2  # its lock and hand-over rows, to write once
    with pytest.raises(WireError, match="another network"):
        OrderSigner.from_journal(old, POOL[4], bytes(32))
    assert refusal(upgraded.approve, transfer(2, OTHER), ledger, 2) == "ORDER_CONFLICT"
    assert upgraded.handovers == () and upgraded.report(ledger, 2, None, 8, 8).orders == []


def _faulty(committees: list[Committee], order: list[Identity]) -> set[str]:
    """Peers, taken in the given order while their shards in each committee stay at most its
    f = (n - 1) // 3."""
    chosen: set[str] = set()
    for member in order:
        if all(
            c.shard_weight([*chosen, member.peer_id]) <= (c.n_shards - 1) // 3 for c in committees
        ):
            chosen.add(member.peer_id)
    return chosen


def _quorum_subset(committee: Committee, order: list[Identity]) -> list[Identity]:
    """A prefix of ``order`` (members only) holding a quorum of ``committee``'s shards."""
    chosen: list[Identity] = []
    for member in order:
        if member.peer_id in committee:
            chosen.append(member)
            if committee.is_quorum(m.peer_id for m in chosen):
                return chosen
    raise AssertionError("no quorum")


def _run_change(
    data: st.DataObject, *, hand_over: bool
) -> tuple[Committee, Committee, list[Signature], list[Signature]]:
    """An owner gets X certified by committee 5 and withholds it; at the change to epoch 6
    the new members collect reports from old members holding a quorum (faulty ones report
    nothing) — or, with ``hand_over`` False, nothing; then the owner asks committee 6 for a
    conflicting Y. Faulty members (at most f of each committee) approve anything. Returns the
    committees and the approvals of X (epoch 5) and Y (epoch 6)."""
    old_members = data.draw(st.lists(st.sampled_from(POOL), min_size=4, max_size=7, unique=True))
    new_members = data.draw(st.lists(st.sampled_from(POOL), min_size=4, max_size=7, unique=True))
    old_weights = data.draw(st.lists(st.integers(1, 3), min_size=7, max_size=7))
    new_weights = data.draw(st.lists(st.integers(1, 3), min_size=7, max_size=7))
    old = committee_of(old_members, old_weights[: len(old_members)], 3 * len(old_members), 5)
    new = committee_of(new_members, new_weights[: len(new_members)], 3 * len(new_members), 6)
    faulty = _faulty([old, new], data.draw(st.permutations(POOL)))
    ledger: Ledger = new_ledger({OWNER.public_key.raw: 100})
    signers = {member.peer_id: OrderSigner(member, NETWORK) for member in POOL}
    for signer in signers.values():
        signer.handover_done(5)

    def approve(members: list[Identity], order: em.SignedOrder, epoch: int) -> list[Signature]:
        approvals = []
        for member in members:
            if member.peer_id in faulty:
                approvals.append(em.approve(member, NETWORK, epoch, em.order_id(order)))
                continue
            try:
                signature = signers[member.peer_id].approve(order, ledger, epoch)
            except OrderRefusedError:
                continue
            approvals.append(Signature(member.peer_id, signature))
        return approvals

    x, y = transfer(5, PAYEE), transfer(6, OTHER)
    x_approvers = _quorum_subset(old, data.draw(st.permutations(POOL)))
    x_approvals = approve(x_approvers, x, 5)
    if hand_over:
        reporters = _quorum_subset(old, data.draw(st.permutations(POOL)))
        for member in new_members:
            if member.peer_id in faulty:
                continue
            signer = signers[member.peer_id]
            for reporter in reporters:
                if reporter.peer_id in faulty:
                    continue  # reports nothing
                for encoded in signers[reporter.peer_id].report(ledger, 5, None, 64, 64).orders:
                    signer.adopt(em.wire.decode(encoded, em.SignedOrder), ledger, 6)
            signer.handover_done(6)
    y_approvals = approve(new_members, y, 6)
    return old, new, x_approvals, y_approvals


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_no_double_spend_across_an_epoch_change(data: st.DataObject) -> None:
    old, new, x_approvals, y_approvals = _run_change(data, hand_over=True)
    assert old.is_quorum(a.signer for a in x_approvals)  # X is certified by committee 5
    assert not new.is_quorum(a.signer for a in y_approvals)  # Y never is, by committee 6


def test_without_the_hand_over_the_new_committee_certifies_the_conflict() -> None:
    """The control: the property test above fails without the hand-over (disjoint committees,
    no faults: every new member approves Y)."""
    ledger = new_ledger({OWNER.public_key.raw: 100})
    old_members, new_members = POOL[:4], POOL[4:8]
    old = committee_of(old_members, [1, 1, 1, 1], 4, 5)
    new = committee_of(new_members, [1, 1, 1, 1], 4, 6)
    x, y = transfer(5, PAYEE), transfer(6, OTHER)
    x_approvals = [
        Signature(m.peer_id, OrderSigner(m, NETWORK).approve(x, ledger, 5)) for m in old_members
    ]
    assert old.is_quorum(a.signer for a in x_approvals)
    y_approvals = [
        Signature(m.peer_id, OrderSigner(m, NETWORK).approve(y, ledger, 6)) for m in new_members
    ]
    assert is_quorum(new.shard_weight(a.signer for a in y_approvals), new.n_shards)


def test_an_order_caught_by_the_change_is_certified_by_the_new_committee() -> None:
    """X gathered approvals from less than a quorum of epoch 5; after the hand-over the new
    committee approves the same X, signing epoch 6, and its certificate verifies as epoch 6's."""
    ledger = new_ledger({OWNER.public_key.raw: 100})
    old_members, new_members = POOL[:4], POOL[2:6]
    old = committee_of(old_members, [1, 1, 1, 1], 4, 5)
    new = committee_of(new_members, [1, 1, 1, 1], 4, 6)
    signers = {m.peer_id: OrderSigner(m, NETWORK) for m in POOL[:6]}
    x = transfer(5, PAYEE)
    for member in old_members[:2]:
        signers[member.peer_id].approve(x, ledger, 5)
    for member in new_members:
        for reporter in old_members[1:]:  # three of four: a quorum
            for encoded in signers[reporter.peer_id].report(ledger, 5, None, 64, 64).orders:
                signers[member.peer_id].adopt(em.wire.decode(encoded, em.SignedOrder), ledger, 6)
    approvals = [
        Signature(m.peer_id, signers[m.peer_id].approve(x, ledger, 6)) for m in new_members
    ]
    certificate = em.certify(x, approvals, 6)
    committees = {Epoch(5): old, Epoch(6): new}.get
    assert isinstance(em.verify_certified_order(certificate, NETWORK, committees), TransferBody)
    # the same approvals presented as epoch 5's do not verify
    with pytest.raises(OrderRefusedError):
        em.verify_certified_order(em.certify(x, approvals, 5), NETWORK, committees)
