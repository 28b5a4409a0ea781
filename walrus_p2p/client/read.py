"""The read flow (docs/design.md §6.2): metadata, kp primaries (or ks secondaries), decode, check.

Nothing a peer sends is used before it is verified: metadata against the blob id, each sliver
against its hash in the metadata, and the decoded blob against the metadata again (the default
consistency check, or ``strict``: re-encode and recompute the blob id). A peer that answers
with bad data is logged, skipped and not asked again during this read.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import trio

from walrus_p2p.client.cache import ReadCache
from walrus_p2p.client.network import LightPeer
from walrus_p2p.core import wire
from walrus_p2p.core.blob_messages import SMALL_SLIVER_SIZE, GetSliversReply, GetSliversRequest
from walrus_p2p.core.committee import is_quorum
from walrus_p2p.core.encoding import EncodingConfig, SliverType, pair_to_shard
from walrus_p2p.core.metadata import (
    Metadata,
    decode_blob,
    verify_metadata,
    verify_sliver,
)
from walrus_p2p.errors import (
    InconsistentBlobError,
    NotFoundError,
    QuorumError,
    RemoteError,
    VerificationError,
    WalrusError,
)
from walrus_p2p.types import BlobId, PeerId, SliverKind, short_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReadOptions:
    request_timeout: float = 30.0
    metadata_timeout: float = 5.0
    extra_parallel: int = 2
    """Sliver requests added beyond the number needed once the first ones are late (hedging)."""
    hedge_after: float = 0.5
    """Seconds before the extra requests start, plus one second per ``hedge_rate`` bytes of
    a sliver: a read from healthy peers fetches exactly the slivers it needs."""
    hedge_rate: float = 5e6
    batch_small: bool = True
    """Ask each peer for its slivers of a small blob in one request (``GetSliversRequest``)."""


METADATA_FIRST_WAVE = 3
"""Members asked for a blob's metadata first; the others only if none of these has it."""
METADATA_HEDGE_SECONDS = 0.3
"""How long the first ones have before the others are asked anyway."""


class BlobNotFoundError(NotFoundError):
    reason = "BLOB_NOT_FOUND"


class _PendingMetadata:
    """A blob's metadata that is still being fetched while its first sliver requests are out.

    A read needs the metadata only to check what arrives, so :func:`read_blob` asks for both at
    once; a sliver that comes back first waits here before it is verified. The metadata round
    trip is then no longer in series with the slivers' (the 1 KiB read latency it saved is in
    CHANGELOG.md and README, "Figures").
    """

    def __init__(self) -> None:
        self._ready = trio.Event()
        self._value: Metadata | None = None
        self.error: WalrusError | None = None

    def set(self, metadata: Metadata) -> None:
        self._value = metadata
        self._ready.set()

    def fail(self, error: WalrusError) -> None:
        self.error = error
        self._ready.set()

    async def get(self) -> Metadata:
        await self._ready.wait()
        if self._value is None:
            # The read is being cancelled (read_blob cancels the slivers when this fails).
            await trio.sleep_forever()
        assert self._value is not None
        return self._value


async def _metadata_of(metadata: Metadata | _PendingMetadata) -> Metadata:
    return metadata if isinstance(metadata, Metadata) else await metadata.get()


