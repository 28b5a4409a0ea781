"""Paid storage over real in-process peers (docs/economics.md, "Paid storage").

Four storage peers of a 10-shard network whose genesis has an ``[economy]`` table: registering a
blob takes a certified purchase and attachment by the owner's account. Each test checks what
the client gets and what every peer's ledger and record book hold after: a paid store with the
payment in the right pools and the payer down by exactly the cost; unpaid, mismatched and
reused payments refused with their reasons and nothing stored; a balance too small refused
before any order; a register that reaches a peer before the payment's certificates; releases
and extensions; the supply conserved throughout.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import trio

from walrus_p2p.client.network import LightPeer
from walrus_p2p.client.payment import Payer, blob_quote
from walrus_p2p.client.results import StoredBlob
from walrus_p2p.client.wallet import WalletOptions, account_view, collect_approvals
from walrus_p2p.core import records, wire
from walrus_p2p.core.blob_messages import PostBlobRecordsReply, PostBlobRecordsRequest
from walrus_p2p.core.economy import encoded_size, split_evenly, storage_units
from walrus_p2p.core.economy_messages import (
    AttachBlobBody,
    BuyStorageBody,
    ReleaseStorageBody,
    SubmitCertificateReply,
    SubmitCertificateRequest,
    certify,
    order_id,
    sign_order,
)
from walrus_p2p.core.encoding import EncodingConfig
from walrus_p2p.core.genesis import Allocation, EconomyGenesis
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.metadata import encode_blob
from walrus_p2p.errors import InsufficientFundsError, OrderRefusedError, WalrusError
from walrus_p2p.node.economy import EconomyOptions
from walrus_p2p.testing.network import (
    NetworkOptions,
    TestNetwork,
    open_network,
    open_test_client,
    open_test_light_peer,
    seed_for,
)
from walrus_p2p.types import BlobId, Epoch

pytestmark = pytest.mark.timeout(240)

STEP = 30.0
WAL = 10**9
FUNDED = 1000 * WAL
POOR = 1000
"""FROST: less than any store costs at the genesis prices."""
NAME = "testnet-paid"
OPTIONS = WalletOptions(request_timeout=5.0, total_timeout=20.0, attempts=2, tail_seconds=1.0)
STORAGE_PRICE = 100_000
WRITE_PRICE = 20_000


def account(name: str) -> Identity:
    return Identity.from_seed(seed_for(NAME, f"wallet-{name}"))


ALICE, BOB, CAROL = account("alice"), account("bob"), account("carol")


@pytest.fixture
async def network() -> AsyncIterator[TestNetwork]:
    economy = EconomyGenesis(
        allocations=(
            Allocation(ALICE.public_key.raw, FUNDED),
            Allocation(BOB.public_key.raw, FUNDED),
            Allocation(CAROL.public_key.raw, POOR),
        ),
        storage_price=STORAGE_PRICE,
        write_price=WRITE_PRICE,
    )
    options = NetworkOptions(
        network=NAME,
        economy=economy,
        # Certificates travel only as clients deliver them (no gossip within a test), so a peer
        # without one is a peer the client did not reach.
        economy_options=EconomyOptions(
            gap_interval=1.0, request_timeout=5.0, payment_wait=3.0, gossip_batch_seconds=600.0
        ),
    )
    async with open_network(4, options) as running:
        yield running


@pytest.fixture
async def light(network: TestNetwork) -> AsyncIterator[LightPeer]:
    async with open_test_light_peer(network) as peer:
        yield peer


async def wait_for(condition: Callable[[], bool], timeout: float = STEP) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.1)


async def wait_for_states(
    network: TestNetwork, blob_id: BlobId, condition: Callable[[records.BlobState], bool]
) -> None:
    """Until every peer's state of the blob satisfies ``condition``."""
    with trio.fail_after(STEP):
        while True:
            states = [await peer.running.records.blob_state(blob_id) for peer in network.peers]
            if all(condition(state) for state in states):
                return
            await trio.sleep(0.1)


def payload(size: int, seed: int = 1) -> bytes:
    return bytes((index * 31 + seed) % 251 for index in range(size))


def blob_id_of(network: TestNetwork, data: bytes) -> BlobId:
    return encode_blob(data, EncodingConfig.for_shards(network.genesis.n_shards)).blob_id


