"""Settlements in the epoch change, over real in-process peers (docs/economics.md, "Settlements
in the epoch change"; docs/challenges.md, "Payout").

Four storage peers of an 8-shard network with an economy, epochs of a few seconds, storage
challenges from epoch 1, and peer 3 running the ``forget-slivers`` fault (it confirms slivers it
never stored, so it gets no availability certificate). In epoch 0 Alice stakes with peer 0 and
pays for two blobs. Then every epoch value carries the settlement of the epoch it ends, and
every peer's ledger applies it: the stake becomes active, the epoch payouts go to the members
by shards (the stake's share to Alice), peer 3 is not paid for epoch 1, and a restarted peer
replays the settlements from its stored chain. Every wait has a deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest
import trio
from economy_network import economy_network as shared_economy_network

from walrus_p2p.client.results import StoredBlob
from walrus_p2p.client.staking import economy_view, send_stake, send_unstake, send_withdraw
from walrus_p2p.client.wallet import WalletOptions
from walrus_p2p.core.challenge_payout import certified_payout
from walrus_p2p.core.economy import Prices, VoteSettings, encoded_size, quote, split_payout
from walrus_p2p.core.economy_messages import EpochSettlement, StakeStateCode
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.ledger import StakeState
from walrus_p2p.core.settlements import settlement_of
from walrus_p2p.errors import OrderRefusedError
from walrus_p2p.node.challenges import ChallengeOptions
from walrus_p2p.node.economy import EconomyOptions
from walrus_p2p.node.faults import FORGET_SLIVERS
from walrus_p2p.testing.network import (
    TestNetwork,
    TestPeer,
    open_test_client,
    open_test_light_peer,
    seed_for,
)
from walrus_p2p.types import BlobId

pytestmark = pytest.mark.timeout(300)

NAME = "settlements-inproc"
EPOCH_SECONDS = 12
STEP = 30.0
ROUND_TIMEOUT = 90.0
WAL = 10**9
ALICE = Identity.from_seed(seed_for(NAME, "wallet-alice"))
VOTE = VoteSettings(storage_price=150_000, write_price=30_000, capacity=2**40, commission_bps=0)
"""What every peer votes (the genesis asks 100 000 and 20 000)."""
OPTIONS = WalletOptions(request_timeout=5.0, total_timeout=20.0, attempts=2, tail_seconds=1.0)


def economy_network() -> AbstractAsyncContextManager[TestNetwork]:
    return shared_economy_network(
        NAME,
        [ALICE],
        epoch_seconds=EPOCH_SECONDS,
        faults={3: FORGET_SLIVERS},
        economy_options=EconomyOptions(
            gap_interval=1.0, request_timeout=5.0, vote_source=lambda: VOTE
        ),
        challenges=ChallengeOptions(window_seconds=5.0, request_timeout=5.0),
    )


async def eventually(
    condition: Callable[[], bool], what: str, timeout: float = ROUND_TIMEOUT
) -> None:
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.2)
    assert condition(), f"not reached within {timeout} s: {what}"


def settlement(peer: TestPeer, epoch: int) -> EpochSettlement:
    """The settlement of ``epoch``, from the record of ``epoch`` + 1 in the peer's chain."""
    found = settlement_of(peer.running.epochs.records[epoch + 1].value)
    assert found is not None
    return found


def member_key(peer: TestPeer) -> bytes:
    return peer.identity.public_key.raw


async def test_settlements_pay_members_activate_stake_and_skip_an_uncertified_member() -> None:
    async with economy_network() as network:
        peers = network.peers
        async with open_test_light_peer(network) as light:
            staked = await send_stake(light, ALICE, peers[0].peer_id, 50 * WAL, options=OPTIONS)
        stake_id = staked.order_id
        async with open_test_client(network, ALICE) as client:
            for index in range(2):
                with trio.fail_after(STEP):
                    await client.store(bytes([index + 1]) * 6000, epochs=10, permanent=False)
        await network.wait_epoch(2, timeout=ROUND_TIMEOUT)
        running = network.running()
        await eventually(
            lambda: all(peer.running.economy.ledger.settled_epoch >= 1 for peer in running),
            "every ledger applied the settlements of epochs 0 and 1",
        )
        await eventually(
            lambda: len({repr(p.running.economy.ledger.snapshot()) for p in running}) == 1,
            "every ledger holds the same state",
            timeout=STEP,
        )
        ledger = peers[0].running.economy.ledger
        first, second = settlement(peers[0], 0), settlement(peers[0], 1)
        assert all(settlement(peer, 1) == second for peer in running)
        # the stake is listed once, and counts from the committee after its settlement
        listed = [s.epoch for s in (first, second) if stake_id in s.stake_activations]
        assert len(listed) == 1
        position = ledger.stake(stake_id)
        assert position is not None and position.state is StakeState.ACTIVE
        assert position.active_from == listed[0] + 1
        # challenges run from epoch 1: epoch 0 pays everyone, epoch 1 only the certified
        assert first.certified is None
        assert second.certified is not None
        assert peers[3].peer_id not in second.certified
        assert {peers[1].peer_id, peers[2].peer_id} <= set(second.certified)
        assert second.payout > 0
        committee_0 = peers[0].running.epochs.committee_of(0)
        committee_1 = peers[0].running.epochs.committee_of(1)
        assert committee_0 is not None and committee_1 is not None
        stakes_1 = {peers[0].peer_id: {stake_id: 50 * WAL}} if listed == [0] else {}
        paid_0 = split_payout(first.payout, committee_0, commissions={}, stakes={})
        paid_1 = certified_payout(
            second.payout,
            committee_1,
            frozenset(second.certified),
            commissions={},
            stakes=stakes_1,
        ).split
        for peer in peers:
            expected = paid_0.member_rewards.get(peer.peer_id, 0) + paid_1.member_rewards.get(
                peer.peer_id, 0
            )
            if ledger.settled_epoch == 1:
                assert ledger.balance(member_key(peer)) == expected, peer.name
        assert paid_1.member_rewards.get(peers[3].peer_id, 0) == 0
        assert paid_1.member_rewards[peers[1].peer_id] > 0
        if listed == [0] and ledger.settled_epoch == 1:
            assert position.rewards == paid_1.staker_rewards[stake_id] > 0
        assert all(p.running.economy.ledger.total() == ledger.supply for p in running)
        # every member's vote was listed once (a vote stays in force: it is not listed again),
        # and from epoch 2 on at the latest the prices are the voted ones
        listed_votes = [entry.peer_id for s in (first, second) for entry in s.votes]
        assert sorted(listed_votes) == sorted(p.peer_id for p in peers)
        assert ledger.prices(0) == Prices(100_000, 20_000)
        assert ledger.prices(2) == Prices(150_000, 30_000)
        # and a client pays them: a store now costs what the voted prices ask
        async with open_test_client(network, ALICE) as client:
            with trio.fail_after(STEP):
                stored = await client.store(bytes([9]) * 6000, epochs=2, permanent=False)
        assert isinstance(stored, StoredBlob)
        voted = quote(
            encoded_size(6000, network.genesis.n_shards),
            stored.end_epoch - stored.start_epoch,
            Prices(150_000, 30_000),
        )
        assert stored.cost == voted.total

        # a restarted peer rebuilds the same ledger from its stored orders and chain
        await network.stop(peers[1])
        await network.start(peers[1])
        await eventually(
            lambda: (
                len({repr(p.running.economy.ledger.snapshot()) for p in network.running()}) == 1
            ),
            "the restarted peer's ledger equals the others'",
            timeout=STEP * 2,
        )
        assert peers[1].running.economy.ledger.settled_epoch >= 1