async def fetch_metadata(light: LightPeer, blob_id: BlobId, *, timeout: float) -> Metadata:
    """Ask three members, then (once they all answered without it, or after 0.3 s) every
    other one; the first metadata that verifies wins.

    "Unknown" answers are counted by shard weight: once a quorum of shards says it does not know
    the blob, it cannot be certified (a certified blob is held by at least f+1 honest shards),
    and the read fails at once with :class:`BlobNotFoundError`.
    """
    n_shards = light.committee.n_shards
    found: list[Metadata] = []
    unknown: set[PeerId] = set()
    invalid: list[str] = []
    failures: list[str] = []

    members = list(light.committee.peer_ids)
    random.shuffle(members)
    first_wave, second_wave = members[:METADATA_FIRST_WAVE], members[METADATA_FIRST_WAVE:]
    first_answered = trio.Event()
    answered = 0

    async with trio.open_nursery() as nursery:

        async def ask(peer_id: PeerId) -> None:
            nonlocal answered
            try:
                await ask_one(peer_id)
            finally:
                answered += 1
                if answered >= len(first_wave):
                    first_answered.set()

        async def ask_one(peer_id: PeerId) -> None:
            try:
                reply = await light.call(
                    peer_id,
                    wire.GetMetadataRequest(blob_id=blob_id),
                    wire.GetMetadataReply,
                    timeout=timeout,
                )
                verify_metadata(reply.metadata, blob_id)
            except RemoteError as error:
                if error.reason == "BLOB_UNKNOWN":
                    unknown.add(peer_id)
                    if is_quorum(light.committee.shard_weight(unknown), n_shards):
                        nursery.cancel_scope.cancel()
                elif error.reason == "BLOB_INVALID":
                    invalid.append(peer_id)
                else:
                    failures.append(f"{peer_id[:12]}: {error.reason}")
                return
            except VerificationError:
                logger.warning(
                    "peer sent wrong metadata blob=%s peer=%s", short_id(blob_id), peer_id[:12]
                )
                failures.append(f"{peer_id[:12]}: METADATA_MISMATCH")
                return
            except WalrusError as error:
                failures.append(f"{peer_id[:12]}: {error.reason}")
                return
            if reply.metadata.shards != n_shards:
                failures.append(f"{peer_id[:12]}: WRONG_SHARD_COUNT")
                return
            found.append(reply.metadata)
            nursery.cancel_scope.cancel()

        # A few members first; the rest once those all answered without it, or are late
        # (docs/protocol.md, "Read", step 1).
        for peer_id in first_wave:
            nursery.start_soon(ask, peer_id)
        if second_wave:
            with trio.move_on_after(METADATA_HEDGE_SECONDS):
                await first_answered.wait()
            for peer_id in second_wave:
                nursery.start_soon(ask_one, peer_id)

    if found:
        return found[0]
    if is_quorum(light.committee.shard_weight(unknown), n_shards):
        raise BlobNotFoundError(f"blob {short_id(blob_id)} is not stored on this network")
    if invalid:
        raise InconsistentBlobError(f"blob {short_id(blob_id)} was marked invalid")
    raise QuorumError(
        f"no peer served the metadata of blob {short_id(blob_id)} "
        f"({len(unknown)} peers do not know it; {'; '.join(failures[:5])})"
    )


def _holders(
    light: LightPeer, blob_id: BlobId, sliver_type: SliverType, index: int
) -> tuple[list[PeerId], int]:
    """Peers to ask for sliver ``index``, in order (owner now, then one epoch before), and its
    pair."""
    n_shards = light.committee.n_shards
    pair = index if sliver_type is SliverType.PRIMARY else n_shards - 1 - index
    return light.holders_of(pair_to_shard(blob_id, pair, n_shards)), pair


async def _sliver_verifies(
    blob_id: BlobId,
    metadata: Metadata,
    sliver_type: SliverType,
    index: int,
    data: bytes,
    peer_id: PeerId,
    bad_peers: set[PeerId],
) -> bool:
    """Check a sliver against the metadata (in a worker thread); a peer that served a bad one
    is logged and not asked again during this read."""
    try:
        await trio.to_thread.run_sync(verify_sliver, metadata, sliver_type, index, data)
    except VerificationError as error:
        bad_peers.add(peer_id)
        logger.warning(
            "peer served a bad sliver blob=%s peer=%s sliver=%s/%d error=%s",
            short_id(blob_id),
            peer_id[:12],
            sliver_type.value,
            index,
            error,
        )
        return False
    return True


