"""Stand-ins shared by the unit tests of the epoch service (test_epoch_direct.py,
test_epoch_gossip.py): a peer context without a network, an in-memory store, signed votes and a
certified record. No network, no disk.
"""

from __future__ import annotations

from collections.abc import Sequence

from walrus_p2p.core import wire
from walrus_p2p.core.consensus import Vote
from walrus_p2p.core.epochs import propose_next
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.records import (
    PRECOMMIT_CONTEXT,
    PREVOTE_CONTEXT,
    EpochCertificate,
    EpochRecord,
    Signature,
    VoteBody,
    VoteKind,
)
from walrus_p2p.node.committee_view import CommitteeView
from walrus_p2p.node.context import PeerContext
from walrus_p2p.node.epochs import EpochOptions, EpochService
from walrus_p2p.node.metrics import PeerMetrics
from walrus_p2p.node.ratelimit import RequestRates
from walrus_p2p.node.router import Router
from walrus_p2p.types import Epoch, PeerId


class MemoryStore:
    def __init__(self) -> None:
        self.values: dict[tuple[str, bytes], bytes] = {}

    def get_value(self, namespace: str, key: bytes) -> bytes | None:
        return self.values.get((namespace, key))

    def put_value(self, namespace: str, key: bytes, value: bytes) -> None:
        self.values[(namespace, key)] = value

    def delete_value(self, namespace: str, key: bytes) -> None:
        self.values.pop((namespace, key), None)

    def iter_values(self, namespace: str) -> list[tuple[bytes, bytes]]:
        return sorted((k, v) for (n, k), v in self.values.items() if n == namespace)


class StubHost:
    """A host with nobody connected (the epoch service's unit tests never dial)."""

    listen_addrs: tuple[str, ...] = ()

    def is_connected(self, peer_id: PeerId) -> bool:
        return False

    def connected_peers(self) -> list[PeerId]:
        return []


def stub_context(genesis: Genesis, identity: Identity) -> PeerContext:
    """What :class:`~walrus_p2p.node.epochs.EpochService` gets from a storage peer, with an
    in-memory store and no network."""
    metrics = PeerMetrics()
    return PeerContext(
        identity=identity,
        genesis=genesis,
        store=MemoryStore(),  # type: ignore[arg-type]
        metrics=metrics,
        limits=wire.DEFAULT_LIMITS,
        protocol="/test/storage",
        max_frame=1 << 20,
        committees=CommitteeView(genesis.committee),
        records=None,  # type: ignore[arg-type]
        router=Router(limits=wire.DEFAULT_LIMITS, metrics=metrics, rates=RequestRates()),
        host=StubHost(),  # type: ignore[arg-type]
        discovery=None,  # type: ignore[arg-type]
        gossip=None,  # type: ignore[arg-type]
    )


def epoch_service(genesis: Genesis, identity: Identity) -> EpochService:
    """An epoch service on :func:`stub_context`, holding the view's writer."""
    ctx = stub_context(genesis, identity)
    return EpochService(ctx, EpochOptions(), ctx.committees.writer())


def prevote(
    signer: Identity,
    network_id: bytes,
    epoch: int = 1,
    round_: int = 0,
    value_id: bytes | None = None,
) -> Vote:
    body = VoteBody(VoteKind.PREVOTE, network_id, Epoch(epoch), round_, value_id)
    return Vote(body, signer.peer_id, signer.sign(PREVOTE_CONTEXT, wire.signing_bytes(body)))


def certified(genesis: Genesis, signers: Sequence[Identity]) -> EpochRecord:
    """The record of epoch 1 (the genesis committee again), precommitted by ``signers``."""
    value = propose_next(genesis, genesis.committee, {})
    body = VoteBody(VoteKind.PRECOMMIT, genesis.network_id, Epoch(1), 0, value.value_id())
    precommits = [
        Signature(s.peer_id, s.sign(PRECOMMIT_CONTEXT, wire.signing_bytes(body))) for s in signers
    ]
    return EpochRecord(value, EpochCertificate(round=0, precommits=tuple(precommits)))
