"""Stand-ins shared by the unit tests of the epoch service (test_epoch_direct.py,
test_epoch_gossip.py): a storage peer without a network, an in-memory store, signed votes and a
certified record. No network, no disk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from walrus_p2p.core import wire
from walrus_p2p.core.committee import Committee
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
from walrus_p2p.errors import WalrusError
from walrus_p2p.node.metrics import PeerMetrics
from walrus_p2p.node.ratelimit import RequestRates
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


class StubPeer:
    """What :class:`~walrus_p2p.node.epochs.EpochService` uses of a storage peer."""

    def __init__(self, genesis: Genesis, identity: Identity) -> None:
        self.genesis = genesis
        self.committee: Committee = genesis.committee
        self.identity = identity
        self.peer_id = identity.peer_id
        self.host = None
        self.store = MemoryStore()
        self.metrics = PeerMetrics()
        self.rates = RequestRates()
        self.limits = wire.DEFAULT_LIMITS
        self.options = dataclasses.make_dataclass("Options", [("announce_addrs", Any)])(None)
        self.handlers: dict[type, Any] = {}

    def add_handler(self, message_type: type, handler: Any) -> None:
        self.handlers[message_type] = handler

    def check_rate(self, remote: PeerId, kind: str) -> None:
        if not self.rates.allow(remote, kind):
            raise WalrusError("limited", reason="RATE_LIMITED")


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
