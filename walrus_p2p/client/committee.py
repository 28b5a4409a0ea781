"""The light peer learns the current committee: the epoch chain from genesis, verified.

Owner: light-client verification (docs/design.md §5). A light peer trusts only its genesis file. It
asks one reachable storage peer (members of the newest committee it has verified first, then older
ones) for the epoch records after the last one it holds
(:class:`~walrus_p2p.core.epochs.GetEpochRecordsRequest`, paged), checks every record against the
committee before it -- network, epoch number, n, a quorum of that committee's shard weight of
valid precommit signatures, start times increasing (:func:`walrus_p2p.core.records.
verify_epoch_chain`) -- and only then uses the newest committee. A source that sends a record
that does not verify is dropped (the records before it, which verified, are kept) and the next
source is asked. A source can withhold recent records, not forge them: the result is at worst an
older committee, which a store notices (its confirmations name the wrong epoch).

During an epoch change (docs/epochs.md, "Transition rule") :meth:`LightPeer.holders_of` lists
the shard's owner in the newest committee first and its owner in the previous one second: writes go
to the first, and a read that misses a sliver there falls back to the previous owner, who keeps
serving the slivers it stored until they are garbage-collected.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING

import trio

from walrus_p2p.core.committee import Committee
from walrus_p2p.core.epochs import (
    MAX_EPOCH_RECORDS_PER_REPLY,
    GetEpochRecordsReply,
    GetEpochRecordsRequest,
    decode_epoch_records,
)
from walrus_p2p.core.records import verify_epoch_chain
from walrus_p2p.errors import NetworkError, VerificationError, WalrusError
from walrus_p2p.types import Epoch, PeerId

if TYPE_CHECKING:
    from walrus_p2p.client.network import LightPeer

logger = logging.getLogger(__name__)

MAX_PAGES = 1024
"""A source that keeps claiming more records stops being asked after this many pages."""


def _sources(light: LightPeer) -> list[PeerId]:
    """Members of the newest verified committee (random order), then of older ones."""
    ordered: list[PeerId] = []
    for epoch in sorted(light.committees, reverse=True):
        members = list(light.committees[epoch].peer_ids)
        random.shuffle(members)
        ordered += [member for member in members if member not in ordered]
    return ordered


async def _extend_from(light: LightPeer, source: PeerId, timeout: float) -> None:
    """Page records from ``source`` and adopt each that verifies; raise on a bad one."""
    for _page in range(MAX_PAGES):
        request = GetEpochRecordsRequest(
            from_epoch=Epoch(light.epoch + 1), limit=MAX_EPOCH_RECORDS_PER_REPLY
        )
        reply = await light.call(source, request, GetEpochRecordsReply, timeout=timeout)
        records = decode_epoch_records(reply.records)
        for record in records:
            light.adopt_record(record)
        if not records or reply.latest_epoch <= light.epoch:
            return


async def refresh_committee(
    light: LightPeer,
    *,
    timeout: float = 5.0,
    max_sources: int = 4,
    total_timeout: float = 15.0,
    sources: list[PeerId] | None = None,
) -> Committee:
    """Bring ``light.committee`` up to the newest epoch one source can prove; returns it.

    Sources are asked in turn until one answers with a chain that verifies and either brings
    a newer epoch or shows the schedule's epoch (at most ``max_sources``).

    ``sources`` overrides whom to ask (in order). Raises ``NetworkError`` (reason
    ``NO_EPOCH_SOURCE``) when no source answered with a chain that verifies.
    """
    answered = False
    before = light.epoch
    scheduled = int(light.genesis.scheduled_epoch(int(time.time())))
    # One deadline for all sources: a dead network must not hold a client for sources x timeout
    # (a failed direct dial falls back to a DHT lookup, which takes its own time).
    with trio.move_on_after(total_timeout):
        for source in (_sources(light) if sources is None else sources)[:max_sources]:
            try:
                await _extend_from(light, source, timeout)
                answered = True
                # A source that is itself behind (restarted, or slow to switch) brings nothing
                # while the schedule says a newer epoch should exist: ask the next one.
                if light.epoch > before or light.epoch >= scheduled:
                    break
            except VerificationError as error:
                logger.warning("epoch chain source rejected peer=%s error=%s", source[:12], error)
            except WalrusError as error:
                logger.info("epoch chain source failed peer=%s error=%s", source[:12], error)
    if not answered:
        raise NetworkError("no storage peer answered for the epoch chain", reason="NO_EPOCH_SOURCE")
    # The whole chain once more, as one piece (each record was checked as it came).
    verify_epoch_chain(light.genesis.committee, light.chain, light.genesis.network_id)
    logger.info("committee verified epoch=%d records=%d", light.epoch, len(light.chain))
    return light.committee


__all__ = ["refresh_committee"]
