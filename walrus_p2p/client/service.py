"""`WalrusClient`: the light peer's operations behind the `BlobService` protocol.

The CLI and the HTTP gateway both drive one of these. It owns no threads or tasks of its own
beyond the light peer's host: open it with :func:`open_client` for the duration of the work.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager

import trio

from walrus_p2p.client.cache import CacheOptions, ReadCache
from walrus_p2p.client.challenges import fetch_availability
from walrus_p2p.client.network import LightPeer, open_light_peer
from walrus_p2p.client.payment import Payer
from walrus_p2p.client.read import ReadOptions, read_blob, read_range
from walrus_p2p.client.records import fetch_blob_state, push_records
from walrus_p2p.client.results import BlobStatus, NetworkStatus, StoreOutcome
from walrus_p2p.client.store import ProgressCallback, StoreOptions, store_blob
from walrus_p2p.core import records, wire
from walrus_p2p.core.committee import is_quorum
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.core.identity import Identity
from walrus_p2p.errors import NotFoundError, WalrusError
from walrus_p2p.types import BlobId, PeerId, short_id

logger = logging.getLogger(__name__)

STATUS_CACHE_SECONDS = 2.0
CHALLENGE_STATUS_SECONDS = 30.0
"""How long the gateway's last complete challenge epoch (``/status``) is reused."""
CHALLENGE_EPOCHS_LOOKED_AT = 4
CHALLENGE_STATUS_DEADLINE = 3.0