def _may_be_small(
    metadata: Metadata | _PendingMetadata, config: EncodingConfig, sliver_type: SliverType
) -> bool:
    """Whether the slivers may be small enough for :class:`GetSliversRequest` (unknown while
    the metadata is on its way: the peers then say so)."""
    if not isinstance(metadata, Metadata):
        return True
    return config.sliver_length(sliver_type, metadata.unencoded_length) <= SMALL_SLIVER_SIZE


async def fetch_slivers_in_batches(
    light: LightPeer,
    blob_id: BlobId,
    metadata: Metadata | _PendingMetadata,
    sliver_type: SliverType,
    wanted: list[int],
    got: dict[int, bytes],
    options: ReadOptions,
    bad_peers: set[PeerId],
) -> None:
    """The first slivers of a small blob, one request per peer holding two or more of them
    (docs/protocol.md, "Reading a small blob"); each sliver is verified as a single one would
    be. Whatever does not come (a refusal, a peer of an older release, a bad sliver) is left to
    the one-by-one requests."""
    kind = SliverKind.PRIMARY if sliver_type is SliverType.PRIMARY else SliverKind.SECONDARY
    by_peer: dict[PeerId, dict[int, int]] = {}
    for index in wanted:
        holders, pair = _holders(light, blob_id, sliver_type, index)
        first = next((peer for peer in holders if peer not in bad_peers), None)
        if first is not None:
            by_peer.setdefault(first, {})[pair] = index
    groups = {peer: pairs for peer, pairs in by_peer.items() if len(pairs) >= 2}
    if not groups:
        return

    async def ask(peer_id: PeerId, pairs: dict[int, int]) -> None:
        try:
            reply = await light.call(
                peer_id,
                GetSliversRequest(
                    blob_id=blob_id, sliver_kind=kind, pair_indices=tuple(sorted(pairs))
                ),
                GetSliversReply,
                timeout=options.request_timeout,
            )
            verified_against = await _metadata_of(metadata)
        except WalrusError as error:
            logger.debug(
                "batched sliver fetch failed blob=%s peer=%s reason=%s",
                short_id(blob_id),
                peer_id[:12],
                error.reason,
            )
            return
        for item in reply.slivers:
            index = pairs.get(item.pair_index)
            if index is None or item.sliver_kind is not kind:
                continue
            if not await _sliver_verifies(
                blob_id, verified_against, sliver_type, index, item.data, peer_id, bad_peers
            ):
                return
            got[index] = item.data

    async with trio.open_nursery() as nursery:
        for peer_id, pairs in groups.items():
            nursery.start_soon(ask, peer_id, pairs)


