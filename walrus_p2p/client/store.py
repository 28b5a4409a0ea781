"""The store flow (docs/design.md §6.1): encode, pay, register, upload to every shard, certify.

On a network with an economy the owner's account pays before the register record goes out: it
buys the storage and attaches the blob (:class:`~walrus_p2p.client.payment.Payer`; storage peers
refuse an unpaid register, docs/economics.md, "Paid storage"), and the result's ``cost`` is what
was paid, in FROST.

Memory: the blob is encoded once (the slivers are views into the encoder's buffers); each upload
in flight adds one wire-encoded copy of one sliver, and at most ``max_parallel_slivers`` slivers
are in flight at a time. So the peak is about the encoded blob plus a bounded number of slivers,
whatever the number of peers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import trio

from walrus_p2p.client.committee import refresh_committee
from walrus_p2p.client.network import LightPeer
from walrus_p2p.client.payment import Payer, Payment
from walrus_p2p.client.records import fetch_blob_state, push_records
from walrus_p2p.client.results import AlreadyCertified, StoredBlob, StoreOutcome
from walrus_p2p.core import records, wire
from walrus_p2p.core.blob_messages import (
    MAX_SLIVERS_PER_STORE,
    SMALL_SLIVER_SIZE,
    PostBlobRecordsReply,
    PostBlobRecordsRequest,
    SliverItem,
    StoreBlobReply,
    StoreBlobRequest,
)
from walrus_p2p.core.committee import Committee, is_quorum
from walrus_p2p.core.encoding import EncodingConfig, SliverType, shard_to_pair
from walrus_p2p.core.identity import Identity, PublicKey
from walrus_p2p.core.metadata import ENCODING_RED_STUFF, EncodedBlobWithMetadata, encode_blob
from walrus_p2p.errors import QuorumError, RemoteError, VerificationError, WalrusError
from walrus_p2p.types import Epoch, PeerId, SliverKind, short_id

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int], None]
"""Called with the number of bytes just acknowledged by a storage peer."""


@dataclass(frozen=True, slots=True)
class StoreOptions:
    request_timeout: float = 60.0
    max_parallel_slivers: int = 16
    """Sliver uploads in flight across all peers: bounds memory to this many sliver copies."""
    tail_seconds: float = 2.0
    """After quorum, keep sending to the remaining peers this long (so more shards hold it).
    With a background nursery (a long-running :class:`~walrus_p2p.client.service.WalrusClient`)
    the store returns at certification and the tail runs in the background; without one the
    store waits for it."""
    wait_all: bool = False
    """Return only once the upload to every member has ended (each confirmed, or failed for
    good), not at the quorum's certificate (``walrus-peer store --wait-all``; docs/cli.md)."""
    peer_attempts: int = 5
    """Uploads to one peer, while the quorum is not reached: a peer that restarts, or times out
    on a busy machine, gets its slivers on a later attempt (docs/protocol.md, "Store")."""
    retry_delay: float = 2.0
    """Seconds before the second attempt at a peer, doubled for each further one up to
    ``max_retry_delay`` (jittered): with the defaults a peer is tried at about 0, 2, 6, 14 and
    22 s, long enough for a killed peer to be restarted and serve again."""
    max_retry_delay: float = 8.0
    """The longest wait between two attempts at one peer."""
    epoch_attempts: int = 3
    """Whole uploads: when the epoch changes before the quorum (peers refuse confirmations for
    the old epoch), the store starts over with the new committee, at most twice (a network
    catching up on late epochs can move twice during one long store)."""


RETRYABLE_REASONS = frozenset(
    {
        "PEER_UNREACHABLE",
        "TIMEOUT",
        "RATE_LIMITED",
        "BUSY",
        "SLIVERS_MISSING",
        "NETWORK_ERROR",
        "STORAGE_ERROR",
    }
)
"""Upload failures worth another attempt at the same peer: it may be back or less busy. A
refusal for a reason that will not change (a bad request, a wrong epoch) is final."""


class EpochMovedError(QuorumError):
    """Peers refused confirmations because they moved to a later epoch than the store's."""


class BlobTooLargeError(WalrusError):
    reason = "BLOB_TOO_LARGE"


@dataclass(slots=True)
class _Paid:
    """The payment of one store call, kept across its attempts (a store that starts over in a
    new epoch registers on the storage it paid for, which still covers the new epoch)."""

    payment: Payment | None = None
    cost: int = 0
    phases: list[tuple[str, float]] = field(default_factory=list)
    """Seconds per step of the store call, all attempts (``StoredBlob.phases``)."""


