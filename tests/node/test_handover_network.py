"""The lock hand-over at an epoch change, over real in-process peers (docs/economics.md, "Double
spending").

Four storage peers of an 8-shard network with an economy and epochs of a few seconds. Right
after an epoch change the owner gets a transfer X approved by a quorum and withholds the
certificate. Peer 0 then loses its locks and its hand-over record, as a member that was not in
that committee would have none. At the next change peer 0 collects the locks of the committee
before from the others (a quorum of its shards) and adopts X; so does every member. A
conflicting Y for the same slot, named for the new epoch, is refused by every member
(``ORDER_CONFLICT``), peer 0 included; X itself is completed by the new committee (the same
bytes, approvals of the new epoch) and applied everywhere. Then a slot decided at three members
reaches the fourth through the hand-over: reported as decided, its certificate fetched.
Every wait has a deadline.
"""

from __future__ import annotations

import pytest
import trio
from economy_network import WAL, WALLET_OPTIONS, economy_network, eventually

from walrus_p2p.client.wallet import certify_order, collect_approvals, deliver_certificate
from walrus_p2p.core.economy_messages import (
    ApproveOrderReply,
    ApproveOrderRequest,
    TransferBody,
    certify,
    order_id,
    sign_order,
)
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.order_signer import OrderSigner
from walrus_p2p.core.records import Signature
from walrus_p2p.errors import WalrusError
from walrus_p2p.testing.network import open_test_light_peer, seed_for
from walrus_p2p.types import Epoch

pytestmark = pytest.mark.timeout(240)

NAME = "handover-inproc"
EPOCH_SECONDS = 10
ROUND_TIMEOUT = 90.0
ALICE = Identity.from_seed(seed_for(NAME, "alice"))
BOB, CAROL = (Identity.from_seed(seed_for(NAME, who)).public_key.raw for who in ("bob", "carol"))


async def test_a_withheld_order_is_handed_over_and_its_conflict_refused() -> None:
    async with economy_network(NAME, [ALICE], epoch_seconds=EPOCH_SECONDS) as network:
        peers = network.peers
        running = network.running()
        network_id = peers[0].running.economy.network_id
        start = peers[0].running.epochs.epoch + 1
        await network.wait_epoch(start, timeout=ROUND_TIMEOUT)
        await eventually(
            lambda: all(p.running.economy.handover.complete(start) for p in running),
            "every member completed the hand-over into the epoch",
            30.0,
        )

        def transfer(epoch: int, recipient: bytes) -> object:
            body = TransferBody(network_id, ALICE.public_key.raw, 0, Epoch(epoch), recipient, WAL)
            return sign_order(ALICE, body)

        async with open_test_light_peer(network, "wallet") as light:
            await light.refresh_if_stale(min_interval=0.0)
            committee = light.committee
            assert committee.epoch == start
            x = transfer(start, BOB)
            with trio.fail_after(30):
                approvals = await collect_approvals(light, committee, x, options=WALLET_OPTIONS)
            withheld = certify(x, approvals, start)  # certified, never delivered
            assert peers[0].running.epochs.epoch == start, "the epoch changed too early"
            stripped = peers[0].running.economy
            stripped.signer = OrderSigner(peers[0].identity, network_id)

            await network.wait_epoch(start + 1, timeout=ROUND_TIMEOUT)
            await eventually(
                lambda: all(p.running.economy.handover.complete(start + 1) for p in running),
                "every member completed the hand-over into the next epoch",
                30.0,
            )
            assert stripped.signer.locked(ALICE.public_key.raw, 0) == (start + 1, order_id(x))
            figures = stripped.handover.figures[start + 1]
            assert figures.adopted >= 1 and figures.reporters >= 3

            await light.refresh_if_stale(min_interval=0.0)
            assert light.committee.epoch == start + 1
            y = transfer(start + 1, CAROL)
            for peer in peers:
                with pytest.raises(WalrusError) as refused:
                    await light.call(
                        peer.peer_id, ApproveOrderRequest(order=y), ApproveOrderReply, timeout=10.0
                    )
                assert refused.value.reason == "ORDER_CONFLICT", peer.name

            with trio.fail_after(60):
                completed, by = await certify_order(
                    light, light.committee, x, options=WALLET_OPTIONS
                )
                assert completed.epoch == start + 1 and by.epoch == start + 1
                await deliver_certificate(light, by, completed, options=WALLET_OPTIONS)
            await eventually(
                lambda: all(p.running.economy.ledger.balance(BOB) == WAL for p in running),
                "every ledger applied X",
                30.0,
            )
            assert all(p.running.economy.ledger.balance(CAROL) == 0 for p in running)
            # the withheld certificate of the epoch before is the same order: a duplicate
            outcome = await peers[1].running.economy.merge(withheld, announce=False)
            assert outcome.value == "duplicate"

            # A decided slot travels as (account, sequence, order id): Z is approved by peers
            # 1-3 and its certificate given to them alone (no gossip). At the next change they
            # report Z's slot as decided, and peer 0, which never saw Z, fetches the
            # certificate from one of them, verifies and applies it.
            epoch = peers[0].running.epochs.epoch + 1  # a fresh epoch: time for the steps
            await network.wait_epoch(epoch, timeout=ROUND_TIMEOUT)
            await eventually(
                lambda: all(p.running.economy.handover.complete(epoch) for p in running),
                "every member completed the hand-over",
                30.0,
            )
            body = TransferBody(network_id, ALICE.public_key.raw, 1, Epoch(epoch), CAROL, WAL)
            z = sign_order(ALICE, body)
            approvals = []
            for peer in peers[1:]:
                reply = await light.call(
                    peer.peer_id, ApproveOrderRequest(order=z), ApproveOrderReply, timeout=10.0
                )
                assert reply.epoch == epoch, "the epoch changed too early"
                approvals.append(Signature(peer.peer_id, reply.signature))
            certificate = certify(z, approvals, epoch)
            for peer in peers[1:]:
                merged = await peer.running.economy.merge(certificate, announce=False)
                assert merged.value == "applied"
            assert peers[0].running.economy.ledger.next_sequence(ALICE.public_key.raw) == 1
            await network.wait_epoch(epoch + 1, timeout=ROUND_TIMEOUT)
            await eventually(
                lambda: (
                    peers[0].running.economy.ledger.balance(CAROL) == WAL
                    # the certificate is applied while the hand-over still runs: wait for its end
                    and epoch + 1 in peers[0].running.economy.handover.figures
                ),
                "peer 0 fetched and applied the decided slot's certificate",
                30.0,
            )
            assert peers[0].running.economy.handover.figures[epoch + 1].orders >= 1
