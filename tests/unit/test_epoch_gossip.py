"""The epochs-topic validator of the epoch service: what is relayed, dropped, or hints a sync.

No network: the service is built on a stub peer (the validator reads only the committee, the
genesis and the chain), and messages are handed to it as gossip would.
"""

from __future__ import annotations

import dataclasses

from epoch_stubs import certified, epoch_service, prevote

from walrus_p2p.core import wire
from walrus_p2p.core.consensus import Vote
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.records import (
    Candidacy,
)
from walrus_p2p.net.gossip import GossipMessage
from walrus_p2p.node.epochs import EpochService
from walrus_p2p.testing.epochs import epoch_genesis
from walrus_p2p.types import Epoch, PeerId

PEERS = [Identity.from_seed(bytes([9, index]) * 16) for index in range(4)]
OUTSIDER = Identity.from_seed(bytes([9, 99]) * 16)


def make_service() -> tuple[EpochService, Genesis]:
    genesis = epoch_genesis(
        PEERS,
        [f"/ip4/127.0.0.1/tcp/{4000 + index}" for index in range(4)],
        network="gossip-rules",
        n_shards=8,
        epoch_seconds=60,
    )
    service = epoch_service(genesis, PEERS[0])
    return service, genesis


def gossip(message: wire.Message, origin: PeerId = PEERS[1].peer_id) -> GossipMessage:
    return GossipMessage(
        topic="t", data=wire.encode(message), origin=origin, forwarder=origin, seqno=1
    )


def vote(signer: Identity, network_id: bytes, epoch: int, value_id: bytes | None = None) -> Vote:
    return prevote(signer, network_id, epoch, 0, value_id)


def test_candidacies_must_verify_and_be_fresh() -> None:
    service, genesis = make_service()

    def candidacy(ident: Identity, epoch: int, network_id: bytes = genesis.network_id) -> Candidacy:
        return Candidacy.create(
            ident, network_id=network_id, epoch=epoch, addresses=[], weight=1, capacity=1
        )

    assert service._validate_gossip(gossip(candidacy(OUTSIDER, 1)))
    assert not service._validate_gossip(gossip(candidacy(OUTSIDER, 3)))  # too far ahead
    assert not service._validate_gossip(gossip(candidacy(OUTSIDER, 1, bytes(32))))
    forged = dataclasses.replace(candidacy(OUTSIDER, 1), signature=bytes(64))
    assert not service._validate_gossip(gossip(forged))
    assert not service._validate_gossip(
        GossipMessage(
            topic="t",
            data=b"\xff" * 10,
            origin=PEERS[1].peer_id,
            forwarder=PEERS[1].peer_id,
            seqno=1,
        )
    )


def test_consensus_messages_are_not_relayed_on_gossip() -> None:
    # Proposals and votes travel on direct links now (docs/epochs.md, "Transport"): a vote on
    # the epochs topic is dropped, whoever signed it, and hints nothing.
    service, genesis = make_service()
    assert not service._validate_gossip(gossip(vote(PEERS[1], genesis.network_id, 1)))
    assert not service._validate_gossip(gossip(vote(PEERS[2], genesis.network_id, 3)))
    assert not service._sync_wanted.is_set()


def test_records_need_a_quorum_of_the_current_committee() -> None:
    service, genesis = make_service()
    good = certified(genesis, PEERS[:3])  # 6 of 8 shards
    assert not service._validate_gossip(gossip(certified(genesis, PEERS[:2])))  # 4 of 8
    tampered = dataclasses.replace(
        good, value=dataclasses.replace(good.value, start_time=good.value.start_time + 1)
    )
    assert not service._validate_gossip(gossip(tampered))
    later = dataclasses.replace(good, value=dataclasses.replace(good.value, epoch=Epoch(4)))
    assert not service._validate_gossip(gossip(later, PEERS[3].peer_id))
    assert service._hinted.get(PEERS[3].peer_id) == 4
    assert service._validate_gossip(gossip(good))


def test_one_record_per_epoch_is_relayed() -> None:
    # Every decider may publish the record, each with its own quorum of precommits; the first
    # that verifies is relayed, later copies of that epoch are not (one flood per epoch).
    service, genesis = make_service()
    first = certified(genesis, PEERS[:3])
    second = certified(genesis, PEERS[1:4])
    assert first != second
    assert service._validate_gossip(gossip(first, PEERS[1].peer_id))
    assert not service._validate_gossip(gossip(second, PEERS[2].peer_id))
    assert not service._validate_gossip(gossip(first, PEERS[3].peer_id))
    # This peer's own announcement still passes its validator (it runs on local publishes).
    assert service._validate_gossip(gossip(second, PEERS[0].peer_id))