def register(
    network: TestNetwork,
    owner: Identity,
    blob_id: bytes,
    size: int,
    *,
    end_epoch: int = 3,
    deletable: bool = True,
) -> records.BlobRegister:
    return records.sign_register(
        owner,
        network_id=network.genesis.network_id,
        blob_id=blob_id,
        size=size,
        start_epoch=0,
        end_epoch=end_epoch,
        deletable=deletable,
    )


async def post(light: LightPeer, peer_index: int, network: TestNetwork, record: object) -> None:
    assert isinstance(record, records.BlobRegister | records.BlobExtend | records.BlobDelete)
    await light.call(
        network.peers[peer_index].peer_id,
        PostBlobRecordsRequest(blob_id=record.blob_id, records=(wire.encode(record),)),
        PostBlobRecordsReply,
        timeout=STEP,
    )


async def refusal_of(call: Callable[[], object]) -> str:
    with pytest.raises(WalrusError) as caught:
        await call()  # type: ignore[misc]
    return caught.value.reason


def ledgers_total_is_supply(network: TestNetwork) -> bool:
    return all(
        peer.running.economy.ledger.total() == peer.running.economy.ledger.supply
        for peer in network.peers
    )


async def test_paid_store_pays_into_the_pools_and_every_ledger_agrees(
    network: TestNetwork,
) -> None:
    data = payload(150_000)
    epochs = 3
    price = blob_quote(network.genesis, len(data), epochs)
    async with open_test_client(network, ALICE) as client:
        with trio.fail_after(STEP * 3):
            outcome = await client.store(data, epochs=epochs, permanent=False)
            assert isinstance(outcome, StoredBlob)
            assert await client.read(outcome.blob_id) == data
    units = storage_units(encoded_size(len(data), network.genesis.n_shards))
    assert price.units == units
    assert price.storage_cost == units * STORAGE_PRICE * epochs
    assert price.write_fee == units * WRITE_PRICE
    assert outcome.cost == price.total
    assert (outcome.start_epoch, outcome.end_epoch) == (0, epochs)
    # The steps of the store, timed in order (bench/store_phases.py prints them).
    assert [name for name, _ in outcome.phases] == ["encode", "state", "pay", "upload", "certify"]
    assert all(seconds >= 0 for _, seconds in outcome.phases)
    pools = split_evenly(price.storage_cost, 0, epochs)
    pools[0] += price.write_fee
    alice = ALICE.public_key.raw

    def settled() -> bool:
        return all(
            peer.running.economy.ledger.balance(alice) == FUNDED - outcome.cost
            for peer in network.peers
        )

    await wait_for(settled)
    for peer in network.peers:
        ledger = peer.running.economy.ledger
        assert ledger.next_sequence(alice) == 2  # the purchase and the attachment
        assert dict(ledger.pools) == pools
        assert ledger.total() == ledger.supply
        (resource,) = ledger.attached_resources(alice, outcome.blob_id).values()
        assert (resource.units, resource.start_epoch, resource.end_epoch) == (units, 0, epochs)
        state = await peer.running.records.blob_state(outcome.blob_id)
        assert state.live_registrations  # every member merged the paid register


async def test_unpaid_registration_is_refused_and_nothing_is_stored(
    network: TestNetwork, light: LightPeer
) -> None:
    data = payload(20_000, seed=2)
    encoded = encode_blob(data, EncodingConfig.for_shards(network.genesis.n_shards))
    blob_id = encoded.blob_id
    with trio.fail_after(STEP * 2):
        reason = await refusal_of(
            lambda: post(light, 0, network, register(network, BOB, blob_id, len(data)))
        )
        assert reason == "PAYMENT_REQUIRED"
        metadata = await refusal_of(
            lambda: light.call(
                network.peers[0].peer_id,
                wire.StoreMetadataRequest(blob_id=blob_id, metadata=encoded.metadata),
                wire.StoreMetadataReply,
                timeout=STEP,
            )
        )
        assert metadata == "PAYMENT_REQUIRED"
    for peer in network.peers:
        state = await peer.running.records.blob_state(blob_id)
        assert not state.registrations
        assert not peer.running.store.has_metadata(blob_id)
        assert peer.running.economy.ledger.balance(BOB.public_key.raw) == FUNDED


