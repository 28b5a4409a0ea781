"""The storage peer: the sliver protocols served over libp2p, on top of the durable store.

A :class:`StoragePeerService` owns one libp2p host, its DHT (server mode) and gossip, the sliver
store and the metrics endpoint. Requests arrive on one protocol id per network
(``/walrus-p2p/<network>/storage/1.0.0``), one stream per request, one CBOR message each way.
Every request is checked (size caps in the framing and the wire decoder, schema, shard ownership,
hashes against the metadata) before anything is written, and every failure goes back to the
client as an error reply with a stable reason code; the peer keeps serving.

CPU-heavy work (sliver verification, recovery symbols) and disk I/O run in worker threads so the
event loop keeps answering while a large sliver is hashed or fsynced.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import blake3
import trio

from walrus_p2p.core import memory, records, wire
from walrus_p2p.core.blob_messages import (
    MAX_GOSSIP_BATCH_BYTES,
    BlobRecordsBatch,
    GetBlobRecordsReply,
    GetBlobRecordsRequest,
    PostBlobRecordsReply,
    PostBlobRecordsRequest,
    decode_any_records,
    decode_records,
)
from walrus_p2p.core.committee import Committee
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.core.identity import Identity
from walrus_p2p.core.metadata import (
    Metadata,
    make_recovery_symbol,
    verify_metadata,
    verify_sliver,
)
from walrus_p2p.errors import (
    NotFoundError,
    StorageError,
    VerificationError,
    WalrusError,
    WireError,
)
from walrus_p2p.net.discovery import Discovery, DiscoveryConfig, open_discovery
from walrus_p2p.net.gossip import Gossip, GossipMessage, open_gossip
from walrus_p2p.net.host import Host, HostConfig, open_host
from walrus_p2p.net.http import serve_http
from walrus_p2p.net.names import topic
from walrus_p2p.net.rpc import HandlerLimits
from walrus_p2p.node.epochs import EpochOptions, EpochService
from walrus_p2p.node.healing import HealingService
from walrus_p2p.node.healing_options import HealingOptions
from walrus_p2p.node.metrics import PeerMetrics, build_metrics_app
from walrus_p2p.node.protocol import (
    RECORDS_NAMESPACE,
    RECORDS_TOPIC,
    ProtocolRefusal,
    max_frame_for,
    owned_pairs,
    sliver_of_pair,
    storage_protocol_id,
    type_of,
    wire_limits_for,
)
from walrus_p2p.node.ratelimit import RequestRates
from walrus_p2p.storage import BlobState, BlobStore
from walrus_p2p.types import BlobId, Epoch, PeerId, SliverKind, short_id

logger = logging.getLogger(__name__)

GOSSIP_BATCH_SECONDS = 2.0
VERIFIED_RECORDS_KEPT = 4096
"""Digests of verified blob records a peer remembers (32 bytes each)."""

T = TypeVar("T")


@dataclass(slots=True)
class PeerOptions:
    """How to run a storage peer (from its config file and the command line)."""

    listen_addrs: tuple[str, ...]
    announce_addrs: tuple[str, ...] | None = None
    metrics_bind: str | None = None
    request_timeout: float = 120.0
    max_concurrent_requests: int = 32
    bootstrap: tuple[str, ...] = field(default_factory=tuple)
    healing: HealingOptions = field(default_factory=HealingOptions)
    epochs: EpochOptions = field(default_factory=EpochOptions)


RecordListener = Callable[[BlobId, records.BlobState], None]
"""Called (synchronously, must not block) after new records of a blob were merged."""
RequestHandler = Callable[[Any, PeerId], Awaitable[Any]]


class StoragePeerService:
    """One storage peer; ``await run()`` until cancelled."""

    def __init__(
        self,
        *,
        identity: Identity,
        genesis: Genesis,
        store: BlobStore,
        options: PeerOptions,
    ) -> None:
        self.identity = identity
        self.genesis = genesis
        self.store = store
        self.options = options
        self.committee: Committee = genesis.committee
        self.metrics = PeerMetrics()
        self.rates = RequestRates()
        self.limits = wire_limits_for(genesis)
        self.protocol = storage_protocol_id(genesis)
        self.max_frame = max_frame_for(genesis)
        self.host: Host | None = None
        self.discovery: Discovery | None = None
        self.started = trio.Event()
        self._started_monotonic = time.monotonic()
        self._blob_states: dict[BlobId, records.BlobState] = {}
        self._records_lock = trio.Lock()
        self._verified_records: OrderedDict[bytes, None] = OrderedDict()
        """Digests of the encodings of blob records that verified (see :meth:`verify_record`)."""
        self._extra_handlers: dict[type[wire.Message], RequestHandler] = {}
        self.record_listeners: list[RecordListener] = []
        self.migrating_shards: set[int] = set()
        """Shards being pulled from their previous owner now (blob sync leaves them alone)."""
        self.healing: HealingService | None = None
        self.gossip: Gossip | None = None
        self.records_topic = topic(genesis.network_id_text, RECORDS_TOPIC)
        self._announce: list[bytes] = []
        self._announce_ready = trio.Event()
        # Epoch changes and epoch-record sync (node/epochs.py); registers its request handler.
        self.epochs = EpochService(self, options.epochs)

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        return self.identity.peer_id

    @property
    def epoch(self) -> int:
        return int(self.committee.epoch)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        host_config = HostConfig(
            seed=self.identity.seed,
            listen_addrs=self.options.listen_addrs,
            announce_addrs=self.options.announce_addrs,
        )
        async with open_host(host_config) as host, trio.open_nursery() as nursery:
            self.host = host
            frame = max_frame_for(self.genesis)
            host.set_handler(
                storage_protocol_id(self.genesis),
                self.handle_request,
                HandlerLimits(
                    max_request=frame,
                    max_reply=frame,
                    handler_timeout=self.options.request_timeout,
                    max_concurrent=self.options.max_concurrent_requests,
                ),
            )
            healing = HealingService(self, self.options.healing)
            self.healing = healing
            if self.options.metrics_bind:
                app = build_metrics_app(self.metrics, self.health)
                await nursery.start(serve_http, app, self.options.metrics_bind)
            async with (
                open_discovery(host, DiscoveryConfig(mode="server")) as discovery,
                open_gossip(host) as gossip,
            ):
                self.discovery = discovery
                self.gossip = gossip
                gossip.set_validator(self.records_topic, self._validate_records_gossip)
                subscription = await gossip.subscribe(self.records_topic)
                nursery.start_soon(self._join, discovery)
                nursery.start_soon(self._watch_connections)
                nursery.start_soon(healing.run)
                nursery.start_soon(self._read_records_gossip, subscription)
                nursery.start_soon(self._publish_records_gossip)
                if self.options.epochs.enabled:
                    # Catches up with the epoch chain (bounded) before the peer reports started.
                    await nursery.start(self.epochs.run)
                logger.info(
                    "peer serving peer=%s network=%s shards=%d addrs=%s",
                    self.peer_id[:12],
                    self.genesis.network_id_text,
                    len(self.committee.shards_of(self.peer_id)),
                    ",".join(host.listen_addrs),
                )
                self.started.set()
                task_status.started()
                await trio.sleep_forever()

    def _bootstrap_entries(self) -> list[tuple[str, str]]:
        entries: list[tuple[str, str]] = []
        for member in self.committee.members:
            if member.peer_id == self.peer_id:
                continue
            entries.extend((member.peer_id, address) for address in member.addresses[:1])
        for text in (*self.genesis.bootstrap, *self.options.bootstrap):
            marker = text.rfind("/p2p/")
            if marker > 0:
                entries.append((text[marker + 5 :], text[:marker]))
        return entries

    async def _join(self, discovery: Discovery) -> None:
        """Bootstrap the DHT from the genesis addresses; retry with backoff until it works."""
        delay = 1.0
        for attempt in range(1, 1000):
            try:
                reached = await discovery.bootstrap(self._bootstrap_entries())
                logger.info("joined dht reached=%d attempt=%d", len(reached), attempt)
                return
            except WalrusError as error:
                logger.info("dht bootstrap failed attempt=%d error=%s", attempt, error)
            await trio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _watch_connections(self) -> None:
        while True:
            if self.host is not None:
                self.metrics.peers_connected.set(len(self.host.connected_peers()))
            try:
                used = await trio.to_thread.run_sync(self.store.used_bytes)
                self.metrics.storage_used_bytes.set(used)
            except StorageError as error:
                logger.warning("storage accounting failed error=%s", error)
            await trio.sleep(15.0)

    def health(self) -> dict[str, Any]:
        connected = len(self.host.connected_peers()) if self.host is not None else 0
        return {
            "status": "ok" if self.started.is_set() else "starting",
            "peerId": self.peer_id,
            "network": self.genesis.network,
            "networkId": self.genesis.network_id_text,
            "epoch": self.epoch,
            "shards": list(self.committee.shards_of(self.peer_id)),
            "peersConnected": connected,
            "uptimeSeconds": round(time.monotonic() - self._started_monotonic, 1),
            **(self.healing.migration.summary() if self.healing is not None else {}),
        }

    # -- request dispatch ---------------------------------------------------------------

    async def handle_request(self, payload: bytes, remote: PeerId) -> bytes:
        """Decode, dispatch, encode. Errors propagate to the rpc layer, which sends the reason."""
        types = REQUEST_TYPES + tuple(self._extra_handlers)
        try:
            # A sliver to store is checked and written, never kept: it stays a view of the
            # received frame (no 13 MiB copy into fresh memory per sliver), and the frame goes
            # back to framing's pool once the handler is done. Other requests get bytes.
            big = len(payload) >= memory.MIN_HUGE_BYTES
            request = wire.decode(payload, types, limits=self.limits, view_tail=big)
            if big and not isinstance(request, wire.StoreSliverRequest):
                request = wire.decode(payload, types, limits=self.limits)
        except WireError:
            self.metrics.requests.labels(type="malformed", outcome="WIRE_MALFORMED").inc()
            self.metrics.errors.labels(reason="WIRE_MALFORMED").inc()
            raise
        kind = type(request).__name__
        handler = self._handlers().get(type(request)) or self._extra_handlers[type(request)]
        try:
            self.check_rate(remote, kind)
            reply = await handler(request, remote)
        except WalrusError as error:
            self.metrics.requests.labels(type=kind, outcome=error.reason).inc()
            self.metrics.errors.labels(reason=error.reason).inc()
            logger.info(
                "request refused type=%s peer=%s reason=%s detail=%s",
                kind,
                remote[:12],
                error.reason,
                error,
            )
            raise
        self.metrics.requests.labels(type=kind, outcome="ok").inc()
        return wire.encode(reply, limits=self.limits)

    def check_rate(self, remote: PeerId, kind: str) -> None:
        """Refuse a control-plane request beyond the remote's rate (node/ratelimit.py)."""
        if not self.rates.allow(remote, kind):
            raise ProtocolRefusal("RATE_LIMITED", f"too many {kind} from this peer; retry later")

    def add_handler(self, message_type: type[wire.Message], handler: RequestHandler) -> None:
        """Serve one more request type (healing services add theirs before the peer starts)."""
        if message_type in REQUEST_TYPES or message_type in self._extra_handlers:
            raise ValueError(f"{message_type.__name__} already has a handler")
        self._extra_handlers[message_type] = handler

    def _handlers(self) -> dict[type[wire.Message], Callable[[Any, PeerId], Awaitable[Any]]]:
        return {
            wire.StoreMetadataRequest: self._store_metadata,
            wire.StoreSliverRequest: self._store_sliver,
            wire.GetMetadataRequest: self._get_metadata,
            wire.GetSliverRequest: self._get_sliver,
            wire.GetConfirmationRequest: self._get_confirmation,
            wire.GetRecoverySymbolRequest: self._get_recovery_symbol,
            wire.GetRecoverySymbolsRequest: self._get_recovery_symbols,
            wire.BlobStatusRequest: self._blob_status,
            PostBlobRecordsRequest: self._post_blob_records,
            GetBlobRecordsRequest: self._get_blob_records,
        }

    async def _in_thread(self, function: Callable[..., T], *arguments: Any) -> T:
        return await trio.to_thread.run_sync(function, *arguments)

    async def _load_metadata(self, blob_id: BlobId) -> Metadata:
        raw = await self._in_thread(self.store.get_metadata, blob_id)
        message = wire.decode(raw, wire.GetMetadataReply)
        return message.metadata

    # -- handlers -----------------------------------------------------------------------

    async def _store_metadata(
        self, request: wire.StoreMetadataRequest, remote: PeerId
    ) -> wire.StoreMetadataReply:
        metadata = request.metadata
        blob_id = BlobId(request.blob_id)
        if metadata.shards != self.genesis.n_shards:
            raise ProtocolRefusal(
                "WRONG_SHARD_COUNT",
                f"metadata is for {metadata.shards} shards, not {self.genesis.n_shards}",
            )
        if metadata.unencoded_length > self.genesis.limits.max_blob_size:
            raise ProtocolRefusal(
                "BLOB_TOO_LARGE",
                f"blob of {metadata.unencoded_length} bytes exceeds the network limit "
                f"{self.genesis.limits.max_blob_size}",
            )
        try:
            verify_metadata(metadata, blob_id)
        except VerificationError as error:
            raise ProtocolRefusal("METADATA_MISMATCH", str(error)) from error
        if not owned_pairs(self.committee, self.peer_id, blob_id):
            raise ProtocolRefusal("SHARD_NOT_OWNED", "this peer holds no shard in this epoch")
        state = await self.blob_state(blob_id)
        if state.is_invalid:
            raise ProtocolRefusal("BLOB_INVALID", "the blob was marked invalid")
        if not state.is_stored_in(self.epoch):
            raise ProtocolRefusal(
                "BLOB_NOT_REGISTERED", "send a valid register record for this blob first"
            )
        sizes = {registration.size for registration in state.live_registrations.values()}
        if metadata.unencoded_length not in sizes:
            raise ProtocolRefusal(
                "SIZE_MISMATCH", "the metadata's length differs from the registered size"
            )
        if not await self._in_thread(self.store.has_metadata, blob_id):
            encoded = wire.encode(wire.GetMetadataReply(metadata=metadata), limits=self.limits)
            await self._in_thread(self.store.put_metadata, blob_id, encoded)
            logger.info("metadata stored blob=%s peer=%s", short_id(blob_id), remote[:12])
        return wire.StoreMetadataReply()

    async def _store_sliver(
        self, request: wire.StoreSliverRequest, remote: PeerId
    ) -> wire.StoreSliverReply:
        blob_id = BlobId(request.blob_id)
        if request.pair_index not in owned_pairs(self.committee, self.peer_id, blob_id):
            raise ProtocolRefusal(
                "SHARD_NOT_OWNED",
                f"sliver pair {request.pair_index} of this blob is not stored by this peer",
            )
        try:
            metadata = await self._load_metadata(blob_id)
        except NotFoundError as error:
            raise ProtocolRefusal("METADATA_MISSING", "store the metadata first") from error
        state = await self.blob_state(blob_id)
        if state.is_invalid:
            raise ProtocolRefusal("BLOB_INVALID", "the blob was marked invalid")
        index = sliver_of_pair(request.sliver_kind, request.pair_index, metadata.shards)
        sliver_type = type_of(request.sliver_kind)
        try:
            await self._in_thread(verify_sliver, metadata, sliver_type, index, request.data)
        except VerificationError as error:
            raise ProtocolRefusal("SLIVER_MISMATCH", str(error)) from error
        await self._in_thread(
            self.store.put_sliver, blob_id, request.pair_index, request.sliver_kind, request.data
        )
        self.metrics.slivers_stored.inc()
        self.metrics.bytes_stored.inc(len(request.data))
        return wire.StoreSliverReply()

    async def _get_metadata(
        self, request: wire.GetMetadataRequest, remote: PeerId
    ) -> wire.GetMetadataReply:
        blob_id = BlobId(request.blob_id)
        try:
            metadata = await self._load_metadata(blob_id)
        except NotFoundError as error:
            raise ProtocolRefusal("BLOB_UNKNOWN", "no metadata for this blob") from error
        return wire.GetMetadataReply(metadata=metadata)

    async def _get_sliver(
        self, request: wire.GetSliverRequest, remote: PeerId
    ) -> wire.GetSliverReply:
        blob_id = BlobId(request.blob_id)
        state = await self.blob_state(blob_id)
        if state.is_invalid:
            raise ProtocolRefusal("BLOB_INVALID", "the blob was marked invalid")
        try:
            data = await self._in_thread(
                self.store.get_sliver, blob_id, request.pair_index, request.sliver_kind
            )
        except NotFoundError as error:
            raise ProtocolRefusal("SLIVER_NOT_FOUND", str(error)) from error
        return wire.GetSliverReply(data=data)

    def _required_slivers(self, blob_id: BlobId) -> list[tuple[int, SliverKind]]:
        return [
            (pair, kind)
            for pair in owned_pairs(self.committee, self.peer_id, blob_id)
            for kind in (SliverKind.PRIMARY, SliverKind.SECONDARY)
        ]

    async def _get_confirmation(
        self, request: wire.GetConfirmationRequest, remote: PeerId
    ) -> wire.GetConfirmationReply:
        blob_id = BlobId(request.blob_id)
        if request.epoch != self.epoch:
            raise ProtocolRefusal(
                "WRONG_EPOCH", f"confirmations are signed for epoch {self.epoch} only"
            )
        required = self._required_slivers(blob_id)
        if not required:
            raise ProtocolRefusal("SHARD_NOT_OWNED", "this peer holds no shard in this epoch")
        durable = await self._in_thread(self.store.is_durable, blob_id, required)
        if not durable:
            raise ProtocolRefusal(
                "SLIVERS_MISSING", "not every sliver of this peer's shards is stored yet"
            )
        state = await self.blob_state(blob_id)
        if request.permanent and not state.is_permanent:
            raise ProtocolRefusal("NOT_PERMANENT", "no permanent registration for this blob")
        confirmation = records.sign_confirmation(
            self.identity,
            network_id=self.genesis.network_id,
            epoch=self.epoch,
            blob_id=blob_id,
            permanent=request.permanent,
        )
        return wire.GetConfirmationReply(confirmation=confirmation)

    async def _get_recovery_symbol(
        self, request: wire.GetRecoverySymbolRequest, remote: PeerId
    ) -> wire.GetRecoverySymbolReply:
        blob_id = BlobId(request.blob_id)
        try:
            metadata = await self._load_metadata(blob_id)
            sliver = await self._in_thread(
                self.store.get_sliver, blob_id, request.source_pair_index, request.source_kind
            )
        except NotFoundError as error:
            raise ProtocolRefusal("SLIVER_NOT_FOUND", str(error)) from error
        if request.target_index >= metadata.shards:
            raise ProtocolRefusal("BAD_REQUEST", "target index out of range")
        source_type = type_of(request.source_kind)
        source_index = sliver_of_pair(
            request.source_kind, request.source_pair_index, metadata.shards
        )
        symbol = await self._in_thread(
            make_recovery_symbol, metadata, source_type, source_index, sliver, request.target_index
        )
        return wire.GetRecoverySymbolReply(symbol=symbol.symbol, proof=tuple(symbol.proof))

    async def _get_recovery_symbols(
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
                    sliver = self.store.get_sliver(blob_id, pair, request.source_kind)
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

        items = await self._in_thread(build)
        if not items:
            raise ProtocolRefusal(
                "SLIVER_NOT_FOUND", f"none of the asked slivers of blob {short_id(blob_id)}"
            )
        return wire.GetRecoverySymbolsReply(symbols=tuple(items))

    # -- blob records -------------------------------------------------------------------

    def _committee_of(self, epoch: Epoch) -> Committee | None:
        if epoch == self.committee.epoch:
            return self.committee
        return self.epochs.committee_of(epoch)

    def _load_records(self, blob_id: BlobId) -> list[bytes]:
        return [
            value for _, value in self.store.iter_values(RECORDS_NAMESPACE, prefix=bytes(blob_id))
        ]

    async def blob_state(self, blob_id: BlobId) -> records.BlobState:
        """The merge of every verified record this peer keeps for the blob (cached)."""
        cached = self._blob_states.get(blob_id)
        if cached is not None:
            return cached
        state = records.BlobState.empty(blob_id)
        for raw in await self._in_thread(self._load_records, blob_id):
            try:
                (record,) = decode_records((raw,), blob_id)
            except WireError as error:
                logger.warning(
                    "stored record unreadable blob=%s error=%s", short_id(blob_id), error
                )
                continue
            state = state.with_record(record)
        self._blob_states[blob_id] = state
        return state

    def verify_record(self, record: records.BlobRecord, encoded: bytes | None = None) -> bytes:
        """``records.verify_blob_record``, done once per distinct record.

        A record's validity never changes: its signatures are over its own bytes, and a
        certificate is checked against the committee of its own epoch, which is fixed once
        known. The same certificate reaches a peer several times (pushed by the client, then on
        gossip, where the topic validator and the merge each checked it), each time 2f+1
        Ed25519 signatures. So the digests of the last :data:`VERIFIED_RECORDS_KEPT` records
        that verified are kept, and only a record not among them is checked. A record that
        fails is never kept. ``encoded`` is the record's encoding when the caller has it;
        returns the digest of that encoding.
        """
        digest = blake3.blake3(wire.encode(record) if encoded is None else encoded).digest()
        if digest in self._verified_records:
            self._verified_records.move_to_end(digest)
            return digest
        records.verify_blob_record(record, self.genesis.network_id, self._committee_of)
        self._verified_records[digest] = None
        while len(self._verified_records) > VERIFIED_RECORDS_KEPT:
            self._verified_records.popitem(last=False)
        return digest

    async def merge_records(
        self, blob_id: BlobId, items: list[records.BlobRecord], *, announce: bool = True
    ) -> int:
        """Verify, persist and merge records; returns how many were new. Bad ones raise.

        New records that arrived directly (not by gossip) are announced on gossip by one peer
        per blob (see :meth:`_is_announcer`), batched, so the news costs one message per blob
        rather than one per peer.
        """
        encodings = [wire.encode(record) for record in items]
        digests = [
            self.verify_record(record, encoded)
            for record, encoded in zip(items, encodings, strict=True)
        ]
        accepted = 0
        async with self._records_lock:
            state = await self.blob_state(blob_id)
            for record, encoded, digest in zip(items, encodings, digests, strict=True):
                key = bytes(blob_id) + digest[:16]
                existing = await self._in_thread(self.store.get_value, RECORDS_NAMESPACE, key)
                if existing is not None:
                    continue
                await self._in_thread(self.store.put_value, RECORDS_NAMESPACE, key, encoded)
                state = state.with_record(record)
                accepted += 1
                if announce and self._is_announcer(blob_id):
                    self._announce.append(encoded)
                    self._announce_ready.set()
            self._blob_states[blob_id] = state
            if accepted:
                summary = BlobState(
                    certified_epoch=state.certified_epoch,
                    end_epoch=state.end_epoch,
                    deletable=not state.is_permanent,
                    invalid=state.is_invalid,
                )
                await self._in_thread(self.store.set_blob_state, blob_id, summary)
        if accepted:
            for listener in self.record_listeners:
                listener(blob_id, state)
        return accepted

    def _is_announcer(self, blob_id: BlobId) -> bool:
        """The holder of shard ``blob_id mod n`` announces the blob's records on gossip."""
        shard = int.from_bytes(blob_id, "big") % self.committee.n_shards
        return self.committee.peer_of(shard) == self.peer_id

    def _validate_records_gossip(self, message: GossipMessage) -> bool:
        """Gossip topic validator: every record in the batch must verify, or none is relayed."""
        batch = wire.decode(message.data, BlobRecordsBatch)
        for record in decode_any_records(batch.records):
            self.verify_record(record)
        return True

    async def _read_records_gossip(self, subscription: Any) -> None:
        async for message in subscription:
            try:
                batch = wire.decode(message.data, BlobRecordsBatch)
                by_blob: dict[BlobId, list[records.BlobRecord]] = {}
                for record in decode_any_records(batch.records):
                    by_blob.setdefault(BlobId(record.blob_id), []).append(record)
                for blob_id, items in by_blob.items():
                    await self.merge_records(blob_id, items, announce=False)
            except WalrusError as error:
                logger.info("gossip records dropped origin=%s error=%s", message.origin[:12], error)

    async def _publish_records_gossip(self) -> None:
        while True:
            await self._announce_ready.wait()
            await trio.sleep(GOSSIP_BATCH_SECONDS)
            self._announce_ready = trio.Event()
            pending, self._announce = self._announce, []
            while pending:
                batch: list[bytes] = []
                size = 0
                while (
                    pending and len(batch) < 64 and size + len(pending[0]) < MAX_GOSSIP_BATCH_BYTES
                ):
                    size += len(pending[0])
                    batch.append(pending.pop(0))
                if not batch:
                    pending.pop(0)
                    continue
                if self.gossip is None:
                    break
                try:
                    await self.gossip.publish(
                        self.records_topic, wire.encode(BlobRecordsBatch(records=tuple(batch)))
                    )
                    logger.info("records announced on gossip count=%d", len(batch))
                except WalrusError as error:
                    logger.info("records gossip publish failed error=%s", error)

    async def _post_blob_records(
        self, request: PostBlobRecordsRequest, remote: PeerId
    ) -> PostBlobRecordsReply:
        blob_id = BlobId(request.blob_id)
        items = decode_records(request.records, blob_id)
        try:
            accepted = await self.merge_records(blob_id, items)
        except VerificationError as error:
            raise ProtocolRefusal("RECORD_INVALID", str(error)) from error
        if accepted:
            logger.info(
                "blob records merged blob=%s accepted=%d peer=%s",
                short_id(blob_id),
                accepted,
                remote[:12],
            )
        return PostBlobRecordsReply(accepted=accepted)

    async def _get_blob_records(
        self, request: GetBlobRecordsRequest, remote: PeerId
    ) -> GetBlobRecordsReply:
        blob_id = BlobId(request.blob_id)
        raw = await self._in_thread(self._load_records, blob_id)
        return GetBlobRecordsReply(records=tuple(raw[:64]))

    async def _blob_status(
        self, request: wire.BlobStatusRequest, remote: PeerId
    ) -> wire.BlobStatusReply:
        blob_id = BlobId(request.blob_id)
        state = await self.blob_state(blob_id)
        has_metadata = await self._in_thread(self.store.has_metadata, blob_id)
        stored: list[int] = []
        if has_metadata:
            keys = await self._in_thread(self.store.list_slivers, blob_id)
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


REQUEST_TYPES: tuple[type[wire.Message], ...] = (
    wire.StoreMetadataRequest,
    wire.StoreSliverRequest,
    wire.GetMetadataRequest,
    wire.GetSliverRequest,
    wire.GetConfirmationRequest,
    wire.GetRecoverySymbolRequest,
    wire.GetRecoverySymbolsRequest,
    wire.BlobStatusRequest,
    PostBlobRecordsRequest,
    GetBlobRecordsRequest,
)