async def fetch_slivers(
    light: LightPeer,
    blob_id: BlobId,
    metadata: Metadata | _PendingMetadata,
    sliver_type: SliverType,
    *,
    indices: list[int] | None = None,
    needed: int,
    options: ReadOptions,
    bad_peers: set[PeerId],
) -> dict[int, bytes]:
    """Fetch and verify slivers, ``needed`` + a few in flight, until ``needed``.

    Systematic slivers (the source rows or columns, which decode by copying) come first, each
    group in random order; the pair rotation by blob id spreads them over different peers for
    different blobs. Returns what it got (possibly fewer than ``needed`` when peers are down or
    lying). ``metadata`` may still be on its way (:class:`_PendingMetadata`): the requests go
    out at once and each sliver is verified once it has come.
    """
    # During an epoch change: which moved shards are in place at their new owner (ordering).
    await light.refresh_in_place()
    # The metadata of a blob of this network has the committee's shard count (fetch_metadata
    # refuses any other), so the code parameters are known before the metadata is.
    n_shards = light.committee.n_shards
    config = EncodingConfig.for_shards(n_shards)
    source = config.kp if sliver_type is SliverType.PRIMARY else config.ks
    pool = list(range(n_shards)) if indices is None else list(indices)
    systematic = [index for index in pool if index < source]
    parity = [index for index in pool if index >= source]
    random.shuffle(systematic)
    random.shuffle(parity)
    candidates = systematic + parity
    kind = SliverKind.PRIMARY if sliver_type is SliverType.PRIMARY else SliverKind.SECONDARY
    got: dict[int, bytes] = {}
    if options.batch_small and _may_be_small(metadata, config, sliver_type):
        await fetch_slivers_in_batches(
            light, blob_id, metadata, sliver_type, candidates[:needed], got, options, bad_peers
        )
    queue = [index for index in candidates if index not in got][::-1]
    # workers pop from the end: systematic slivers first

    async def fetch_one(index: int) -> None:
        # During an epoch change the shard's new owner may not hold the sliver yet: fall back
        # to its owner in the previous epoch (docs/epochs.md, "Transition rule"; holders_of).
        holders, pair = _holders(light, blob_id, sliver_type, index)
        for peer_id in holders:
            if peer_id not in bad_peers and await fetch_from(peer_id, index, pair):
                return

    async def fetch_from(peer_id: PeerId, index: int, pair: int) -> bool:
        try:
            reply = await light.call(
                peer_id,
                wire.GetSliverRequest(blob_id=blob_id, pair_index=pair, sliver_kind=kind),
                wire.GetSliverReply,
                timeout=options.request_timeout,
                view_tail=True,  # the sliver is only verified and decoded: no copy of it
            )
            verified_against = await _metadata_of(metadata)
            if not await _sliver_verifies(
                blob_id, verified_against, sliver_type, index, reply.data, peer_id, bad_peers
            ):
                return False
        except WalrusError as error:
            logger.info(
                "sliver fetch failed blob=%s peer=%s sliver=%s/%d reason=%s",
                short_id(blob_id),
                peer_id[:12],
                sliver_type.value,
                index,
                error.reason,
            )
            return False
        got[index] = reply.data
        return True

    async def worker(nursery: trio.Nursery) -> None:
        while queue and len(got) < needed:
            await fetch_one(queue.pop())
        if len(got) >= needed:
            nursery.cancel_scope.cancel()

    # The first ``needed`` requests start at once. A failed request is replaced at once by its
    # worker; the extra requests are for slow or hung peers only, so they wait. Started together
    # (as before), they cost a read from healthy peers 2 slivers more than it needed (25 % more
    # bytes at n = 20), since all the transfers share the link and finish at about once.
    first_done = trio.Event()
    running = 0

    async def first_worker(nursery: trio.Nursery) -> None:
        nonlocal running
        try:
            await worker(nursery)
        finally:
            running -= 1
            if running == 0:
                first_done.set()

    async def hedge(nursery: trio.Nursery) -> None:
        length = (await _metadata_of(metadata)).unencoded_length
        sliver_bytes = config.sliver_length(sliver_type, length)
        hedge_after = options.hedge_after + sliver_bytes / options.hedge_rate
        with trio.move_on_after(hedge_after):
            await first_done.wait()
        if not first_done.is_set():
            for _ in range(min(len(queue), options.extra_parallel)):
                nursery.start_soon(worker, nursery)

    async with trio.open_nursery() as nursery:
        for _ in range(min(len(queue), needed)):
            running += 1
            nursery.start_soon(first_worker, nursery)
        if options.extra_parallel > 0:
            nursery.start_soon(hedge, nursery)
    return got