async def test_payment_for_another_blob_a_smaller_size_or_a_shorter_time_is_refused(
    network: TestNetwork, light: LightPeer
) -> None:
    data = payload(20_000, seed=3)
    other = payload(20_000, seed=4)
    blob_id, other_id = blob_id_of(network, data), blob_id_of(network, other)
    payer = Payer(light, BOB, options=OPTIONS)
    with trio.fail_after(STEP * 4):
        payment = await payer.pay_for_blob(
            blob_id=blob_id, size=len(data), deletable=True, start_epoch=0, end_epoch=2
        )
        assert payment.cost > 0 and not payment.reused
        # The same payment covers the register it was made for...
        await post(light, 0, network, register(network, BOB, blob_id, len(data), end_epoch=2))
        # ...not another blob, a larger size, a longer lifetime or another deletability.
        cases = {
            "another blob": register(network, BOB, other_id, len(other), end_epoch=2),
            "larger": register(network, BOB, blob_id, 8 * 2**20, end_epoch=2),
            "longer": register(network, BOB, blob_id, len(data), end_epoch=3),
            "permanent": register(network, BOB, blob_id, len(data), end_epoch=2, deletable=False),
            "another owner": register(network, ALICE, blob_id, len(data), end_epoch=2),
        }
        reasons = {}
        for name, record in cases.items():
            reasons[name] = await refusal_of(lambda record=record: post(light, 1, network, record))
        # Paying again for the same store finds the earlier payment: nothing is paid twice.
        again = await payer.pay_for_blob(
            blob_id=blob_id, size=len(data), deletable=True, start_epoch=0, end_epoch=2
        )
    assert reasons == {
        "another blob": "PAYMENT_REQUIRED",
        "larger": "PAYMENT_MISMATCH",
        "longer": "PAYMENT_MISMATCH",
        "permanent": "PAYMENT_MISMATCH",
        "another owner": "PAYMENT_REQUIRED",
    }
    assert again.reused and again.cost == 0 and again.resource == payment.resource
    for peer in network.peers:
        ledger = peer.running.economy.ledger
        assert ledger.balance(BOB.public_key.raw) == FUNDED - payment.cost
        assert ledger.total() == ledger.supply
        assert not (await peer.running.records.blob_state(other_id)).registrations


async def test_one_purchase_cannot_pay_for_two_blobs(
    network: TestNetwork, light: LightPeer
) -> None:
    first, second = payload(10_000, seed=5), payload(10_000, seed=6)
    first_id, second_id = blob_id_of(network, first), blob_id_of(network, second)
    payer = Payer(light, BOB, options=OPTIONS)
    with trio.fail_after(STEP * 4):
        payment = await payer.pay_for_blob(
            blob_id=first_id, size=len(first), deletable=True, start_epoch=0, end_epoch=2
        )
        view = await account_view(light, BOB.public_key.raw, options=OPTIONS)
        size = encoded_size(len(second), network.genesis.n_shards)
        reuse = sign_order(
            BOB,
            AttachBlobBody(
                network_id=network.genesis.network_id,
                account=BOB.public_key.raw,
                sequence=view.next_sequence,
                epoch=Epoch(0),
                resource=payment.resource,
                blob_id=second_id,
                encoded_size=size,
                deletable=True,
                amount=storage_units(size) * WRITE_PRICE,
            ),
        )
        with pytest.raises(OrderRefusedError) as refused:
            await collect_approvals(light, light.committee, reuse, options=OPTIONS)
        unpaid = await refusal_of(
            lambda: post(
                light, 2, network, register(network, BOB, second_id, len(second), end_epoch=2)
            )
        )
    assert refused.value.reason == "RESOURCE_UNUSABLE"
    assert unpaid == "PAYMENT_REQUIRED"
    assert ledgers_total_is_supply(network)


async def test_balance_too_small_fails_with_the_amount_and_changes_nothing(
    network: TestNetwork,
) -> None:
    data = payload(50_000, seed=7)
    price = blob_quote(network.genesis, len(data), 2)
    async with open_test_client(network, CAROL) as client:
        with trio.fail_after(STEP * 2), pytest.raises(InsufficientFundsError) as caught:
            await client.store(data, epochs=2, permanent=False)
    assert caught.value.reason == "ORDER_OVERDRAWN"
    assert (caught.value.needed, caught.value.balance) == (price.total, POOR)
    assert str(price.total) in str(caught.value)
    carol = CAROL.public_key.raw
    blob_id = blob_id_of(network, data)
    for peer in network.peers:
        ledger = peer.running.economy.ledger
        assert (ledger.balance(carol), ledger.next_sequence(carol)) == (POOR, 0)
        assert ledger.total() == ledger.supply
        assert not (await peer.running.records.blob_state(blob_id)).registrations


