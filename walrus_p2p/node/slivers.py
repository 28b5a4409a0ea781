"""The data plane of a storage peer: metadata, slivers, confirmations, symbols, status.

docs/design.md §6 and §11.1. :class:`SliverService` answers the storage protocol's data-plane
requests. Every request is checked (shard ownership in the committee in force, hashes against the
metadata, the blob's records) before anything is written, and every refusal goes back to the
client as a :class:`~walrus_p2p.node.protocol.ProtocolRefusal` with a stable reason code. CPU-heavy
work (sliver verification, recovery symbols) and disk I/O run in worker threads so the event loop
keeps answering while a large sliver is hashed or fsynced.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import trio

from walrus_p2p.core import records, wire
from walrus_p2p.core.blob_messages import (
    SMALL_SLIVER_SIZE,
    GetSliversReply,
    GetSliversRequest,
    PostBlobRecordsRequest,
    SliverItem,
    StoreBlobReply,
    StoreBlobRequest,
)
from walrus_p2p.core.metadata import (
    Metadata,
    make_recovery_symbol,
    verify_metadata,
    verify_sliver,
)
from walrus_p2p.errors import NotFoundError, VerificationError
from walrus_p2p.node.context import PeerContext
from walrus_p2p.node.protocol import (
    ProtocolRefusal,
    owned_pairs,
    sliver_of_pair,
    type_of,
)
from walrus_p2p.node.router import Router
from walrus_p2p.types import BlobId, PeerId, SliverKind, short_id

logger = logging.getLogger(__name__)

DECODED_METADATA_KEPT = 64
"""Decoded metadata of the last blobs a peer handled: a small blob's upload reads its metadata
once per sliver (10 at n = 100 and 20 peers), and decoding the 2n hashes is the costly part."""


class SliverService:
    """The data-plane request handlers of one storage peer."""

    def __init__(self, ctx: PeerContext) -> None:
        self.ctx = ctx
        self._decoded: OrderedDict[BlobId, tuple[bytes, Metadata]] = OrderedDict()

    def register(self, router: Router) -> None:
        self.router = router
        router.add(wire.StoreMetadataRequest, self.store_metadata)
        router.add(wire.StoreSliverRequest, self.store_sliver)
        router.add(wire.GetMetadataRequest, self.get_metadata)
        router.add(wire.GetSliverRequest, self.get_sliver)
        router.add(wire.GetConfirmationRequest, self.get_confirmation)
        router.add(wire.GetRecoverySymbolRequest, self.get_recovery_symbol)
        router.add(wire.GetRecoverySymbolsRequest, self.get_recovery_symbols)
        router.add(wire.BlobStatusRequest, self.blob_status)
        router.add(StoreBlobRequest, self.store_blob)
        router.add(GetSliversRequest, self.get_slivers)

    async def _load_metadata(self, blob_id: BlobId) -> Metadata:
        """The stored metadata (``NotFoundError`` if there is none). It is read from the store
        every time; only its decoding is reused, while the stored bytes are the same."""
        raw = await trio.to_thread.run_sync(self.ctx.store.get_metadata, blob_id)
        kept = self._decoded.get(blob_id)
        if kept is not None and kept[0] == raw:
            self._decoded.move_to_end(blob_id)
            return kept[1]
        metadata = wire.decode(raw, wire.GetMetadataReply).metadata
        self._decoded[blob_id] = (bytes(raw), metadata)
        while len(self._decoded) > DECODED_METADATA_KEPT:
            self._decoded.popitem(last=False)
        return metadata

    # -- handlers -----------------------------------------------------------------------

    async def store_metadata(
        self, request: wire.StoreMetadataRequest, remote: PeerId
    ) -> wire.StoreMetadataReply:
        metadata = request.metadata
        blob_id = BlobId(request.blob_id)
        if metadata.shards != self.ctx.genesis.n_shards:
            raise ProtocolRefusal(
                "WRONG_SHARD_COUNT",
                f"metadata is for {metadata.shards} shards, not {self.ctx.genesis.n_shards}",
            )
        if metadata.unencoded_length > self.ctx.genesis.limits.max_blob_size:
            raise ProtocolRefusal(
                "BLOB_TOO_LARGE",
                f"blob of {metadata.unencoded_length} bytes exceeds the network limit "
                f"{self.ctx.genesis.limits.max_blob_size}",
            )
        try:
            verify_metadata(metadata, blob_id)
        except VerificationError as error:
            raise ProtocolRefusal("METADATA_MISMATCH", str(error)) from error
        if not owned_pairs(self.ctx.committee, self.ctx.peer_id, blob_id):
            raise ProtocolRefusal("SHARD_NOT_OWNED", "this peer holds no shard in this epoch")
        state = await self.ctx.records.blob_state(blob_id)
        if state.is_invalid:
            raise ProtocolRefusal("BLOB_INVALID", "the blob was marked invalid")
        if not state.is_stored_in(self.ctx.epoch):
            unpaid = self.ctx.records.payment_refusal(blob_id)
            if unpaid is not None and not state.registrations:
                # Its register record was refused here: PAYMENT_REQUIRED or PAYMENT_MISMATCH.
                raise ProtocolRefusal(unpaid.reason, unpaid.message)
            raise ProtocolRefusal(
                "BLOB_NOT_REGISTERED", "send a valid register record for this blob first"
            )
        sizes = {registration.size for registration in state.live_registrations.values()}
        if metadata.unencoded_length not in sizes:
            raise ProtocolRefusal(
                "SIZE_MISMATCH", "the metadata's length differs from the registered size"
            )
        if not await trio.to_thread.run_sync(self.ctx.store.has_metadata, blob_id):
            encoded = wire.encode(wire.GetMetadataReply(metadata=metadata), limits=self.ctx.limits)
            await trio.to_thread.run_sync(self.ctx.store.put_metadata, blob_id, encoded)
            logger.info("metadata stored blob=%s peer=%s", short_id(blob_id), remote[:12])
        return wire.StoreMetadataReply()

    async def store_sliver(
        self, request: wire.StoreSliverRequest, remote: PeerId
    ) -> wire.StoreSliverReply:
        blob_id = BlobId(request.blob_id)
        if request.pair_index not in owned_pairs(self.ctx.committee, self.ctx.peer_id, blob_id):
            raise ProtocolRefusal(
                "SHARD_NOT_OWNED",
                f"sliver pair {request.pair_index} of this blob is not stored by this peer",
            )
        try:
            metadata = await self._load_metadata(blob_id)
        except NotFoundError as error:
            raise ProtocolRefusal("METADATA_MISSING", "store the metadata first") from error
        state = await self.ctx.records.blob_state(blob_id)
        if state.is_invalid:
            raise ProtocolRefusal("BLOB_INVALID", "the blob was marked invalid")
        index = sliver_of_pair(request.sliver_kind, request.pair_index, metadata.shards)
        sliver_type = type_of(request.sliver_kind)
        try:
            await trio.to_thread.run_sync(verify_sliver, metadata, sliver_type, index, request.data)
        except VerificationError as error:
            raise ProtocolRefusal("SLIVER_MISMATCH", str(error)) from error
        await trio.to_thread.run_sync(
            self.ctx.store.put_sliver,
            blob_id,
            request.pair_index,
            request.sliver_kind,
            request.data,
        )
        self.ctx.metrics.slivers_stored.inc()
        self.ctx.metrics.bytes_stored.inc(len(request.data))
        return wire.StoreSliverReply()

    async def store_blob(self, request: StoreBlobRequest, remote: PeerId) -> StoreBlobReply:
        """A small blob in one request (docs/protocol.md, "Storing a small blob in one
        request"): the records, the metadata, each sliver and the confirmation, checked and
        handled exactly as the separate requests are, in that order; the first refusal ends
        it (what was stored before it stays, as after separate requests)."""
        blob_id = BlobId(request.blob_id)
        # Through the router's handlers of the separate requests (the ones in force: fault
        # injection and guards replace them there).
        handler = self.router.handler
        if request.records:
            await handler(PostBlobRecordsRequest)(
                PostBlobRecordsRequest(blob_id=request.blob_id, records=request.records), remote
            )
        await handler(wire.StoreMetadataRequest)(
            wire.StoreMetadataRequest(blob_id=request.blob_id, metadata=request.metadata), remote
        )
        for item in request.slivers:
            await handler(wire.StoreSliverRequest)(
                wire.StoreSliverRequest(
                    blob_id=request.blob_id,
                    pair_index=item.pair_index,
                    sliver_kind=item.sliver_kind,
                    data=item.data,
                ),
                remote,
            )
        reply = await handler(wire.GetConfirmationRequest)(
            wire.GetConfirmationRequest(
                blob_id=request.blob_id, epoch=request.epoch, permanent=request.permanent
            ),
            remote,
        )
        logger.debug("small blob stored in one request blob=%s", short_id(blob_id))
        return StoreBlobReply(confirmation=reply.confirmation)

    async def get_slivers(self, request: GetSliversRequest, remote: PeerId) -> GetSliversReply:
        """Several slivers of a small blob in one request (docs/protocol.md, "Reading a small
        blob"), each through the router's ``GetSliverRequest`` handler (so its checks and
        faults apply). Refused before any sliver is read if the blob's slivers are larger than
        ``SMALL_SLIVER_SIZE``: a request naming 64 pairs must not make this peer read 64 large
        slivers."""
        blob_id = BlobId(request.blob_id)
        try:
            metadata = await self._load_metadata(blob_id)
        except NotFoundError as error:
            raise ProtocolRefusal("SLIVER_NOT_FOUND", "no metadata for this blob") from error
        sliver_type = type_of(request.sliver_kind)
        length = metadata.config.sliver_length(sliver_type, metadata.unencoded_length)
        if length > SMALL_SLIVER_SIZE:
            raise ProtocolRefusal(
                "SLIVERS_TOO_LARGE",
                f"slivers of {length} bytes: ask for them one by one (GetSliverRequest)",
            )
        handler = self.router.handler(wire.GetSliverRequest)
        items: list[SliverItem] = []
        for pair in request.pair_indices:
            try:
                reply = await handler(
                    wire.GetSliverRequest(
                        blob_id=request.blob_id, pair_index=pair, sliver_kind=request.sliver_kind
                    ),
                    remote,
                )
            except ProtocolRefusal as refusal:
                if refusal.reason == "SLIVER_NOT_FOUND":
                    continue
                raise
            items.append(
                SliverItem(pair_index=pair, sliver_kind=request.sliver_kind, data=reply.data)
            )
        if not items:
            raise ProtocolRefusal("SLIVER_NOT_FOUND", "none of these slivers is held here")
        return GetSliversReply(slivers=tuple(items))

    async def get_metadata(
        self, request: wire.GetMetadataRequest, remote: PeerId
    ) -> wire.GetMetadataReply:
        blob_id = BlobId(request.blob_id)
        try:
            metadata = await self._load_metadata(blob_id)
        except NotFoundError as error:
            raise ProtocolRefusal("BLOB_UNKNOWN", "no metadata for this blob") from error
        return wire.GetMetadataReply(metadata=metadata)

    async def get_sliver(
        self, request: wire.GetSliverRequest, remote: PeerId
    ) -> wire.GetSliverReply:
        blob_id = BlobId(request.blob_id)
        state = await self.ctx.records.blob_state(blob_id)
        if state.is_invalid:
            raise ProtocolRefusal("BLOB_INVALID", "the blob was marked invalid")
        try:
            data = await trio.to_thread.run_sync(
                self.ctx.store.get_sliver, blob_id, request.pair_index, request.sliver_kind
            )
        except NotFoundError as error:
            raise ProtocolRefusal("SLIVER_NOT_FOUND", str(error)) from error
        return wire.GetSliverReply(data=data)

    def _required_slivers(self, blob_id: BlobId) -> list[tuple[int, SliverKind]]:
        return [
            (pair, kind)
            for pair in owned_pairs(self.ctx.committee, self.ctx.peer_id, blob_id)
            for kind in (SliverKind.PRIMARY, SliverKind.SECONDARY)
        ]

    async def get_confirmation(
        self, request: wire.GetConfirmationRequest, remote: PeerId
    ) -> wire.GetConfirmationReply:
        blob_id = BlobId(request.blob_id)
        if request.epoch != self.ctx.epoch:
            raise ProtocolRefusal(
                "WRONG_EPOCH", f"confirmations are signed for epoch {self.ctx.epoch} only"
            )
        required = self._required_slivers(blob_id)
        if not required:
            raise ProtocolRefusal("SHARD_NOT_OWNED", "this peer holds no shard in this epoch")
        durable = await trio.to_thread.run_sync(self.ctx.store.is_durable, blob_id, required)
        if not durable:
            raise ProtocolRefusal(
                "SLIVERS_MISSING", "not every sliver of this peer's shards is stored yet"
            )
        state = await self.ctx.records.blob_state(blob_id)
        if request.permanent and not state.is_permanent:
            raise ProtocolRefusal("NOT_PERMANENT", "no permanent registration for this blob")
        confirmation = records.sign_confirmation(
            self.ctx.identity,
            network_id=self.ctx.genesis.network_id,
            epoch=self.ctx.epoch,
            blob_id=blob_id,
            permanent=request.permanent,
        )
        return wire.GetConfirmationReply(confirmation=confirmation)

    async def get_recovery_symbol(
        self, request: wire.GetRecoverySymbolRequest, remote: PeerId
    ) -> wire.GetRecoverySymbolReply:
        blob_id = BlobId(request.blob_id)
        try:
            metadata = await self._load_metadata(blob_id)
            sliver = await trio.to_thread.run_sync(
                self.ctx.store.get_sliver, blob_id, request.source_pair_index, request.source_kind
            )
        except NotFoundError as error:
            raise ProtocolRefusal("SLIVER_NOT_FOUND", str(error)) from error
        if request.target_index >= metadata.shards:
            raise ProtocolRefusal("BAD_REQUEST", "target index out of range")
        source_type = type_of(request.source_kind)
        source_index = sliver_of_pair(
            request.source_kind, request.source_pair_index, metadata.shards
        )
        symbol = await trio.to_thread.run_sync(
            make_recovery_symbol, metadata, source_type, source_index, sliver, request.target_index
        )
        return wire.GetRecoverySymbolReply(symbol=symbol.symbol, proof=tuple(symbol.proof))

    async def get_recovery_symbols(
        self, request: wire.GetRecoverySymbolsRequest, remote: PeerId
    ) -> wire.GetRecoverySymbolsReply:
        """Several symbols for one target in one reply; pairs not held here are left out."""
        blob_id = BlobId(request.blob_id)
        try:
            metadata = await self._load_metadata(blob_id)
        except NotFoundError as error:
            raise ProtocolRefusal("SLIVER_NOT_FOUND", str(error)) from error
        if request.target_index >= metadata.shards:
            raise ProtocolRefusal("BAD_REQUEST", "target index out of range")
        if any(pair >= metadata.shards for pair in request.source_pair_indices):
            raise ProtocolRefusal("BAD_REQUEST", "source pair index out of range")
        source_type = type_of(request.source_kind)

        def build() -> list[wire.RecoverySymbolItem]:
            # One thread hop for the whole batch: read each sliver, cut its symbol.
            items = []
            for pair in request.source_pair_indices:
                index = sliver_of_pair(request.source_kind, pair, metadata.shards)
                try:
                    sliver = self.ctx.store.get_sliver(blob_id, pair, request.source_kind)
                    symbol = make_recovery_symbol(
                        metadata, source_type, index, sliver, request.target_index
                    )
                except (NotFoundError, VerificationError):
                    # Not held, or held damaged (the scrub rebuilds it): not served.
                    continue
                items.append(
                    wire.RecoverySymbolItem(
                        source_pair_index=pair, symbol=symbol.symbol, proof=tuple(symbol.proof)
                    )
                )
            return items

        items = await trio.to_thread.run_sync(build)
        if not items:
            raise ProtocolRefusal(
                "SLIVER_NOT_FOUND", f"none of the asked slivers of blob {short_id(blob_id)}"
            )
        return wire.GetRecoverySymbolsReply(symbols=tuple(items))

    async def blob_status(
        self, request: wire.BlobStatusRequest, remote: PeerId
    ) -> wire.BlobStatusReply:
        blob_id = BlobId(request.blob_id)
        state = await self.ctx.records.blob_state(blob_id)
        has_metadata = await trio.to_thread.run_sync(self.ctx.store.has_metadata, blob_id)
        stored: list[int] = []
        if has_metadata:
            keys = await trio.to_thread.run_sync(self.ctx.store.list_slivers, blob_id)
            kinds: dict[int, set[SliverKind]] = {}
            for key in keys:
                kinds.setdefault(key.pair_index, set()).add(key.kind)
            stored = sorted(pair for pair, held in kinds.items() if len(held) == 2)
        return wire.BlobStatusReply(
            known=bool(state.registrations),
            invalid=state.is_invalid,
            has_metadata=has_metadata,
            stored_pair_indices=tuple(stored),
            certified_epoch=state.certified_epoch,
            end_epoch=state.end_epoch,
        )