async def read_blob(
    light: LightPeer,
    blob_id: BlobId,
    *,
    strict: bool = False,
    options: ReadOptions | None = None,
    cache: ReadCache | None = None,
) -> memoryview:
    """The blob's exact bytes, or a ``WalrusError`` — never wrong bytes. They come as a
    read-only ``memoryview`` over the decoder's own buffer (no copy into ``bytes``). With a
    ``cache``, known metadata is not asked for again, and fetched metadata is kept."""
    options = options or ReadOptions()
    config = EncodingConfig.for_shards(light.committee.n_shards)
    bad_peers: set[PeerId] = set()
    pending = _PendingMetadata()
    primaries: dict[int, bytes] = {}
    known = cache.metadata(blob_id) if cache is not None else None
    # The metadata and the primary slivers are asked for together; a sliver is verified once
    # the metadata is in. If the metadata cannot be had, the sliver requests are cancelled.
    async with trio.open_nursery() as nursery:

        async def get_metadata() -> None:
            if known is not None and known.shards == light.committee.n_shards:
                pending.set(known)
                return
            try:
                fetched = await fetch_metadata(light, blob_id, timeout=options.metadata_timeout)
            except WalrusError as error:
                pending.fail(error)
                nursery.cancel_scope.cancel()
                return
            if cache is not None:
                cache.put_metadata(blob_id, fetched)
            pending.set(fetched)

        async def get_primaries() -> None:
            primaries.update(
                await fetch_slivers(
                    light,
                    blob_id,
                    pending,
                    SliverType.PRIMARY,
                    needed=config.kp,
                    options=options,
                    bad_peers=bad_peers,
                )
            )

        nursery.start_soon(get_metadata)
        nursery.start_soon(get_primaries)
    if pending.error is not None:
        raise pending.error
    metadata = await pending.get()
    if len(primaries) >= config.kp:
        return await trio.to_thread.run_sync(
            _decode, metadata, SliverType.PRIMARY, primaries, strict
        )
    logger.info(
        "falling back to secondary slivers blob=%s primaries=%d needed=%d",
        short_id(blob_id),
        len(primaries),
        config.kp,
    )
    secondaries = await fetch_slivers(
        light,
        blob_id,
        metadata,
        SliverType.SECONDARY,
        needed=config.ks,
        options=options,
        bad_peers=bad_peers,
    )
    if len(secondaries) >= config.ks:
        return await trio.to_thread.run_sync(
            _decode, metadata, SliverType.SECONDARY, secondaries, strict
        )
    raise QuorumError(
        f"could not fetch enough slivers of blob {short_id(blob_id)}: {len(primaries)} of "
        f"{config.kp} primary, {len(secondaries)} of {config.ks} secondary"
    )


def _decode(
    metadata: Metadata, sliver_type: SliverType, slivers: dict[int, bytes], strict: bool
) -> memoryview:
    return decode_blob(metadata, sliver_type, slivers, strict=strict, verify_slivers=False)


async def read_range(
    light: LightPeer,
    blob_id: BlobId,
    start: int,
    length: int,
    *,
    options: ReadOptions | None = None,
    cache: ReadCache | None = None,
) -> bytes:
    """Bytes ``[start, start+length)`` of the blob (cut at its end), fetching only the plain
    primary slivers (rows of the blob matrix) that cover the range; falls back to a full read
    when one of them cannot be had."""
    options = options or ReadOptions()
    if start < 0 or length < 0:
        raise WalrusError("range start and length must not be negative", reason="BAD_REQUEST")
    known = cache.metadata(blob_id) if cache is not None else None
    if known is not None and known.shards == light.committee.n_shards:
        metadata = known
    else:
        metadata = await fetch_metadata(light, blob_id, timeout=options.metadata_timeout)
        if cache is not None:
            cache.put_metadata(blob_id, metadata)
    total = metadata.unencoded_length
    end = min(total, start + length)
    if start >= end:
        return b""
    row_bytes = metadata.config.ks * metadata.symbol_size
    rows = list(range(start // row_bytes, (end - 1) // row_bytes + 1))
    bad_peers: set[PeerId] = set()
    got = await fetch_slivers(
        light,
        blob_id,
        metadata,
        SliverType.PRIMARY,
        indices=rows,
        needed=len(rows),
        options=options,
        bad_peers=bad_peers,
    )
    if len(got) < len(rows):
        blob = await read_blob(light, blob_id, options=options, cache=cache)
        return bytes(blob[start:end])
    joined = b"".join(got[row] for row in rows)
    offset = rows[0] * row_bytes
    return joined[start - offset : end - offset]
