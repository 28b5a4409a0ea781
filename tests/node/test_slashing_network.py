"""Slashing on conflict evidence, over real in-process peers (docs/economics.md, "Slashing").

Four storage peers of an 8-shard network with an economy and epochs of a few seconds. Members 1
and 2 (the test holds their keys) approve two conflicting transfers of one account slot, enough
with members 0 and 3 for a certificate each: two certified orders for one slot, which only a
faulty quorum can make. Peer 0 receives both certificates: its ledger refuses the second
(``ORDER_CONFLICT``) and it builds evidence against each member that approved both, stores it
and publishes it. Every peer verifies and keeps the evidence from gossip, the next epoch change
lists members 1 and 2 as slashed, every validator accepted it, and the one after does not slash
them again; a restarted peer reloads the evidence and replays the slash. Every wait has a
deadline.
"""

from __future__ import annotations

import pytest
from economy_network import WAL, economy_network, eventually

from walrus_p2p.core import economy_messages as em
from walrus_p2p.core.economy_messages import TransferBody
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.settlements import settlement_of
from walrus_p2p.errors import OrderRefusedError
from walrus_p2p.testing.network import seed_for
from walrus_p2p.types import Epoch

pytestmark = pytest.mark.timeout(240)

NAME = "slashing-inproc"
EPOCH_SECONDS = 12
ROUND_TIMEOUT = 90.0
ALICE = Identity.from_seed(seed_for(NAME, "alice"))
BOB, CAROL = (Identity.from_seed(seed_for(NAME, who)).public_key.raw for who in ("bob", "carol"))


async def test_members_that_approve_conflicting_orders_are_slashed_at_the_next_change() -> None:
    async with economy_network(NAME, [ALICE], epoch_seconds=EPOCH_SECONDS) as network:
        peers = network.peers
        epoch = peers[0].running.epochs.epoch
        network_id = peers[0].running.economy.network_id

        def certified(recipient: bytes, signers: list[int]) -> em.CertifiedOrder:
            body = TransferBody(network_id, ALICE.public_key.raw, 0, Epoch(epoch), recipient, WAL)
            order = em.sign_order(ALICE, body)
            approvals = [
                em.approve(peers[i].identity, network_id, epoch, em.order_id(order))
                for i in signers
            ]
            return em.certify(order, sorted(approvals, key=lambda a: a.signer), epoch)

        first = certified(BOB, [0, 1, 2])
        second = certified(CAROL, [1, 2, 3])
        economy = peers[0].running.economy
        await economy.merge(first, announce=False)
        with pytest.raises(OrderRefusedError) as refused:
            await economy.merge(second, announce=False)
        assert refused.value.reason == "ORDER_CONFLICT"
        equivocators = sorted([peers[1].peer_id, peers[2].peer_id])
        assert sorted(economy.evidence_counts()) == equivocators

        running = network.running()
        await eventually(
            lambda: all(
                sorted(p.running.economy.evidence_counts()) == equivocators for p in running
            ),
            "every peer verified and kept the evidence from gossip",
            30.0,
        )
        await eventually(
            lambda: all(
                p.running.economy.ledger.slash_count(peers[1].peer_id) == 1 for p in running
            ),
            "the next settlement slashed them",
            ROUND_TIMEOUT,
        )
        records = peers[0].running.epochs.records
        slashing = [
            e
            for e in sorted(records)
            if (found := settlement_of(records[e].value)) is not None and found.slashed
        ]
        assert len(slashing) == 1
        found = settlement_of(records[slashing[0]].value)
        assert found is not None and list(found.slashed) == equivocators
        await network.wait_epoch(slashing[0] + 1, timeout=ROUND_TIMEOUT)
        later = settlement_of(peers[0].running.epochs.records[slashing[0] + 1].value)
        assert later is not None and later.slashed == ()  # one slash per piece of evidence
        assert all(p.running.economy.ledger.slash_count(peers[2].peer_id) == 1 for p in running)
        # a restarted peer reloads the evidence it stored, and its ledger's count of slashes
        await network.stop(peers[3])
        await network.start(peers[3])
        restarted = peers[3].running.economy
        assert sorted(restarted.evidence_counts()) == equivocators
        await eventually(
            lambda: restarted.ledger.slash_count(peers[1].peer_id) == 1,
            "the restarted peer replayed the slashing settlement",
            ROUND_TIMEOUT,
        )