def verify_confirmation(
    light: LightPeer,
    peer_id: PeerId,
    signed: wire.SignedStorageConfirmation,
    *,
    blob_id: bytes,
    permanent: bool,
    committee: Committee | None = None,
) -> None:
    """A confirmation must be by the committee member we asked, for exactly this blob, in the
    epoch of ``committee`` (the light peer's current one by default)."""
    committee = committee if committee is not None else light.committee
    body = signed.confirmation
    member_key = committee.member(peer_id).public_key
    if (
        body.network_id != light.genesis.network_id
        or body.epoch != committee.epoch
        or body.blob_id != blob_id
        or body.permanent != permanent
        or body.public_key != member_key
    ):
        raise VerificationError(f"confirmation from peer={peer_id[:12]} is for something else")
    PublicKey(member_key).verify(
        records.CONFIRMATION_CONTEXT, wire.signing_bytes(body), signed.signature
    )


def _pairs_by_peer(committee: Committee, blob_id: bytes) -> dict[PeerId, list[int]]:
    n_shards = committee.n_shards
    by_peer: dict[PeerId, list[int]] = {}
    for shard in range(n_shards):
        peer = committee.peer_of(shard)
        by_peer.setdefault(peer, []).append(shard_to_pair(blob_id, shard, n_shards))
    return by_peer


async def store_blob(
    light: LightPeer,
    owner: Identity,
    data: bytes | bytearray | memoryview,
    *,
    epochs: int,
    permanent: bool,
    options: StoreOptions | None = None,
    progress: ProgressCallback | None = None,
    background: trio.Nursery | None = None,
    payer: Payer | None = None,
    storage: bytes | None = None,
) -> StoreOutcome:
    """Store ``data`` for ``epochs`` epochs from now; see the module docstring for the flow.

    With ``background``, uploads to the peers that had not confirmed when the quorum did go on
    there for ``tail_seconds`` more, after this returns (the blob is certified by then; peers
    the tail misses rebuild their slivers by blob sync). On a network with an economy,
    ``payer`` (one per account and process: it orders the account's orders) pays from
    ``owner``'s account; without one, a payer is made for this call. ``storage`` names a free
    storage resource of that account to attach the blob to instead of buying storage
    (:meth:`Payer.pay_with_resource`)."""
    options = options or StoreOptions()
    genesis = light.genesis
    if genesis.economy is None:
        if storage is not None:
            raise WalrusError(
                "this network has no economy: there are no storage resources", reason="BAD_REQUEST"
            )
        payer = None
    elif payer is None:
        payer = Payer(light, owner, background=background)
    elif payer.account != owner.public_key.raw:
        raise ValueError("the payer's account must be the blob owner's key")
    size = len(memoryview(data))
    if size > genesis.limits.max_blob_size:
        raise BlobTooLargeError(
            f"blob of {size} bytes exceeds the network limit of {genesis.limits.max_blob_size}"
        )
    if not 1 <= epochs <= genesis.limits.max_epochs_ahead:
        raise WalrusError(
            f"epochs must be between 1 and {genesis.limits.max_epochs_ahead}, got {epochs}",
            reason="BAD_REQUEST",
        )
    config = EncodingConfig.for_shards(genesis.n_shards)
    started = time.perf_counter()
    encoded: EncodedBlobWithMetadata = await trio.to_thread.run_sync(encode_blob, data, config)
    blob_id = encoded.blob_id
    paid = _Paid()
    paid.phases.append(("encode", time.perf_counter() - started))
    for attempt in range(1, max(1, options.epoch_attempts) + 1):
        before = light.epoch  # the epoch of the committee snapshot _store_in_epoch takes
        try:
            return await _store_in_epoch(
                light,
                owner,
                encoded,
                size=size,
                epochs=epochs,
                permanent=permanent,
                options=options,
                progress=progress,
                background=background,
                payer=payer,
                paid=paid,
                storage=storage,
            )
        except EpochMovedError as error:
            await light.refresh_if_stale(min_interval=0.0)
            if attempt >= options.epoch_attempts or light.epoch <= before:
                raise
            logger.info(
                "store restarts in the new epoch blob=%s epoch=%d->%d detail=%s",
                short_id(blob_id),
                before,
                light.epoch,
                error,
            )
    raise AssertionError("unreachable: the last attempt returns or raises")


