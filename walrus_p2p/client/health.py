"""Every committee member's health, as a light client sees it (docs/cli.md, "Health").

Each member of the current committee (verified from genesis through the epoch chain) is asked
once, all in parallel, with a deadline: whether it answered and how fast, and what it says of
itself (version, epoch, uptime, connections, its shards in place and arriving). What a member
says is its own word; the committee columns (its shards, its place) are what the client
verified.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import trio

from walrus_p2p.client.network import LightPeer
from walrus_p2p.core.health import PeerHealthReply, PeerHealthRequest
from walrus_p2p.errors import WalrusError
from walrus_p2p.types import Epoch, PeerId

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class MemberHealth:
    """One member: its verified shards, and its answer (None when it did not answer)."""

    peer_id: PeerId
    shards: int
    reply: PeerHealthReply | None
    seconds: float | None
    """Round trip of the answer (None without one)."""
    error: str | None
    """Why it did not answer (a reason code), or None."""

    @property
    def reachable(self) -> bool:
        return self.reply is not None

    def state(self, epoch: int) -> str:
        """ok, behind (an older epoch), migrating (shards arriving), unreachable."""
        if self.reply is None:
            return "unreachable"
        if self.reply.epoch < epoch:
            return "behind"
        if self.reply.shards_arriving:
            return "migrating"
        return "ok"


@dataclass(frozen=True, slots=True)
class HealthReport:
    epoch: int
    members: tuple[MemberHealth, ...]

    @property
    def reachable_shards(self) -> int:
        return sum(member.shards for member in self.members if member.reachable)


async def fetch_health(light: LightPeer, *, timeout: float = DEFAULT_TIMEOUT) -> HealthReport:
    """Ask every member of the current committee for its health, at once."""
    await light.refresh_if_stale()
    committee = light.committee
    epoch = light.epoch
    results: dict[PeerId, MemberHealth] = {}

    async def ask(peer_id: PeerId) -> None:
        shards = len(committee.shards_of(peer_id))
        started = time.perf_counter()
        try:
            reply = await light.call(
                peer_id, PeerHealthRequest(Epoch(epoch)), PeerHealthReply, timeout=timeout
            )
        except WalrusError as error:
            logger.info("health query failed peer=%s reason=%s", peer_id[:12], error.reason)
            results[peer_id] = MemberHealth(peer_id, shards, None, None, error.reason)
            return
        seconds = time.perf_counter() - started
        results[peer_id] = MemberHealth(peer_id, shards, reply, seconds, None)

    async with trio.open_nursery() as nursery:
        for peer_id in committee.peer_ids:
            nursery.start_soon(ask, peer_id)
    members = tuple(results[peer_id] for peer_id in sorted(committee.peer_ids))
    return HealthReport(epoch, members)