async def test_register_before_the_payment_reaches_the_peer_is_accepted(
    network: TestNetwork, light: LightPeer
) -> None:
    """The member with the fewest shards gets neither certificate (the attachment's goes to one
    member only); given the register, it fetches them (the owner's newest certificates from
    other members) before it decides."""
    data = payload(10_000, seed=8)
    blob_id = blob_id_of(network, data)
    size = encoded_size(len(data), network.genesis.n_shards)
    units = storage_units(size)
    committee = network.genesis.committee
    asked = min(network.peers, key=lambda peer: len(committee.shards_of(peer.peer_id)))
    others = [peer for peer in network.peers if peer is not asked]
    holder = others[0]
    alice = ALICE.public_key.raw
    buy = sign_order(
        ALICE,
        BuyStorageBody(
            network_id=network.genesis.network_id,
            account=alice,
            sequence=0,
            epoch=Epoch(0),
            units=units,
            start_epoch=Epoch(0),
            end_epoch=Epoch(3),
            amount=units * STORAGE_PRICE * 3,
        ),
    )
    attach = sign_order(
        ALICE,
        AttachBlobBody(
            network_id=network.genesis.network_id,
            account=alice,
            sequence=1,
            epoch=Epoch(0),
            resource=order_id(buy),
            blob_id=blob_id,
            encoded_size=size,
            deletable=True,
            amount=units * WRITE_PRICE,
        ),
    )
    with trio.fail_after(STEP * 4):
        for order, receivers in ((buy, others), (attach, [holder])):
            approvals = await collect_approvals(light, light.committee, order, options=OPTIONS)
            for receiver in receivers:
                await light.call(
                    receiver.peer_id,
                    SubmitCertificateRequest(certify(order, approvals, light.committee.epoch)),
                    SubmitCertificateReply,
                    timeout=STEP,
                )
        assert asked.running.economy.ledger.next_sequence(alice) == 0
        await post(
            light, network.peers.index(asked), network, register(network, ALICE, blob_id, len(data))
        )
    assert asked.running.economy.ledger.next_sequence(alice) == 2
    assert (await asked.running.records.blob_state(blob_id)).live_registrations


async def test_release_only_after_delete_and_extension_is_paid(
    network: TestNetwork, light: LightPeer
) -> None:
    data = payload(30_000, seed=9)
    async with open_test_client(network, BOB) as client:
        with trio.fail_after(STEP * 6):
            outcome = await client.store(data, epochs=2, permanent=False)
            assert isinstance(outcome, StoredBlob)
            bob = BOB.public_key.raw
            # An extension pays for the added epochs, then the extend record is merged.
            before = (await account_view(light, bob, options=OPTIONS)).balance
            new_end = await client.extend(outcome.blob_id, epochs=2)
            after = (await account_view(light, bob, options=OPTIONS)).balance
            units = storage_units(encoded_size(len(data), network.genesis.n_shards))
            assert new_end == 4
            assert before - after == units * STORAGE_PRICE * 2
            await wait_for_states(
                network, outcome.blob_id, lambda state: state.end_epoch == new_end
            )
            view = await account_view(light, bob, options=OPTIONS)
            (resource,) = network.peers[0].running.economy.ledger.attached_resources(
                bob, outcome.blob_id
            )
            release = sign_order(
                BOB,
                ReleaseStorageBody(
                    network_id=network.genesis.network_id,
                    account=bob,
                    sequence=view.next_sequence,
                    epoch=Epoch(0),
                    resource=resource,
                ),
            )
            with pytest.raises(OrderRefusedError) as refused:
                await collect_approvals(light, light.committee, release, options=OPTIONS)
            # The client's delete releases the resource itself, once the delete is merged.
            released = await client.delete(outcome.blob_id)
            await wait_for_states(
                network, outcome.blob_id, lambda state: not state.live_registrations
            )
    assert refused.value.reason == "RESOURCE_IN_USE"
    assert released == resource

    def freed() -> bool:
        found = [p.running.economy.ledger.resource(resource) for p in network.running()]
        return all(r is not None and r.blob_id is None for r in found)

    with trio.move_on_after(STEP):
        while not freed():
            await trio.sleep(0.2)
    assert freed(), "every ledger shows the resource free"
    assert ledgers_total_is_supply(network)
