"""Accounts and certified transfers over real in-process peers (docs/economics.md, "The protocol").

Four storage peers of a 10-shard network whose genesis funds a few accounts; a light peer acts
as the wallet. Each test checks what the wallet gets and what every peer's ledger holds after:
a transfer certified and agreed everywhere, locks that survive a restart, a double spend split
over the committee (at most one certificate, every run), forged, replayed and overdrawn orders
refused with their reasons and nothing changed, and a peer that was down catching up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import trio

from walrus_p2p.client.network import LightPeer
from walrus_p2p.client.wallet import (
    WalletOptions,
    account_view,
    collect_approvals,
    send_transfer,
)
from walrus_p2p.core import wire
from walrus_p2p.core.economy_messages import (
    ApproveOrderReply,
    ApproveOrderRequest,
    CertifiedOrder,
    SignedOrder,
    SubmitCertificateReply,
    SubmitCertificateRequest,
    TransferBody,
    certify,
    order_id,
    sign_order,
)
from walrus_p2p.core.genesis import Allocation, EconomyGenesis
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.records import Signature
from walrus_p2p.errors import OrderRefusedError, RemoteError, WalrusError
from walrus_p2p.node.economy import EconomyOptions
from walrus_p2p.testing.network import (
    NetworkOptions,
    TestNetwork,
    open_network,
    open_test_light_peer,
    seed_for,
)
from walrus_p2p.types import Epoch, PeerId

pytestmark = pytest.mark.timeout(180)

STEP = 30.0
"""Deadline for one network step: generous for a loaded 2-core machine."""
WAL = 10**9
FUNDED = 1000 * WAL
NAME = "testnet-economy"
OPTIONS = WalletOptions(request_timeout=5.0, total_timeout=20.0, attempts=2, tail_seconds=1.0)


def account(name: str) -> Identity:
    return Identity.from_seed(seed_for(NAME, f"wallet-{name}"))


ALICE, BOB, CAROL = account("alice"), account("bob"), account("carol")
SPENDERS = [account(f"spender{index}") for index in range(3)]


@pytest.fixture
async def network() -> AsyncIterator[TestNetwork]:
    funded = [ALICE, *SPENDERS]
    economy = EconomyGenesis(
        allocations=tuple(Allocation(owner.public_key.raw, FUNDED) for owner in funded)
    )
    options = NetworkOptions(
        network=NAME,
        economy=economy,
        economy_options=EconomyOptions(gap_interval=1.0, request_timeout=5.0),
    )
    async with open_network(4, options) as running:
        yield running


@pytest.fixture
async def light(network: TestNetwork) -> AsyncIterator[LightPeer]:
    async with open_test_light_peer(network) as peer:
        yield peer


def balances(network: TestNetwork, *owners: Identity) -> list[list[int]]:
    """Per running peer: the balances of ``owners`` in its ledger."""
    return [
        [peer.running.economy.ledger.balance(owner.public_key.raw) for owner in owners]
        for peer in network.running()
    ]


async def wait_for(condition: Callable[[], bool], timeout: float = STEP) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.1)


def transfer(
    network: TestNetwork, owner: Identity, recipient: Identity, amount: int, sequence: int = 0
) -> SignedOrder:
    body = TransferBody(
        network_id=network.genesis.network_id,
        account=owner.public_key.raw,
        sequence=sequence,
        epoch=Epoch(0),
        recipient=recipient.public_key.raw,
        amount=amount,
    )
    return sign_order(owner, body)


async def ask_approval(light: LightPeer, peer_id: PeerId, order: SignedOrder) -> bytes:
    reply = await light.call(
        peer_id, ApproveOrderRequest(order=order), ApproveOrderReply, timeout=STEP
    )
    return reply.signature


async def refusal_of(call: Callable[[], object]) -> str:
    with pytest.raises(WalrusError) as caught:
        await call()  # type: ignore[misc]
    return caught.value.reason


async def test_transfer_is_certified_and_every_ledger_agrees(
    network: TestNetwork, light: LightPeer
) -> None:
    with trio.fail_after(STEP * 2):
        result = await send_transfer(light, ALICE, BOB.public_key.raw, 250 * WAL, options=OPTIONS)
    assert result.sequence == 0
    assert 3 * result.approved_shards >= 2 * result.n_shards + 1
    await wait_for(lambda: balances(network, ALICE, BOB) == [[750 * WAL, 250 * WAL]] * 4)
    for peer in network.peers:
        ledger = peer.running.economy.ledger
        assert ledger.next_sequence(ALICE.public_key.raw) == 1
        assert ledger.total() == ledger.supply

    with trio.fail_after(STEP * 2):
        second = await send_transfer(light, ALICE, BOB.public_key.raw, 50 * WAL, options=OPTIONS)
        view = await account_view(light, BOB.public_key.raw, options=OPTIONS)
        sender = await account_view(light, ALICE.public_key.raw, options=OPTIONS)
    assert second.sequence == 1
    assert view.balance == 300 * WAL and view.next_sequence == 0
    assert {entry.order_id for entry in view.received} == {result.order_id, second.order_id}
    assert sender.balance == 700 * WAL and sender.next_sequence == 2
    assert [entry.sequence for entry in sender.orders] == [1, 0]
    assert sender.pending == {}


async def test_restarted_member_keeps_its_locks(network: TestNetwork, light: LightPeer) -> None:
    member = network.peers[0]
    first = transfer(network, ALICE, BOB, 10 * WAL)
    conflicting = transfer(network, ALICE, CAROL, 10 * WAL)
    with trio.fail_after(STEP * 3):
        approval = await ask_approval(light, member.peer_id, first)
        await network.stop(member)
        await network.start(member)
        reason = await refusal_of(lambda: ask_approval(light, member.peer_id, conflicting))
        again = await ask_approval(light, member.peer_id, first)
    assert reason == "ORDER_CONFLICT"
    assert again == approval
    assert member.running.economy.signer.locked(ALICE.public_key.raw, 0) == (0, order_id(first))


async def test_double_spend_over_two_halves_certifies_at_most_one(
    network: TestNetwork, light: LightPeer
) -> None:
    committee = network.genesis.committee
    members = list(committee.peer_ids)
    for run, spender in enumerate(SPENDERS):
        first = transfer(network, spender, BOB, 600 * WAL)
        second = transfer(network, spender, CAROL, 600 * WAL)
        rotated = members[run % 4 :] + members[: run % 4]
        halves = {order_id(first): rotated[:2], order_id(second): rotated[2:]}
        approvals: dict[bytes, list[Signature]] = {order_id(first): [], order_id(second): []}

        async def attack(
            order: SignedOrder,
            halves: dict[bytes, list[PeerId]],
            approvals: dict[bytes, list[Signature]],
        ) -> None:
            # Its own half first, then the other half: both race for every member.
            mine = halves[order_id(order)]
            for peer_id in mine + [p for p in members if p not in mine]:
                try:
                    signature = await ask_approval(light, peer_id, order)
                except RemoteError as error:
                    assert error.reason == "ORDER_CONFLICT"
                    continue
                approvals[order_id(order)].append(Signature(peer_id, signature))

        with trio.fail_after(STEP * 2):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(attack, first, halves, approvals)
                nursery.start_soon(attack, second, halves, approvals)
        certified = [
            identifier
            for identifier, signed in approvals.items()
            if committee.is_quorum(signature.signer for signature in signed)
        ]
        assert len(certified) <= 1, f"run {run}: both orders certified"
        # Each member approved exactly one of the two.
        signers = [s.signer for signed in approvals.values() for s in signed]
        assert sorted(signers) == sorted(members)
        # The owner's account is stuck at sequence 0 unless one side won; nothing moved.
        assert balances(network, spender) == [[FUNDED]] * 4


async def test_forged_replayed_and_overdrawn_orders_are_refused(
    network: TestNetwork, light: LightPeer
) -> None:
    member = network.peers[1].peer_id
    genuine = transfer(network, ALICE, BOB, 5 * WAL)
    forged = SignedOrder(genuine.body, BOB.sign("walrus-p2p/economy-order/v1", genuine.body))
    with trio.fail_after(STEP * 4):
        assert await refusal_of(lambda: ask_approval(light, member, forged)) == "ORDER_FORGED"
        overdrawn = await refusal_of(
            lambda: send_transfer(light, ALICE, BOB.public_key.raw, FUNDED + 1, options=OPTIONS)
        )
        assert overdrawn == "ORDER_OVERDRAWN"
        # A certificate whose approvals were not made by the members is refused.
        fake = certify(
            genuine,
            [Signature(peer_id, bytes(64)) for peer_id in network.genesis.committee.peer_ids],
            0,
        )
        refused = await refusal_of(
            lambda: light.call(
                member, SubmitCertificateRequest(fake), SubmitCertificateReply, timeout=STEP
            )
        )
        assert refused == "CERTIFICATE_INVALID"
        before = balances(network, ALICE, BOB)
        assert before == [[FUNDED, 0]] * 4

        done = await send_transfer(light, ALICE, BOB.public_key.raw, 5 * WAL, options=OPTIONS)
        await wait_for(lambda: balances(network, ALICE, BOB) == [[FUNDED - 5 * WAL, 5 * WAL]] * 4)
        # Sequence 0 is used: the same slot with another order is a replay.
        replay = transfer(network, ALICE, CAROL, 5 * WAL)
        assert await refusal_of(lambda: ask_approval(light, member, replay)) == "ORDER_REPLAYED"
        # Submitting the certificate again changes nothing.
        reply = await light.call(
            member,
            SubmitCertificateRequest(done.certificate),
            SubmitCertificateReply,
            timeout=STEP,
        )
    assert reply.outcome.name == "DUPLICATE"
    assert balances(network, ALICE, BOB, CAROL) == [[FUNDED - 5 * WAL, 5 * WAL, 0]] * 4


async def test_peer_that_was_down_catches_up(network: TestNetwork, light: LightPeer) -> None:
    # Stop the peer with the fewest shards: the others still hold a quorum.
    committee = network.genesis.committee
    down = min(network.peers, key=lambda peer: len(committee.shards_of(peer.peer_id)))
    with trio.fail_after(STEP * 4):
        await network.stop(down)
        first = await send_transfer(light, ALICE, BOB.public_key.raw, 7 * WAL, options=OPTIONS)
        await send_transfer(light, ALICE, CAROL.public_key.raw, 3 * WAL, options=OPTIONS)
        await network.start(down)
        economy = down.running.economy
        await economy.caught_up.wait()
        await wait_for(lambda: economy.ledger.next_sequence(ALICE.public_key.raw) == 2)
        # A certificate is applied to the ledger first and written to the store right after.
        key = ALICE.public_key.raw + bytes(8)
        await wait_for(lambda: down.running.store.get_value("economy-orders", key) is not None)
    assert economy.ledger.balance(BOB.public_key.raw) == 7 * WAL
    assert economy.ledger.balance(CAROL.public_key.raw) == 3 * WAL
    stored = down.running.store.get_value("economy-orders", key)
    assert stored is not None
    assert wire.decode(stored, CertifiedOrder).order == first.certificate.order


async def test_wallet_collects_a_quorum_despite_a_lock_and_reports_conflicts(
    network: TestNetwork, light: LightPeer
) -> None:
    """A member that holds a lock for another order does not stop a send that the others can
    certify; once every member holds a lock, a third order is refused with ORDER_CONFLICT."""
    committee = network.genesis.committee
    spender = SPENDERS[0]
    with trio.fail_after(STEP * 3):
        locked = network.peers[0].peer_id
        await ask_approval(light, locked, transfer(network, spender, CAROL, WAL))
        signed = transfer(network, spender, BOB, WAL)
        approvals = await collect_approvals(light, committee, signed, options=OPTIONS)
        assert locked not in {approval.signer for approval in approvals}
        third = transfer(network, spender, ALICE, 3 * WAL)
        with pytest.raises(OrderRefusedError) as caught:
            await collect_approvals(light, committee, third, options=OPTIONS)
    assert caught.value.reason == "ORDER_CONFLICT"