async def _store_in_epoch(
    light: LightPeer,
    owner: Identity,
    encoded: EncodedBlobWithMetadata,
    *,
    size: int,
    epochs: int,
    permanent: bool,
    options: StoreOptions,
    progress: ProgressCallback | None,
    background: trio.Nursery | None,
    payer: Payer | None = None,
    paid: _Paid | None = None,
    storage: bytes | None = None,
) -> StoreOutcome:
    """One store against the committee the light peer holds now: the whole flow works with that
    snapshot, so a refresh of the light peer in the middle (the gateway serves other calls
    meanwhile) does not mix two epochs."""
    genesis = light.genesis
    config = EncodingConfig.for_shards(genesis.n_shards)
    blob_id = encoded.blob_id
    committee = light.committee
    current = int(committee.epoch)
    end_epoch = current + epochs

    phases = paid.phases if paid is not None else []
    started = time.perf_counter()
    state = await fetch_blob_state(light, blob_id)
    phases.append(("state", time.perf_counter() - started))
    end = state.end_epoch if state is not None else None
    if (
        state is not None
        and not state.is_invalid
        and state.certificate is not None
        and end is not None
        and end >= end_epoch
        and (state.is_permanent or not permanent)
    ):
        logger.info("blob already certified blob=%s end_epoch=%s", short_id(blob_id), end)
        return AlreadyCertified(blob_id=blob_id, end_epoch=end)

    cost = config.encoded_length(size) * epochs  # no economy: storage units, as before
    if payer is not None:
        paid = paid if paid is not None else _Paid()
        if paid.payment is None or paid.payment.end_epoch <= current:
            started = time.perf_counter()
            if storage is None:
                paid.payment = await payer.pay_for_blob(
                    blob_id=blob_id,
                    size=size,
                    deletable=not permanent,
                    start_epoch=current,
                    end_epoch=end_epoch,
                )
            else:
                paid.payment = await payer.pay_with_resource(
                    resource_id=storage,
                    blob_id=blob_id,
                    size=size,
                    deletable=not permanent,
                    start_epoch=current,
                    end_epoch=end_epoch,
                )
            paid.cost += paid.payment.cost
            phases.append(("pay", time.perf_counter() - started))
        end_epoch = paid.payment.end_epoch
        cost = paid.cost

    register = records.sign_register(
        owner,
        network_id=genesis.network_id,
        blob_id=blob_id,
        size=size,
        start_epoch=current,
        end_epoch=end_epoch,
        deletable=not permanent,
    )
    started = time.perf_counter()
    confirmations = await _upload(
        light,
        committee,
        encoded,
        register,
        permanent=permanent,
        options=options,
        progress=progress,
        background=background,
    )
    phases.append(("upload", time.perf_counter() - started))
    started = time.perf_counter()
    certificate = records.BlobCertificate(
        network_id=genesis.network_id,
        blob_id=blob_id,
        epoch=Epoch(current),
        permanent=permanent,
        confirmations=tuple(records.confirmation_signature(c) for c in confirmations.values()),
    )
    certificate.verify(genesis.network_id, committee)
    delivered = await push_records(light, blob_id, [register, certificate], background=background)
    phases.append(("certify", time.perf_counter() - started))
    logger.info(
        "blob certified blob=%s size=%d confirmations=%d certificate_delivered=%d %s",
        short_id(blob_id),
        size,
        len(confirmations),
        delivered,
        " ".join(f"{name}_ms={seconds * 1000:.0f}" for name, seconds in phases),
    )
    return StoredBlob(
        blob_id=blob_id,
        size=size,
        encoding_type=ENCODING_RED_STUFF,
        certified_epoch=current,
        start_epoch=current,
        end_epoch=end_epoch,
        storage_size=config.encoded_length(size),
        deletable=not permanent,
        cost=cost,
        phases=tuple(phases),
    )


