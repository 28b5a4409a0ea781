"""Storage resources bought ahead, split, used by a store, released by a delete and used again,
over real in-process peers (docs/economics.md, "Storage resources").

Four storage peers of an 8-shard network with an economy. Alice buys storage for 5 epochs and
splits it by epoch; a store on the first part pays only the write fee; a second blob cannot use
the same part while it is attached; the delete releases it and the second blob uses it; a
resource that does not cover the store is refused before anything is signed. Every ledger agrees
on the result, and Alice's balance is the genesis minus exactly what she was told she paid.
"""

from __future__ import annotations

import pytest
import trio
from economy_network import WAL, WRITE_PRICE, economy_network, eventually, ledgers_agree
from economy_network import WALLET_OPTIONS as OPTIONS

from walrus_p2p.client.results import StoredBlob
from walrus_p2p.client.staking import economy_view
from walrus_p2p.client.storage import send_buy_storage, send_split_storage, split_resource_ids
from walrus_p2p.core.economy import encoded_size, storage_units
from walrus_p2p.core.identity import Identity
from walrus_p2p.errors import WalrusError
from walrus_p2p.testing.network import open_test_client, open_test_light_peer, seed_for

pytestmark = pytest.mark.timeout(240)

NAME = "storage-resources-inproc"
STEP = 30.0
ALICE = Identity.from_seed(seed_for(NAME, "alice"))
SIZE = 6000


async def test_buy_split_store_release_and_reuse_storage() -> None:
    async with economy_network(NAME, [ALICE], epoch_seconds=600) as network:
        units = storage_units(encoded_size(SIZE, 8))
        async with open_test_light_peer(network) as light:
            epoch = light.epoch
            bought = await send_buy_storage(light, ALICE, units=units, epochs=5, options=OPTIONS)
            cost = bought.body.amount  # type: ignore[union-attr]
            assert cost == units * 100_000 * 5
            split = await send_split_storage(
                light, ALICE, bought.order_id, epoch=epoch + 3, options=OPTIONS
            )
            early, late = split_resource_ids(split.order_id)
            listed = {
                entry.resource_id: entry
                for entry in (await economy_view(light, ALICE.public_key.raw)).reply.resources
            }
            assert (listed[early].start_epoch, listed[early].end_epoch) == (epoch, epoch + 3)
            assert (listed[late].start_epoch, listed[late].end_epoch) == (epoch + 3, epoch + 5)
            assert listed[early].blob_id is None and bought.order_id not in listed

        async with open_test_client(network, ALICE) as client:
            with trio.fail_after(STEP):
                first = await client.store(b"a" * SIZE, epochs=2, permanent=False, storage=early)
            assert isinstance(first, StoredBlob)
            assert first.cost == units * WRITE_PRICE and first.end_epoch == epoch + 2
            # attached: another blob cannot use it, and nothing is paid for trying
            with pytest.raises(WalrusError) as refused:
                await client.store(b"b" * SIZE, epochs=2, permanent=False, storage=early)
            assert refused.value.reason == "RESOURCE_UNUSABLE"
            # the part that starts later cannot pay for a store now
            with pytest.raises(WalrusError) as refused:
                await client.store(b"b" * SIZE, epochs=2, permanent=False, storage=late)
            assert refused.value.reason == "RESOURCE_UNUSABLE"
            assert "covers epochs" in str(refused.value)
            with trio.fail_after(STEP):
                released = await client.delete(first.blob_id)
            assert released == early
            with trio.fail_after(STEP):
                second = await client.store(b"b" * SIZE, epochs=3, permanent=False, storage=early)
            assert isinstance(second, StoredBlob) and second.cost == units * WRITE_PRICE
            assert (await client.blob_status(second.blob_id)).state == "certified"

        await eventually(lambda: ledgers_agree(network), "every ledger agrees", STEP)
        ledger = network.running()[0].running.economy.ledger
        resource = ledger.resource(early)
        assert resource is not None and resource.blob_id == second.blob_id
        spent = cost + 2 * units * WRITE_PRICE
        assert ledger.balance(ALICE.public_key.raw) == 1000 * WAL - spent