async def test_stake_unstake_withdraw_through_the_wallet() -> None:
    async with economy_network() as network:
        peers = network.peers
        async with open_test_light_peer(network) as light:
            staked = await send_stake(light, ALICE, peers[1].peer_id, 20 * WAL, options=OPTIONS)
            stake_id = staked.order_id
            view = await economy_view(light, ALICE.public_key.raw, options=OPTIONS)
            (entry,) = view.reply.stakes
            assert entry.stake_id == stake_id and entry.principal == 20 * WAL
            assert entry.state is StakeStateCode.PENDING
            # withdrawing before the request completes is refused, and changes nothing
            with pytest.raises(OrderRefusedError) as refused:
                await send_withdraw(light, ALICE, stake_id, options=OPTIONS)
            assert refused.value.reason == "STAKE_NOT_WITHDRAWABLE"
            request = await send_unstake(light, ALICE, stake_id, options=OPTIONS)
            # the next epoch change lists the request; then the stake is withdrawable
            await eventually(
                lambda: all(
                    (position := p.running.economy.ledger.stake(stake_id)) is not None
                    and position.state is StakeState.WITHDRAWABLE
                    for p in network.running()
                ),
                "the withdrawal request was listed by a settlement",
            )
            await light.refresh_if_stale(min_interval=0.0)
            before = network.peers[0].running.economy.ledger.balance(ALICE.public_key.raw)
            position = network.peers[0].running.economy.ledger.stake(stake_id)
            assert position is not None and position.request == request.order_id
            await send_withdraw(light, ALICE, stake_id, options=OPTIONS)
            await eventually(
                lambda: all(
                    p.running.economy.ledger.stake(stake_id) is None for p in network.running()
                ),
                "the stake was withdrawn everywhere",
                timeout=STEP,
            )
            ledger = network.peers[0].running.economy.ledger
            assert ledger.balance(ALICE.public_key.raw) == before + position.principal + (
                position.rewards
            )
            view = await economy_view(light, ALICE.public_key.raw, options=OPTIONS)
            assert view.reply.stakes == ()
            assert view.reply.settled_epoch is not None
            assert ledger.total() == ledger.supply


async def test_a_member_that_keeps_failing_its_challenges_is_voted_out() -> None:
    async with economy_network() as network:
        peers = network.peers
        blobs: dict[bytes, bytes] = {}
        async with open_test_client(network, ALICE) as client:
            for index in range(2):
                data = bytes([index + 5]) * 7000
                with trio.fail_after(STEP):
                    stored = await client.store(data, epochs=20, permanent=False)
                blobs[bytes(stored.blob_id)] = data
        # peer 3 confirms slivers it never stored: no certificate in epochs 1, 2 and 3, so the
        # settlement of epoch 3 votes it out of the committees of epochs 4 to 6
        await network.wait_epoch(4, timeout=5 * EPOCH_SECONDS + ROUND_TIMEOUT)
        observer = peers[0]
        for epoch in (1, 2, 3):
            settled = settlement(observer, epoch)
            assert settled.certified is not None
            assert peers[3].peer_id not in settled.certified
            assert peers[0].peer_id in settled.certified
        committee = observer.running.epochs.committee_of(4)
        assert committee is not None
        assert peers[3].peer_id not in committee
        assert {p.peer_id for p in peers[:3]} <= set(committee.peer_ids)
        async with open_test_client(network, ALICE) as client:
            for blob_id, data in blobs.items():
                with trio.fail_after(STEP):
                    assert bytes(await client.read(BlobId(blob_id))) == data