async def _upload(
    light: LightPeer,
    committee: Committee,
    encoded: EncodedBlobWithMetadata,
    register: records.BlobRegister,
    *,
    permanent: bool,
    options: StoreOptions,
    progress: ProgressCallback | None,
    background: trio.Nursery | None = None,
) -> dict[PeerId, wire.SignedStorageConfirmation]:
    """Send records, metadata and slivers to every shard's peer; return the confirmations once
    their signers hold a quorum of shards (plus whatever arrives during the tail, when the tail
    runs here rather than in ``background``)."""
    blob_id = encoded.blob_id
    n_shards = committee.n_shards
    by_peer = _pairs_by_peer(committee, blob_id)
    confirmations: dict[PeerId, wire.SignedStorageConfirmation] = {}
    failures: dict[PeerId, str] = {}
    moved_on: set[PeerId] = set()
    quorum_reached = trio.Event()
    all_done = trio.Event()
    limiter = trio.CapacityLimiter(options.max_parallel_slivers)
    timeout = options.request_timeout
    encoded_register = wire.encode(register)
    returned = trio.Event()
    """Set when the result is handed back: uploads in the background no longer report progress."""
    epoch_check = trio.Lock()
    """One epoch-chain request at a time when peers answer WRONG_EPOCH."""
    no_one_request: set[PeerId] = set()
    """Peers that did not know :class:`StoreBlobRequest` (they get the separate requests)."""

    def confirmed_weight() -> int:
        return committee.shard_weight(confirmations)

    async def send_sliver(peer_id: PeerId, pair: int, kind: SliverKind) -> None:
        if kind is SliverKind.PRIMARY:
            sliver = encoded.encoded.sliver(SliverType.PRIMARY, pair)
        else:
            sliver = encoded.encoded.sliver(SliverType.SECONDARY, n_shards - 1 - pair)
        async with limiter:
            await light.call(
                peer_id,
                # The view goes to wire.encode_parts (in call_message), which writes it from
                # the encoder's buffer: no copy of the sliver is made to send it.
                wire.StoreSliverRequest(
                    blob_id=blob_id, pair_index=pair, sliver_kind=kind, data=cast(bytes, sliver)
                ),
                wire.StoreSliverReply,
                timeout=timeout,
            )
        if progress is not None and not returned.is_set():
            progress(len(sliver))

    def sliver_of(pair: int, kind: SliverKind) -> memoryview:
        if kind is SliverKind.PRIMARY:
            return encoded.encoded.sliver(SliverType.PRIMARY, pair)
        return encoded.encoded.sliver(SliverType.SECONDARY, n_shards - 1 - pair)

    def one_request(peer_id: PeerId, pairs: list[int]) -> StoreBlobRequest | None:
        """Everything for ``peer_id`` in one request, if its slivers are small enough
        (docs/protocol.md, "Storing a small blob in one request")."""
        if peer_id in no_one_request or 2 * len(pairs) > MAX_SLIVERS_PER_STORE:
            return None
        items = []
        for pair in pairs:
            for kind in (SliverKind.PRIMARY, SliverKind.SECONDARY):
                sliver = sliver_of(pair, kind)
                if len(sliver) > SMALL_SLIVER_SIZE:
                    return None
                items.append(SliverItem(pair_index=pair, sliver_kind=kind, data=bytes(sliver)))
        return StoreBlobRequest(
            blob_id=blob_id,
            records=(encoded_register,),
            metadata=encoded.metadata,
            slivers=tuple(items),
            epoch=committee.epoch,
            permanent=permanent,
        )

    async def upload_in_one(peer_id: PeerId, request: StoreBlobRequest) -> bool:
        """Send the one request; False if the peer does not know it (then the separate
        requests go)."""
        try:
            async with limiter:
                reply = await light.call(peer_id, request, StoreBlobReply, timeout=timeout)
        except RemoteError as error:
            if error.reason == "WIRE_MALFORMED":
                no_one_request.add(peer_id)  # a peer of an older release
                return False
            raise
        accept(peer_id, reply.confirmation)
        if progress is not None and not returned.is_set():
            progress(sum(len(item.data) for item in request.slivers))
        return True

    def accept(peer_id: PeerId, confirmation: wire.SignedStorageConfirmation) -> None:
        """Check a member's confirmation and count it (VerificationError if it is wrong)."""
        verify_confirmation(
            light,
            peer_id,
            confirmation,
            blob_id=blob_id,
            permanent=permanent,
            committee=committee,
        )
        confirmations[peer_id] = confirmation
        if is_quorum(confirmed_weight(), n_shards):
            quorum_reached.set()

    async def upload_to(peer_id: PeerId, pairs: list[int]) -> None:
        request = one_request(peer_id, pairs)
        if request is not None and await upload_in_one(peer_id, request):
            return
        await light.call(
            peer_id,
            PostBlobRecordsRequest(blob_id=blob_id, records=(encoded_register,)),
            PostBlobRecordsReply,
            timeout=timeout,
        )
        await light.call(
            peer_id,
            wire.StoreMetadataRequest(blob_id=blob_id, metadata=encoded.metadata),
            wire.StoreMetadataReply,
            timeout=timeout,
        )
        try:
            async with trio.open_nursery() as slivers:
                for pair in pairs:
                    for kind in (SliverKind.PRIMARY, SliverKind.SECONDARY):
                        slivers.start_soon(send_sliver, peer_id, pair, kind)
        except BaseExceptionGroup as group:
            # Strict exception groups: one failed sliver arrives wrapped. Hand `guarded` the
            # first WalrusError so that this peer counts as failed and the store goes on with
            # the others; anything else (cancellation, a bug) propagates unchanged.
            matched, rest = group.split(WalrusError)
            if matched is None or rest is not None:
                raise
            first: BaseException = matched
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        reply = await light.call(
            peer_id,
            wire.GetConfirmationRequest(
                blob_id=blob_id, epoch=committee.epoch, permanent=permanent
            ),
            wire.GetConfirmationReply,
            timeout=timeout,
        )
        accept(peer_id, reply.confirmation)

    async def guarded(peer_id: PeerId, pairs: list[int]) -> None:
        attempts = max(1, options.peer_attempts)
        for attempt in range(1, attempts + 1):
            try:
                await upload_to(peer_id, pairs)
            except WalrusError as error:
                failures[peer_id] = f"{error.reason}: {error}"
                retryable = error.reason in RETRYABLE_REASONS
                if error.reason == "WRONG_EPOCH":
                    # Either the network moved on (then the store starts over in the new
                    # epoch) or this peer is behind (restarted, still catching up: it will
                    # confirm for the store's epoch soon, so it is tried again). The peer that
                    # said so is asked for the epoch chain: if it is ahead, it can prove it.
                    async with epoch_check:
                        if light.epoch <= committee.epoch:
                            with contextlib.suppress(WalrusError):
                                await refresh_committee(
                                    light, sources=[peer_id], timeout=5.0, total_timeout=5.0
                                )
                    if light.epoch > committee.epoch:
                        moved_on.add(peer_id)
                    else:
                        retryable = True
                logger.info(
                    "upload to peer failed blob=%s peer=%s attempt=%d reason=%s detail=%s",
                    short_id(blob_id),
                    peer_id[:12],
                    attempt,
                    error.reason,
                    error,
                )
                if attempt == attempts or not retryable:
                    return
                # Another try only while the quorum is still missing, after a jittered delay.
                with trio.move_on_after(
                    min(options.max_retry_delay, options.retry_delay * 2.0 ** (attempt - 1))
                    * random.uniform(0.75, 1.25)
                ):
                    await quorum_reached.wait()
                if quorum_reached.is_set():
                    return
                if light.epoch > committee.epoch:
                    # Learnt meanwhile (another peer's answer): the epoch moved on.
                    moved_on.add(peer_id)
                    return
            else:
                failures.pop(peer_id, None)
                return

    uploads_scope = trio.CancelScope()

    async def run_all() -> None:
        with uploads_scope:
            async with trio.open_nursery() as uploads:
                for peer_id, pairs in by_peer.items():
                    uploads.start_soon(guarded, peer_id, pairs)
        all_done.set()

    async def wait_quorum_or_done() -> None:
        async with trio.open_nursery() as waiter:

            async def wait_quorum() -> None:
                await quorum_reached.wait()
                waiter.cancel_scope.cancel()

            async def wait_done() -> None:
                await all_done.wait()
                waiter.cancel_scope.cancel()

            waiter.start_soon(wait_quorum)
            waiter.start_soon(wait_done)

    async def tail() -> None:
        with trio.move_on_after(options.tail_seconds):
            await all_done.wait()
        uploads_scope.cancel()

    if background is None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_all)
            await wait_quorum_or_done()
            if quorum_reached.is_set() and not all_done.is_set():
                await (all_done.wait() if options.wait_all else tail())
            nursery.cancel_scope.cancel()
    else:
        background.start_soon(run_all)
        try:
            await wait_quorum_or_done()
            if options.wait_all and quorum_reached.is_set():
                await all_done.wait()
        except BaseException:
            uploads_scope.cancel()
            raise
        if quorum_reached.is_set() and not all_done.is_set():
            background.start_soon(tail)
        else:
            uploads_scope.cancel()

    result = dict(confirmations)  # confirmations arriving later (background tail) are not used
    returned.set()
    weight = committee.shard_weight(result)
    if not is_quorum(weight, n_shards):
        needed = math.ceil((2 * n_shards + 1) / 3)
        detail = "; ".join(f"{peer[:12]}: {why}" for peer, why in sorted(failures.items())[:5])
        error_type = EpochMovedError if moved_on else QuorumError
        raise error_type(
            f"only {weight} of {n_shards} shards confirmed blob {short_id(blob_id)}, "
            f"{needed} needed ({detail})"
        )
    return result
