"""The light peer: a libp2p host that talks to storage peers and stores nothing for others.

It learns the committee from the genesis file (epoch 0's committee is fixed there), dials each
storage peer at the addresses the committee lists and, when that fails, asks the DHT (client
mode) where the peer is now. Every call has a deadline; every reply is decoded against the one
message type the request expects, so a peer cannot answer one question with another.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import trio

from walrus_p2p.client.committee import refresh_committee
from walrus_p2p.core import wire
from walrus_p2p.core.committee import Committee
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.core.migration import (
    GetShardsInPlaceReply,
    GetShardsInPlaceRequest,
    moved_shards,
    reading_order,
)
from walrus_p2p.core.records import EpochRecord
from walrus_p2p.core.settlements import settlement_of
from walrus_p2p.errors import NetworkError, VerificationError, WalrusError
from walrus_p2p.net.discovery import Discovery, DiscoveryConfig, open_discovery
from walrus_p2p.net.host import Host, HostConfig, open_host
from walrus_p2p.net.messages import call_message
from walrus_p2p.net.names import protocol_id
from walrus_p2p.types import BlobId, Epoch, PeerId

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=wire.Message)

STORAGE_PROTOCOL = "storage"
REFRESH_INTERVAL = 30.0
"""Seconds between two re-verifications of the epoch chain by a long-running light peer."""
FRAME_OVERHEAD = 64 * 1024
IN_PLACE_REFRESH_INTERVAL = 5.0
"""Seconds between two asks for in-place reports while moved shards are not all in place."""


class LightPeer:
    """A connected light peer; build it with :func:`open_light_peer`."""

    def __init__(self, host: Host, genesis: Genesis, discovery: Discovery) -> None:
        self.host = host
        self.genesis = genesis
        self.discovery = discovery
        self.committee: Committee = genesis.committee
        # The verified epoch chain (client/committee.py): records of epochs 1.., and every
        # committee it names, so older certificates and the previous shard owners stay known.
        self.chain: list[EpochRecord] = []
        self.committees: dict[int, Committee] = {0: genesis.committee}
        self.shared_ends: dict[BlobId, dict[bytes, int]] = {}
        """Ends of shared blobs the chain's settlements give: blob id -> owner -> end
        (docs/economics.md, "Shared blobs")."""
        self._last_refresh: float | None = None
        self._refreshed_for = -1
        self.protocol = protocol_id(genesis.network_id_text, STORAGE_PROTOCOL)
        max_sliver = genesis.limits.max_sliver_size or wire.DEFAULT_LIMITS.max_sliver_size
        self.limits = wire.WireLimits(max_sliver_size=max_sliver, max_symbol_size=max_sliver)
        self.max_frame = max_sliver + FRAME_OVERHEAD
        self._dht_joined = False
        self._dht_lock = trio.Lock()
        self._dialled: set[PeerId] = set()
        self.in_place: dict[int, set[int]] = {}
        """Shards reported in place by their owners, by epoch (:meth:`refresh_in_place`)."""
        self._in_place_checked: float | None = None

    @property
    def epoch(self) -> int:
        return int(self.committee.epoch)

    def committee_of(self, epoch: int) -> Committee | None:
        """The verified committee of an epoch, or None if the chain does not reach it."""
        return self.committees.get(int(epoch))

    def addresses_of(self, peer_id: PeerId) -> list[str]:
        """The addresses the newest committee naming ``peer_id`` lists for it."""
        for epoch in sorted(self.committees, reverse=True):
            committee = self.committees[epoch]
            if peer_id in committee:
                return list(committee.member(peer_id).addresses)
        return []

    def adopt_record(self, record: EpochRecord) -> None:
        """Extend the chain with the next epoch's record; ``VerificationError`` unless it is
        certified by a quorum of the current committee and starts later than the one before."""
        record.verify(self.committee, self.genesis.network_id)
        if self.chain and record.value.start_time <= self.chain[-1].value.start_time:
            raise VerificationError(f"epoch record {record.epoch} does not start later")
        self.chain.append(record)
        self.committee = record.committee
        self.committees[int(record.epoch)] = self.committee
        self._index_shared_ends(record)

    def _index_shared_ends(self, record: EpochRecord) -> None:
        try:
            settlement = settlement_of(record.value)
        except VerificationError as error:
            # Certified by a quorum, so only a faulty one agrees on such a value.
            logger.warning("epoch record %d: unreadable settlement: %s", record.epoch, error)
            return
        if settlement is None:
            return
        for extension in settlement.shared_extensions:
            ends = self.shared_ends.setdefault(BlobId(extension.blob_id), {})
            ends[extension.owner] = max(ends.get(extension.owner, 0), int(extension.end_epoch))

    async def refresh_if_stale(self, *, min_interval: float = REFRESH_INTERVAL) -> None:
        """Re-fetch and verify the epoch chain when the genesis schedule says a newer epoch
        should exist: at once when the scheduled epoch moved since the last refresh, else at most
        once per ``min_interval`` (the network may be late). A long-running client (the gateway)
        so follows epoch changes. Failures are logged; the committee stays as it was."""
        scheduled = int(self.genesis.scheduled_epoch(int(time.time())))
        if scheduled <= self.epoch:
            return
        now = trio.current_time()
        if (
            self._last_refresh is not None
            and scheduled == self._refreshed_for
            and now - self._last_refresh < min_interval
        ):
            return
        self._last_refresh, self._refreshed_for = now, scheduled
        try:
            await refresh_committee(self)
        except WalrusError as error:
            logger.info("epoch chain refresh failed epoch=%d error=%s", self.epoch, error)

    def holders_of(self, shard: int) -> list[PeerId]:
        """Who to ask for a shard's slivers, in order: its owner now and its owner one epoch
        before. While a moved shard's new owner has not reported it in place, the previous
        owner comes first (docs/design.md §5, transition rule: reads of older blobs go to the old
        committee during a change; see :meth:`refresh_in_place`)."""
        return reading_order(
            shard,
            self.committee,
            self.committees.get(self.epoch - 1),
            self.in_place.get(self.epoch, frozenset()),
        )

    async def refresh_in_place(
        self, *, min_interval: float = IN_PLACE_REFRESH_INTERVAL, timeout: float = 3.0
    ) -> None:
        """Learn which moved shards their new owners reported in place (signed reports, checked
        against the current committee). Cheap when nothing moved or everything is in place;
        otherwise asks two committee members at most every ``min_interval`` seconds."""
        epoch = self.epoch
        previous = self.committees.get(epoch - 1)
        if previous is None or previous.n_shards != self.committee.n_shards:
            return
        moved = set(moved_shards(previous, self.committee))
        known = self.in_place.setdefault(epoch, set())
        if not moved or moved <= known:
            return
        now = trio.current_time()
        if self._in_place_checked is not None and now - self._in_place_checked < min_interval:
            return
        self._in_place_checked = now
        members = list(self.committee.peer_ids)
        random.shuffle(members)

        async def ask(peer_id: PeerId) -> None:
            try:
                reply = await self.call(
                    peer_id,
                    GetShardsInPlaceRequest(epoch=Epoch(epoch)),
                    GetShardsInPlaceReply,
                    timeout=timeout,
                )
            except WalrusError as error:
                logger.debug("in-place reports unavailable peer=%s error=%s", peer_id[:12], error)
                return
            for report in reply.reports:
                try:
                    report.verify(self.genesis.network_id, self.committee)
                except VerificationError as error:
                    logger.warning("bad in-place report from peer=%s: %s", peer_id[:12], error)
                    continue
                known.update(report.body.shards)

        async with trio.open_nursery() as nursery:
            for peer_id in members[:2]:
                nursery.start_soon(ask, peer_id)

    async def _ensure_connected(self, peer_id: PeerId, timeout: float) -> None:
        if self.host.is_connected(peer_id):
            return
        addresses = self.addresses_of(peer_id)
        try:
            await self.host.connect(peer_id, addresses, timeout=timeout)
            return
        except NetworkError as error:
            logger.info("direct dial failed peer=%s error=%s", peer_id[:12], error)
        found = await self._find_in_dht(peer_id, timeout)
        await self.host.connect(peer_id, found, timeout=timeout)

    async def _find_in_dht(self, peer_id: PeerId, timeout: float) -> list[str]:
        async with self._dht_lock:
            if not self._dht_joined:
                entries = [
                    (member.peer_id, address)
                    for member in self.committee.members
                    for address in member.addresses[:1]
                ]
                try:
                    await self.discovery.bootstrap(entries, timeout=min(timeout, 5.0))
                    self._dht_joined = True
                except WalrusError as error:
                    logger.info("dht bootstrap failed error=%s", error)
        return await self.discovery.find_peer(peer_id, timeout=timeout)

    async def call(
        self,
        peer_id: PeerId,
        request: wire.Message,
        expected: type[M],
        *,
        timeout: float,
        view_tail: bool = False,
    ) -> M:
        """One request/reply with ``peer_id``; raises a ``WalrusError`` on any failure.
        ``view_tail``: a large trailing byte string of the reply (a sliver) is a view, not a
        copy (:func:`walrus_p2p.core.wire.decode`)."""
        message, _ = await call_message(
            self.host,
            self._ensure_connected,
            peer_id,
            self.protocol,
            request,
            expected,
            timeout=timeout,
            limits=self.limits,
            max_frame=self.max_frame,
            view_tail=view_tail,
        )
        return message


@asynccontextmanager
async def open_light_peer(
    genesis: Genesis, *, seed: bytes | None = None, verify_chain: bool = True
) -> AsyncIterator[LightPeer]:
    """Start a light peer (a fresh identity unless ``seed`` is given) for the network.

    With ``verify_chain`` it first fetches the epoch records from a storage peer and verifies
    them from genesis (client/committee.py), so it works with the current committee; if no peer
    answers it keeps the genesis committee (and logs why).
    """
    config = HostConfig(
        seed=seed or secrets.token_bytes(32), listen_addrs=("/ip4/127.0.0.1/tcp/0",)
    )
    async with (
        open_host(config) as host,
        open_discovery(host, DiscoveryConfig(mode="client", refresh_interval=None)) as discovery,
    ):
        light = LightPeer(host, genesis, discovery)
        if verify_chain:
            light._last_refresh = trio.current_time()
            light._refreshed_for = int(genesis.scheduled_epoch(int(time.time())))
            try:
                await refresh_committee(light)
            except WalrusError as error:
                logger.warning("epoch chain not verified, using epoch %d: %s", light.epoch, error)
        yield light
