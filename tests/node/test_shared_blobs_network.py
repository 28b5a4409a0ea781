"""Shared blobs over real in-process peers (docs/economics.md, "Shared blobs").

Four storage peers of an 8-shard network with an economy and epochs of a few seconds. Alice
stores a permanent blob for 3 epochs and shares it; Bob funds it; Carol, who owns nothing of
it, asks for 4 more epochs. The next epoch change carries the request out: its settlement
states the new end, every ledger moves the same funds into the same pools, every peer's record
book and stored summary and a fresh light client (from the chain alone) see the new end, and a
restarted peer rebuilds it from its stored chain. Every wait has a deadline.
"""

from __future__ import annotations

import pytest
import trio
from economy_network import (
    STORAGE_PRICE,
    WAL,
    WALLET_OPTIONS,
    economy_network,
    eventually,
    ledgers_agree,
)

from walrus_p2p.client.records import fetch_blob_state
from walrus_p2p.client.results import StoredBlob
from walrus_p2p.client.shared import (
    resolve_shared,
    send_extend_shared,
    send_fund_shared,
    send_share,
    shared_view,
)
from walrus_p2p.core.economy import storage_units
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.settlements import settlement_of
from walrus_p2p.errors import OrderRefusedError, WalrusError
from walrus_p2p.testing.network import open_test_client, open_test_light_peer, seed_for

pytestmark = pytest.mark.timeout(300)

NAME = "shared-blobs-inproc"
EPOCH_SECONDS = 12
STEP = 30.0
ROUND_TIMEOUT = 90.0
ALICE, BOB, CAROL = (Identity.from_seed(seed_for(NAME, who)) for who in ("alice", "bob", "carol"))
OPTIONS = WALLET_OPTIONS


async def test_anyone_funds_and_extends_a_shared_blob_at_the_epoch_change() -> None:
    async with economy_network(NAME, [ALICE, BOB], epoch_seconds=EPOCH_SECONDS) as network:
        peers = network.peers
        async with open_test_client(network, ALICE) as client:
            with trio.fail_after(STEP):
                stored = await client.store(b"shared blob " * 500, epochs=3, permanent=True)
        assert isinstance(stored, StoredBlob)
        blob_id = stored.blob_id
        async with open_test_light_peer(network) as light:
            shared = await send_share(light, ALICE, blob_id, 1 * WAL, options=OPTIONS)
            shared_id = shared.body.resource  # type: ignore[union-attr]
            assert await resolve_shared(light, blob_id, options=OPTIONS) == shared_id
            await send_fund_shared(light, BOB, shared_id, 2 * WAL, options=OPTIONS)
            # Carol has no WAL: funding is refused, asking is free
            with pytest.raises(OrderRefusedError) as refused:
                await send_fund_shared(light, CAROL, shared_id, 1, options=OPTIONS)
            assert refused.value.reason == "ORDER_OVERDRAWN"
            asked = await send_extend_shared(light, CAROL, shared_id, 4, options=OPTIONS)
            asked_epoch = int(asked.body.epoch)
            view = await shared_view(light, shared_id, options=OPTIONS)
            (entry,) = view.reply.shared
            assert entry.funds == 3 * WAL and entry.pending_requests == 1
            assert int(entry.end_epoch) == stored.end_epoch
            # the owner's own extension of a shared blob is refused before anything is paid
            async with open_test_client(network, ALICE) as owner:
                with pytest.raises(WalrusError) as refused_extend:
                    await owner.extend(blob_id, epochs=1)
            assert refused_extend.value.reason == "SHARED_BLOB"

        new_end = stored.end_epoch + 4
        running = network.running()
        await eventually(
            lambda: all(
                p.running.economy.ledger.resource(shared_id).end_epoch == new_end  # type: ignore[union-attr]
                for p in running
            ),
            "every ledger carried the extension out",
            ROUND_TIMEOUT,
        )
        # the settlement that did it names the blob, its owner and the new end
        record_epoch = next(
            epoch
            for epoch in range(asked_epoch + 1, asked_epoch + 3)
            if (found := settlement_of(peers[0].running.epochs.records[epoch].value)) is not None
            and found.shared_extensions
        )
        settlement = settlement_of(peers[0].running.epochs.records[record_epoch].value)
        assert settlement is not None
        (extension,) = settlement.shared_extensions
        assert extension.order_id == asked.order_id
        assert (bytes(extension.blob_id), extension.owner) == (blob_id, ALICE.public_key.raw)
        assert extension.end_epoch == new_end
        units = storage_units(stored.storage_size)
        cost = units * STORAGE_PRICE * 4
        await eventually(lambda: ledgers_agree(network), "every ledger agrees", STEP)
        ledger = peers[0].running.economy.ledger
        assert ledger.shared_funds(shared_id) == 3 * WAL - cost
        assert ledger.total() == ledger.supply

        # every peer's blob state and stored summary count the new end
        for peer in running:
            state = await peer.running.records.blob_state(blob_id)
            assert state.end_epoch == new_end
        await eventually(
            lambda: all(
                p.running.context.store.get_blob_state(blob_id).end_epoch == new_end
                for p in running
            ),
            "every stored summary has the new end",
            STEP,
        )
        # a fresh light client learns it from the verified chain
        async with open_test_light_peer(network) as reader:
            fetched = await fetch_blob_state(reader, blob_id)
            assert fetched is not None and fetched.end_epoch == new_end
            assert fetched.status(reader.epoch) == "certified"

        # a restarted peer rebuilds the end from its stored chain
        await network.stop(peers[2])
        await network.start(peers[2])
        restarted = peers[2].running
        await eventually(
            lambda: restarted.economy.ledger.settled_epoch >= record_epoch - 1,
            "the restarted peer replayed the settlements",
            STEP * 2,
        )
        assert (await restarted.records.blob_state(blob_id)).end_epoch == new_end
