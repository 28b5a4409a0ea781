"""A storage peer's health, asked over libp2p by `walrus-peer health` (docs/cli.md, "Health").

Type ids 160-167 are health's: 160 / 161 the question and the answer. The answer is the peer's
own word (nothing in it is signed or verifiable): the client shows it next to what it verified
itself (the committee, the in-place reports) and to whether and how fast the peer answered.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from walrus_p2p.core.records import EpochNumber
from walrus_p2p.core.wire import (
    MAX_SHARDS,
    U32,
    U64,
    IntSpec,
    ListSpec,
    Message,
    TextSpec,
    register,
)

MAX_VERSION_LENGTH = 64

ShardList = Annotated[
    tuple[int, ...], ListSpec(IntSpec(0, MAX_SHARDS - 1), MAX_SHARDS, strictly_increasing=True)
]
"""Shard indices, sorted, without repeats (possibly none)."""


@register(160)
@dataclass(frozen=True, slots=True)
class PeerHealthRequest(Message):
    """How are you? ``epoch`` is the asker's verified epoch (the peer may log a lag)."""

    epoch: EpochNumber


@register(161)
@dataclass(frozen=True, slots=True)
class PeerHealthReply(Message):
    """The peer's version, epoch, uptime and connections, and its shards of that epoch: those
    it holds in place and those still arriving (migration, docs/healing.md)."""

    version: Annotated[str, TextSpec(MAX_VERSION_LENGTH)]
    epoch: EpochNumber
    uptime_seconds: U64
    peers_connected: U32
    shards_in_place: ShardList
    shards_arriving: ShardList
    challenge_certified_epoch: EpochNumber | None
