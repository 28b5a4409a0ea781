"""Blob records on the client side: push them to the committee, fetch and verify them back.

A client trusts no single peer: every record it gets is verified against the genesis committee
before it is merged, so a lying peer can at most withhold records, not invent them.
"""

from __future__ import annotations

import logging
import random

import trio

from walrus_p2p.client.network import LightPeer
from walrus_p2p.core import records
from walrus_p2p.core.blob_messages import (
    GetBlobRecordsReply,
    GetBlobRecordsRequest,
    PostBlobRecordsReply,
    PostBlobRecordsRequest,
    decode_records,
    encode_records,
)
from walrus_p2p.core.committee import Committee, is_quorum
from walrus_p2p.errors import VerificationError, WalrusError
from walrus_p2p.types import BlobId, Epoch, PeerId, short_id

logger = logging.getLogger(__name__)


async def push_records(
    light: LightPeer,
    blob_id: BlobId,
    items: list[records.BlobRecord],
    *,
    timeout: float = 10.0,
    background: trio.Nursery | None = None,
) -> int:
    """Send records to every committee member at once; returns how many peers took them.

    With ``background``, returns as soon as peers holding a quorum of shards took them (or every
    push ended); the pushes to the others go on there, each bounded by ``timeout``. So a peer
    that is down costs the caller nothing once a quorum has the records."""
    encoded = encode_records(items)
    committee = light.committee
    delivered: list[PeerId] = []
    enough = trio.Event()

    async def push(peer_id: PeerId) -> None:
        try:
            await light.call(
                peer_id,
                PostBlobRecordsRequest(blob_id=blob_id, records=encoded),
                PostBlobRecordsReply,
                timeout=timeout,
            )
        except WalrusError as error:
            logger.info(
                "record push failed blob=%s peer=%s reason=%s",
                short_id(blob_id),
                peer_id[:12],
                error.reason,
            )
            return
        delivered.append(peer_id)
        if is_quorum(committee.shard_weight(delivered), committee.n_shards):
            enough.set()

    async def push_all() -> None:
        async with trio.open_nursery() as nursery:
            for peer_id in committee.peer_ids:
                nursery.start_soon(push, peer_id)
        enough.set()

    if background is None:
        await push_all()
    else:
        background.start_soon(push_all)
        await enough.wait()
    return len(delivered)


def _committee_lookup(light: LightPeer) -> records.CommitteeLookup:
    def lookup(epoch: Epoch) -> Committee | None:
        # Any epoch of the verified chain (client/committee.py), not only the current one.
        return light.committee_of(epoch)

    return lookup


async def fetch_blob_state(
    light: LightPeer,
    blob_id: BlobId,
    *,
    sample: int = 4,
    timeout: float = 5.0,
) -> records.BlobState | None:
    """Ask a few random peers for the blob's records; merge every one that verifies.

    Returns None when no peer answered at all. Records that fail verification are dropped
    (and logged): the answer can only ever be what honest signers signed. The ends of the
    blob's shared blobs come from the verified epoch chain (docs/economics.md, "Shared blobs").
    """
    peers = list(light.committee.peer_ids)
    random.shuffle(peers)
    lookup = _committee_lookup(light)
    state = records.BlobState.empty(blob_id)
    answered = 0

    async def ask(peer_id: PeerId) -> None:
        nonlocal state, answered
        try:
            reply = await light.call(
                peer_id,
                GetBlobRecordsRequest(blob_id=blob_id),
                GetBlobRecordsReply,
                timeout=timeout,
            )
            items = decode_records(reply.records, blob_id)
        except WalrusError as error:
            logger.debug("records query failed peer=%s reason=%s", peer_id[:12], error.reason)
            return
        answered += 1
        for record in items:
            try:
                state = state.with_verified(record, light.genesis.network_id, lookup)
            except VerificationError as error:
                logger.warning(
                    "peer sent an invalid record blob=%s peer=%s error=%s",
                    short_id(blob_id),
                    peer_id[:12],
                    error,
                )

    async with trio.open_nursery() as nursery:
        for peer_id in peers[:sample]:
            nursery.start_soon(ask, peer_id)
    if not answered:
        return None
    # A shared blob's extensions are in the verified chain, not in records.
    return state.with_shared_ends(light.shared_ends.get(blob_id, {}))
