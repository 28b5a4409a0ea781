"""Epoch changes over the network: in-process storage peers with epochs of a few seconds.

Every test runs real libp2p hosts on 127.0.0.1 with the wall clock (the agreement's timeouts
are trio timers; epoch starts follow the genesis schedule), under ``trio.fail_after``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, cast

import pytest
import trio

from walrus_p2p import cli
from walrus_p2p.client.committee import refresh_committee
from walrus_p2p.client.network import open_light_peer
from walrus_p2p.client.read import ReadOptions, fetch_metadata, fetch_slivers
from walrus_p2p.client.results import StoredBlob
from walrus_p2p.client.service import open_client
from walrus_p2p.core import wire
from walrus_p2p.core.consensus import Vote, proposer_order
from walrus_p2p.core.encoding import SliverType
from walrus_p2p.core.encoding import shard_to_pair as pair_of_shard
from walrus_p2p.core.genesis import genesis_to_toml
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.records import verify_epoch_chain
from walrus_p2p.errors import NetworkError
from walrus_p2p.node.healing_options import HealingOptions
from walrus_p2p.node.peer import StoragePeerService
from walrus_p2p.testing.epochs import open_epoch_network
from walrus_p2p.testing.network import seed_for

EPOCH_SECONDS = 6


async def test_network_advances_through_three_epochs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with trio.fail_after(85):
        async with open_epoch_network(4, 8, epoch_seconds=EPOCH_SECONDS) as network:
            genesis = network.genesis
            await network.wait_epoch(3)
            # `walrus-peer info --json` verifies the chain through a light peer (own trio run
            # in a worker thread) and shows the current committee.
            genesis_file = tmp_path / "genesis.toml"
            genesis_file.write_text(genesis_to_toml(genesis))
            capsys.readouterr()
            code = await trio.to_thread.run_sync(
                cli.main, ["info", "--genesis", str(genesis_file), "--json"]
            )
            assert code == 0
            info = json.loads(capsys.readouterr().out)
            assert info["verified"] is True
            assert info["epoch"] >= 3
            assert info["epochEnd"] == genesis.epoch_start(info["epoch"] + 1)
            assert (info["n"], info["f"], info["quorum"]) == (8, 2, 6)
            assert {entry["peerId"] for entry in info["committee"]} == set(
                genesis.committee.peer_ids
            )
            assert sorted(s for entry in info["committee"] for s in entry["shards"]) == list(
                range(8)
            )
            chains = [peer.running.epochs.chain()[:3] for peer in network.running()]
            # Every peer decided the same values (certificates may hold different quorums of
            # precommits), and each peer's chain verifies from genesis.
            values = [[record.value for record in chain] for chain in chains]
            assert all(value == values[0] for value in values)
            for chain in chains:
                verify_epoch_chain(genesis.committee, chain, genesis.network_id)
            latest = verify_epoch_chain(genesis.committee, chains[0], genesis.network_id)
            assert latest.epoch == 3
            for epoch, record in enumerate(chains[0], start=1):
                assert record.value.start_time == genesis.epoch_start(epoch)
                # Static membership: the same peers keep the same shards (minimal moves).
                assert record.committee.shard_map == genesis.committee.shard_map


async def test_light_peer_verifies_chain_and_rejects_forged_record() -> None:
    with trio.fail_after(80):
        async with open_epoch_network(4, 8, epoch_seconds=EPOCH_SECONDS) as network:
            genesis = network.genesis
            await network.wait_epoch(2)
            honest, liar = network["peer0"], network["peer1"]
            # The light peer fetches the chain from one peer and verifies it from genesis.
            async with open_light_peer(genesis, seed=seed_for(genesis.network, "light")) as light:
                assert light.epoch >= 2
                assert light.committee == honest.running.epochs.committee_of(light.epoch)
                verify_epoch_chain(genesis.committee, light.chain, genesis.network_id)
            # One peer serves a tampered record 2: same certificate, another start time.
            record = liar.running.epochs.records[2]
            forged = dataclasses.replace(
                record,
                value=dataclasses.replace(record.value, start_time=record.value.start_time + 1),
            )
            liar.running.epochs.records[2] = forged
            async with open_light_peer(
                genesis, seed=seed_for(genesis.network, "light2"), verify_chain=False
            ) as light:
                with pytest.raises(NetworkError):
                    await refresh_committee(light, sources=[liar.peer_id])
                # Record 1 verified before the forged one and is kept; record 2 is not.
                assert [r.epoch for r in light.chain] == [1]
                await refresh_committee(light, sources=[liar.peer_id, honest.peer_id])
                assert light.epoch >= 2
                assert light.chain[1] == honest.running.epochs.records[2]
                assert light.chain[1] != forged


async def test_candidate_joins_and_unreachable_member_is_dropped() -> None:
    with trio.fail_after(85):
        async with open_epoch_network(4, 8, epoch_seconds=EPOCH_SECONDS) as network:
            genesis = network.genesis
            stopped = network["peer3"]
            await network.stop("peer3")
            newcomer = await network.join("newcomer")
            assert newcomer.peer_id not in genesis.committee
            assert not newcomer.running.committee.shards_of(newcomer.peer_id)
            await network.wait_epoch(2)
            epochs = network["peer0"].running.epochs
            first, second = epochs.committee_of(1), epochs.committee_of(2)
            assert first is not None and second is not None
            # The candidate announced itself during epoch 0 and holds shards from epoch 1 on,
            # and it follows the chain itself (it is no voter in epoch 0).
            assert first.shards_of(newcomer.peer_id)
            assert second.shards_of(newcomer.peer_id)
            assert newcomer.running.epoch >= 2
            # Nobody heard from peer3 during epoch 1: it is not in epoch 2's committee.
            assert stopped.peer_id not in second
            # Genesis members keep their genesis weight, the newcomer gets the capped default.
            assert second.member(newcomer.peer_id).weight == 1
            # Minimal moves: the peers that stayed keep every shard they still hold a seat for.
            for peer_id in second.peer_ids:
                kept = set(first.shards_of(peer_id)) & set(second.shards_of(peer_id))
                assert len(kept) == min(
                    len(first.shards_of(peer_id)), len(second.shards_of(peer_id))
                )


async def test_change_completes_when_the_proposer_is_killed() -> None:
    with trio.fail_after(80):
        async with open_epoch_network(4, 8, epoch_seconds=EPOCH_SECONDS) as network:
            genesis = network.genesis
            proposer = proposer_order(genesis.committee, 1)[0]
            (victim,) = [peer for peer in network.running() if peer.peer_id == proposer]
            # Kill round 0's proposer just before the scheduled change, so it never proposes.
            await trio.sleep(max(0.0, genesis.epoch_start(1) - time.time() - 0.3))
            await network.stop(victim.name)
            await network.wait_epoch(1)
            record = network.running()[0].running.epochs.records[1]
            assert record.certificate.round >= 1
            assert proposer not in {s.signer for s in record.certificate.precommits}
            verify_epoch_chain(genesis.committee, [record], genesis.network_id)


async def test_restarted_peer_catches_up_after_missing_two_epochs() -> None:
    with trio.fail_after(85):
        async with open_epoch_network(4, 8, epoch_seconds=EPOCH_SECONDS) as network:
            genesis = network.genesis
            await network.stop("peer2")
            await network.wait_epoch(2)
            restarted = await network.start(network["peer2"])
            # Caught up before it reported started: the chain verified from genesis.
            epochs = restarted.running.epochs
            assert restarted.running.epoch >= 2
            verify_epoch_chain(genesis.committee, epochs.chain(), genesis.network_id)
            assert epochs.chain()[1].value == network["peer0"].running.epochs.records[2].value
            # It serves the chain: a light peer that asks only it verifies the same epochs.
            async with open_light_peer(
                genesis, seed=seed_for(genesis.network, "light"), verify_chain=False
            ) as light:
                await refresh_committee(light, sources=[restarted.peer_id])
                assert light.epoch >= 2
            # After a reload from its own store, it holds the same verified chain.
            await network.stop("peer2")
            restarted = await network.start(network["peer2"])
            assert restarted.running.epoch >= 2


async def test_store_that_straddles_an_epoch_change_starts_over_in_the_new_epoch() -> None:
    # Every peer holds its first confirmation until it has moved to the next epoch: the store's
    # confirmations for its epoch are all refused (WRONG_EPOCH). It must start over with the
    # new committee and succeed, not answer NOT_ENOUGH_PEERS (seen under churn at 20 peers).
    with trio.fail_after(85):
        async with open_epoch_network(4, 8, epoch_seconds=EPOCH_SECONDS) as network:
            held: list[int] = []
            for peer in network.running():
                service = peer.running
                original = service.router.handler(wire.GetConfirmationRequest)

                async def held_once(
                    request: wire.GetConfirmationRequest,
                    remote: str,
                    service: StoragePeerService = service,
                    original: Any = original,
                ) -> wire.GetConfirmationReply:
                    if service.peer_id not in held:
                        held.append(service.peer_id)
                        with trio.move_on_after(3 * EPOCH_SECONDS):
                            while service.epoch <= request.epoch:
                                await service.epochs.changed.wait()
                    return cast(wire.GetConfirmationReply, await original(request, remote))

                service.router.replace(wire.GetConfirmationRequest, held_once)
            owner = Identity.from_seed(seed_for(network.genesis.network, "straddle"))
            data = bytes(range(256)) * 300
            async with open_client(network.genesis, owner) as client:
                started = client.light.epoch
                outcome = await client.store(data, epochs=3, permanent=False)
                assert isinstance(outcome, StoredBlob)
                assert outcome.certified_epoch > started
                assert len(held) == len(network.running())
                assert await client.read(outcome.blob_id) == data


async def test_transition_writes_go_to_new_committee_reads_fall_back_to_old(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Healing off: the newcomer must not recover its new shard's slivers on its own, so the
    # read below can only succeed through the previous owner.
    with trio.fail_after(85):
        async with open_epoch_network(
            4, 8, epoch_seconds=10, healing=HealingOptions(enabled=False)
        ) as network:
            genesis = network.genesis
            owner = Identity.from_seed(seed_for(genesis.network, "owner"))
            data = bytes(range(256)) * 40
            async with open_client(genesis, owner) as client:
                assert client.light.epoch == 0
                old_blob = (await client.store(data, epochs=5, permanent=False)).blob_id
                newcomer = await network.join("newcomer")
                await network.wait_epoch(1)
                # A long-running client follows the change on its next call.
                assert await client.read(old_blob) == data
                assert client.light.epoch >= 1
            async with open_client(genesis, owner) as client:
                light = client.light
                assert light.epoch >= 1
                shards = light.committee.shards_of(newcomer.peer_id)
                assert shards
                assert not newcomer.running.store.list_slivers(old_blob)
                # Reads of the old blob: the newcomer lacks the slivers of its shards and has
                # not reported them in place (healing, and with it migration, is off), so
                # readers ask their previous owners first, then the newcomer.
                await light.refresh_in_place()
                assert not light.in_place.get(light.epoch)
                for shard in shards:
                    holders = light.holders_of(shard)
                    assert holders[1] == newcomer.peer_id and len(holders) == 2
                # `walrus-peer info` lists them as arriving at the newcomer.
                genesis_file = tmp_path / "genesis.toml"
                genesis_file.write_text(genesis_to_toml(genesis))
                capsys.readouterr()
                code = await trio.to_thread.run_sync(
                    cli.main, ["info", "--genesis", str(genesis_file), "--json"]
                )
                assert code == 0
                info = json.loads(capsys.readouterr().out)
                arriving = {e["peerId"]: e["shardsArriving"] for e in info["committee"]}
                assert sorted(arriving.pop(newcomer.peer_id)) == sorted(shards)
                assert not any(arriving.values())
                metadata = await fetch_metadata(light, old_blob, timeout=10)
                pairs = [pair_of_shard(old_blob, shard, genesis.n_shards) for shard in shards]
                got = await fetch_slivers(
                    light,
                    old_blob,
                    metadata,
                    SliverType.PRIMARY,
                    indices=pairs,
                    needed=len(pairs),
                    options=ReadOptions(),
                    bad_peers=set(),
                )
                assert sorted(got) == sorted(pairs)
                assert await client.read(old_blob) == data
                # Writes go to the new committee: the newcomer stores its shards of a new blob.
                new_data = data[::-1]
                new_blob = (await client.store(new_data, epochs=3, permanent=False)).blob_id
                assert newcomer.running.store.list_slivers(new_blob)


async def test_peer_restarted_mid_agreement_resumes_from_its_journal() -> None:
    with trio.fail_after(85):
        async with open_epoch_network(4, 8, epoch_seconds=EPOCH_SECONDS) as network:
            genesis = network.genesis
            # Half the shards down: no quorum, the agreement for epoch 1 cannot finish.
            await network.stop("peer2")
            await network.stop("peer3")
            service = network["peer0"].running
            while True:  # no event for "signed a vote": poll the agreement
                agreement = service.epochs.agreement
                if agreement is not None and any(
                    isinstance(message, Vote) for message in agreement.rebroadcast()
                ):
                    break
                await trio.sleep(0.1)
            # peer0 has signed (and journaled) a prevote; it crashes and comes back.
            await network.stop("peer0")
            restarted = await network.start(network["peer0"])
            assert restarted.running.epochs.restored == 1
            await network.start(network["peer2"])
            await network.start(network["peer3"])
            await network.wait_epoch(1)
            for peer in network.running():
                epochs = peer.running.epochs
                # Nobody saw two different signed messages of one signer for a round and step:
                # the restarted peer did not sign anew what it had signed before the crash.
                assert not epochs.evidence
                verify_epoch_chain(genesis.committee, epochs.chain()[:1], genesis.network_id)