class WalrusClient:
    """Store, read and manage blobs as a light peer of one network."""

    def __init__(
        self,
        light: LightPeer,
        owner: Identity,
        *,
        store_options: StoreOptions | None = None,
        read_options: ReadOptions | None = None,
        background: trio.Nursery | None = None,
        cache: CacheOptions | None = None,
    ) -> None:
        self.light = light
        self.cache = ReadCache(cache) if cache is not None else None
        """Verified metadata and small blobs this client read (client/cache.py); a
        long-running client (gateway, agent) has one, a command's own client not."""
        self.background = background
        """Where store tails run after a store returned (see ``StoreOptions.tail_seconds``)."""
        self.owner = owner
        self.payer = (
            None if light.genesis.economy is None else Payer(light, owner, background=background)
        )
        """Pays from the owner's account on a network with an economy (docs/economics.md,
        "Paid storage"): the owner key is the account."""
        self.store_options = store_options or StoreOptions()
        self.read_options = read_options or ReadOptions()
        self._status: NetworkStatus | None = None
        self._status_time = 0.0
        self._status_lock = trio.Lock()
        self._challenge_time: float | None = None
        self._challenge_epoch_value: int | None = None

    @property
    def genesis(self) -> Genesis:
        return self.light.genesis

    async def store(
        self,
        data: bytes | bytearray | memoryview,
        *,
        epochs: int,
        permanent: bool,
        progress: ProgressCallback | None = None,
        wait_all: bool = False,
        storage: bytes | None = None,
    ) -> StoreOutcome:
        """Store ``data``; returns once certified, or with ``wait_all`` once the upload to
        every member has ended (``StoreOptions.wait_all``). ``storage``: a free storage
        resource of the paying account to use instead of buying storage."""
        await self.light.refresh_if_stale()
        options = self.store_options
        if wait_all and not options.wait_all:
            options = dataclasses.replace(options, wait_all=True)
        return await store_blob(
            self.light,
            self.owner,
            data,
            epochs=epochs,
            permanent=permanent,
            options=options,
            progress=progress,
            background=self.background,
            payer=self.payer,
            storage=storage,
        )

    async def read(self, blob_id: BlobId, *, strict: bool = False) -> memoryview:
        await self.light.refresh_if_stale()
        if self.cache is not None and not strict:
            kept = self.cache.blob(blob_id)
            if kept is not None:
                return kept
        data = await read_blob(
            self.light, blob_id, strict=strict, options=self.read_options, cache=self.cache
        )
        if self.cache is not None:
            self.cache.put_blob(blob_id, data)
        return data

    async def read_range(self, blob_id: BlobId, start: int, length: int) -> bytes:
        await self.light.refresh_if_stale()
        if self.cache is not None and start >= 0 and length >= 0:
            kept = self.cache.blob(blob_id)
            if kept is not None:
                return bytes(kept[start : start + length])
        return await read_range(
            self.light, blob_id, start, length, options=self.read_options, cache=self.cache
        )

    async def blob_status(self, blob_id: BlobId) -> BlobStatus:
        await self.light.refresh_if_stale()
        if self.cache is not None:
            kept = self.cache.status(blob_id)
            if kept is not None:
                return kept
        status = await self._fetch_status(blob_id)
        if self.cache is not None:
            self.cache.put_status(blob_id, status)
        return status

    async def _fetch_status(self, blob_id: BlobId) -> BlobStatus:
        state = await fetch_blob_state(self.light, blob_id)
        if state is None:
            raise WalrusError("no storage peer answered", reason="NOT_ENOUGH_PEERS")
        word = state.status(self.light.epoch)
        if word == "unknown":
            raise NotFoundError(f"blob {short_id(blob_id)} is not known to the network")
        sizes = [registration.size for registration in state.registrations.values()]
        return BlobStatus(
            blob_id=blob_id,
            state=word,
            size=max(sizes) if sizes else None,
            certified_epoch=state.certified_epoch,
            end_epoch=state.end_epoch,
            deletable=None if not state.registrations else not state.is_permanent,
            attributes=tuple(sorted(state.effective_attributes.items())),
        )

    async def records_state(self, blob_id: BlobId) -> records.BlobState | None:
        return await fetch_blob_state(self.light, blob_id)

    async def extend(self, blob_id: BlobId, *, epochs: int) -> int:
        """Extend this owner's registration by ``epochs``; returns the new end epoch."""
        state = await fetch_blob_state(self.light, blob_id)
        mine = self._my_registration(state)
        if state is None or mine is None:
            raise NotFoundError(f"blob {short_id(blob_id)} has no live registration of this key")
        (_, start_epoch), registration = mine
        new_end = max(registration.end_epoch, self.light.epoch) + epochs
        if self.payer is not None:
            # The resource attached to the blob must last as long: peers refuse the extend
            # record otherwise (PAYMENT_MISMATCH).
            paid = await self.payer.pay_extension(blob_id=blob_id, end_epoch=new_end)
            logger.info("extension paid blob=%s end=%d cost=%d", short_id(blob_id), new_end, paid)
        record = records.sign_extend(
            self.owner,
            network_id=self.genesis.network_id,
            blob_id=blob_id,
            start_epoch=start_epoch,
            end_epoch=new_end,
        )
        await self._deliver(blob_id, record)
        if self.cache is not None:
            self.cache.forget(blob_id)  # its kept status names the old end epoch
        return new_end

    async def delete(self, blob_id: BlobId) -> bytes | None:
        """Delete this owner's (deletable) registration of the blob. On a network with an
        economy the storage resource it was attached to is then released for reuse: returns
        its id (None without an economy)."""
        state = await fetch_blob_state(self.light, blob_id)
        mine = self._my_registration(state)
        if state is None or mine is None:
            raise NotFoundError(f"blob {short_id(blob_id)} has no live registration of this key")
        (_, start_epoch), registration = mine
        if registration.permanent:
            raise WalrusError("a permanent blob cannot be deleted", reason="NOT_DELETABLE")
        record = records.sign_delete(
            self.owner,
            network_id=self.genesis.network_id,
            blob_id=blob_id,
            start_epoch=start_epoch,
        )
        await self._deliver(blob_id, record)
        if self.cache is not None:
            self.cache.forget(blob_id)
        if self.payer is None:
            return None
        return await self.payer.release(blob_id)

    async def blob_attributes(self, blob_id: BlobId) -> records.BlobState:
        """The blob's verified state, with the attributes of each registration
        (``attributes_of``, ``effective_attributes``; docs/attributes.md)."""
        state = await fetch_blob_state(self.light, blob_id)
        if state is None or not state.registrations:
            raise NotFoundError(f"blob {short_id(blob_id)} is not registered")
        return state

    async def update_attributes(
        self,
        blob_id: BlobId,
        *,
        set_pairs: Mapping[str, str] | None = None,
        remove_keys: Iterable[str] = (),
        remove_all: bool = False,
    ) -> dict[str, str]:
        """Sign and deliver a new attribute set of this owner's registration of the blob:
        the current set with ``set_pairs`` added, ``remove_keys`` taken out, or nothing left
        (``remove_all``). Returns the new set. A set the network would refuse raises
        ``WalrusError`` (reason ``ATTRIBUTE_INVALID``) before anything is sent; removing a key
        that is not set raises ``NotFoundError``."""
        state = await fetch_blob_state(self.light, blob_id)
        mine = self._my_registration(state)
        if state is None or mine is None:
            raise NotFoundError(f"blob {short_id(blob_id)} has no live registration of this key")
        key, _ = mine
        current_record = state.attributes.get(key)
        version = 0 if current_record is None else current_record.body.version + 1
        attributes = {} if remove_all else state.attributes_of(key)
        missing = [name for name in remove_keys if name not in attributes]
        if missing:
            raise NotFoundError(f"attribute keys not set on this blob: {', '.join(missing)}")
        for name in remove_keys:
            del attributes[name]
        attributes.update(set_pairs or {})
        if len(attributes) > records.MAX_ATTRIBUTES:
            raise WalrusError(
                f"{len(attributes)} attributes; at most {records.MAX_ATTRIBUTES} per blob",
                reason="ATTRIBUTE_INVALID",
            )
        try:
            record = records.sign_attribute(
                self.owner,
                network_id=self.genesis.network_id,
                blob_id=blob_id,
                start_epoch=key[1],
                version=version,
                attributes=attributes,
            )
        except ValueError as error:
            raise WalrusError(str(error), reason="ATTRIBUTE_INVALID") from error
        await self._deliver(blob_id, record)
        if self.cache is not None:
            self.cache.forget(blob_id)  # a gateway's kept headers come from the old set
        return attributes

    def _my_registration(
        self, state: records.BlobState | None
    ) -> tuple[records.RegistrationKey, records.Registration] | None:
        if state is None:
            return None
        for key, registration in state.live_registrations.items():
            if key[0] == self.owner.public_key.raw:
                return key, registration
        return None

    async def _deliver(self, blob_id: BlobId, record: records.BlobRecord) -> None:
        delivered = await push_records(self.light, blob_id, [record])
        if delivered == 0:
            raise WalrusError("no storage peer accepted the record", reason="NOT_ENOUGH_PEERS")

    async def network_status(self) -> NetworkStatus:
        """Which shards answer now (cached for two seconds): writable at quorum weight."""
        async with self._status_lock:
            now = time.monotonic()
            if self._status is not None and now - self._status_time < STATUS_CACHE_SECONDS:
                return self._status
            # The committee to ping is the current one (and `epoch` below what users expect).
            await self.light.refresh_if_stale()
            reachable: set[PeerId] = set()

            async def ping(peer_id: PeerId) -> None:
                try:
                    await self.light.call(
                        peer_id,
                        wire.BlobStatusRequest(blob_id=wire.PING_BLOB_ID),
                        wire.BlobStatusReply,
                        timeout=3.0,
                    )
                    reachable.add(peer_id)
                except WalrusError:
                    return

            async with trio.open_nursery() as nursery:
                for peer_id in self.light.committee.peer_ids:
                    nursery.start_soon(ping, peer_id)
            committee = self.light.committee
            weight = committee.shard_weight(reachable)
            self._status = NetworkStatus(
                network_name=self.genesis.network,
                network_id=self.genesis.network_id_text,
                epoch=self.light.epoch,
                shards=committee.n_shards,
                reachable_shards=weight,
                writable=is_quorum(weight, committee.n_shards),
                challenge_epoch=await self._challenge_epoch(),
            )
            self._status_time = time.monotonic()
            return self._status

    async def _challenge_epoch(self) -> int | None:
        """The newest of the last four epochs whose challenge certified members holding a
        quorum of shards, each certificate verified (client/challenges.py); asked again at most
        every ``CHALLENGE_STATUS_SECONDS``."""
        last = self._challenge_time
        if last is not None and time.monotonic() - last < CHALLENGE_STATUS_SECONDS:
            return self._challenge_epoch_value
        found: int | None = None
        newest = self.light.epoch
        # Bounded as a whole: /status must answer even while members hang.
        with trio.move_on_after(CHALLENGE_STATUS_DEADLINE) as deadline:
            # Epoch 0 has no challenge (nothing was certified before it).
            for epoch in range(newest, max(0, newest - CHALLENGE_EPOCHS_LOOKED_AT), -1):
                committee = self.light.committee_of(epoch)
                if committee is None:
                    continue
                try:
                    report = await fetch_availability(self.light, epoch, timeout=2.0)
                except WalrusError as error:
                    logger.debug("challenge status unknown epoch=%d error=%s", epoch, error)
                    continue
                if is_quorum(committee.shard_weight(report.certified), committee.n_shards):
                    found = epoch
                    break
        if deadline.cancelled_caught:
            return self._challenge_epoch_value  # the last answer, looked up again next time
        self._challenge_epoch_value = found
        self._challenge_time = time.monotonic()
        return found


@asynccontextmanager
async def open_client(
    genesis: Genesis,
    owner: Identity,
    *,
    store_options: StoreOptions | None = None,
    read_options: ReadOptions | None = None,
    cache: CacheOptions | None = None,
) -> AsyncIterator[WalrusClient]:
    """A client on its own light peer. Store tails run in a nursery of the client: a store returns
    once certified, and leaving this context waits for the tails (each at most
    ``tail_seconds``). ``cache``: keep verified metadata and small blobs (client/cache.py)."""
    async with open_light_peer(genesis) as light, trio.open_nursery() as background:
        yield WalrusClient(
            light,
            owner,
            store_options=store_options,
            read_options=read_options,
            background=background,
            cache=cache,
        )
