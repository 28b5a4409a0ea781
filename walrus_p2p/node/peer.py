"""The storage peer: a host, its DHT and gossip, and the services composed on top of them.

docs/design.md §11.1. :class:`StoragePeerService` is the composition root of one storage peer.
It owns the parts that exist before the network does (the store, metrics, the
:class:`~walrus_p2p.node.committee_view.CommitteeView`, the
:class:`~walrus_p2p.node.record_book.RecordBook` and the :class:`~walrus_p2p.node.router.Router`);
``run()`` opens the host, the DHT (server mode) and gossip, builds one
:class:`~walrus_p2p.node.context.PeerContext` and composes the services on it:

* :class:`~walrus_p2p.node.slivers.SliverService`: metadata, slivers, confirmations, symbols;
* the record book's own requests and its gossip topic;
* :class:`~walrus_p2p.node.epochs.EpochService`: epoch agreement and sync, the only writer of
  the committee view;
* :class:`~walrus_p2p.node.healing.HealingService`: blob sync, catch-up, scrub, garbage
  collection, invalid blobs and shard migration;
* :class:`~walrus_p2p.node.economy.EconomyService`: the ledger, the member's signing rule
  (approvals), certified orders with their gossip topic and catch-up (docs/economics.md).
* :class:`~walrus_p2p.node.challenges.ChallengeService`: the storage challenge of each epoch,
  availability certificates, and the window that guards the recovery symbol handlers.

Each service registers its request types on the router; requests arrive on one protocol id per
network (``/walrus-p2p/<network>/storage/1.0.0``), one stream per request, one CBOR message each
way, and the router dispatches them. A subclass may change handlers in :meth:`configure` (fault
injection for tests does).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from walrus_p2p import __version__
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.core.health import PeerHealthReply, PeerHealthRequest
from walrus_p2p.core.identity import Identity
from walrus_p2p.errors import StorageError, WalrusError
from walrus_p2p.net.discovery import Discovery, DiscoveryConfig, open_discovery
from walrus_p2p.net.gossip import Gossip, open_gossip
from walrus_p2p.net.host import Host, HostConfig, open_host
from walrus_p2p.net.http import serve_http
from walrus_p2p.net.inbound import InboundLimits
from walrus_p2p.net.names import topic
from walrus_p2p.net.rpc import HandlerLimits
from walrus_p2p.node.challenges import ChallengeOptions, ChallengeService
from walrus_p2p.node.committee_view import CommitteeView, ReadsCommittee
from walrus_p2p.node.context import PeerContext
from walrus_p2p.node.economy import CERTIFICATES_TOPIC, EconomyOptions, EconomyService
from walrus_p2p.node.epochs import EpochOptions, EpochService
from walrus_p2p.node.healing import HealingService
from walrus_p2p.node.healing_options import HealingOptions
from walrus_p2p.node.metrics import PeerMetrics, build_metrics_app
from walrus_p2p.node.protocol import (
    RECORDS_TOPIC,
    max_frame_for,
    storage_protocol_id,
    wire_limits_for,
)
from walrus_p2p.node.ratelimit import RequestRates
from walrus_p2p.node.record_book import RecordBook
from walrus_p2p.node.router import Router
from walrus_p2p.node.slivers import SliverService
from walrus_p2p.storage import BlobStore
from walrus_p2p.types import Epoch, PeerId

logger = logging.getLogger(__name__)

JOIN_QUIET_ATTEMPTS = 4
"""DHT bootstrap attempts (1 + 2 + 4 s apart) logged at info before they are warnings."""


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
    inbound: InboundLimits = field(default_factory=InboundLimits)
    """Limits on request streams and bytes from other peers (net/inbound.py)."""
    economy: EconomyOptions = field(default_factory=EconomyOptions)
    challenges: ChallengeOptions = field(default_factory=ChallengeOptions)


@dataclass(frozen=True, slots=True)
class RunningServices:
    """The services of a started peer, on the context they share."""

    context: PeerContext
    slivers: SliverService
    epochs: EpochService
    healing: HealingService
    economy: EconomyService
    challenges: ChallengeService


class StoragePeerService(ReadsCommittee):
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
        self.metrics = PeerMetrics()
        self.limits = wire_limits_for(genesis)
        self.protocol = storage_protocol_id(genesis)
        self.max_frame = max_frame_for(genesis)
        self.committees = CommitteeView(genesis.committee)
        self.records = RecordBook(
            store=store,
            network_id=genesis.network_id,
            peer_id=identity.peer_id,
            committees=self.committees,
        )
        self.router = Router(limits=self.limits, metrics=self.metrics, rates=RequestRates())
        self.records_topic = topic(genesis.network_id_text, RECORDS_TOPIC)
        self.started = trio.Event()
        self._started_monotonic = time.monotonic()
        self._services: RunningServices | None = None

    # -- what tests, the runner and the CLI read (and ``peer_id``, ``committee``, ``epoch``) --

    @property
    def services(self) -> RunningServices:
        """The composed services; raises until ``run()`` has opened the host."""
        if self._services is None:
            raise RuntimeError("the storage peer is not running yet")
        return self._services

    @property
    def context(self) -> PeerContext:
        return self.services.context

    @property
    def host(self) -> Host:
        return self.services.context.host

    @property
    def epochs(self) -> EpochService:
        return self.services.epochs

    @property
    def healing(self) -> HealingService:
        return self.services.healing

    @property
    def economy(self) -> EconomyService:
        return self.services.economy

    @property
    def challenges(self) -> ChallengeService:
        return self.services.challenges

    # -- lifecycle ----------------------------------------------------------------------

    def configure(self, router: Router) -> None:
        """Called once every service registered its handlers, before the first request: a
        subclass may replace handlers here (see :mod:`walrus_p2p.node.faults`)."""

    def _compose(self, host: Host, discovery: Discovery, gossip: Gossip) -> RunningServices:
        context = PeerContext(
            identity=self.identity,
            genesis=self.genesis,
            store=self.store,
            metrics=self.metrics,
            limits=self.limits,
            protocol=self.protocol,
            max_frame=self.max_frame,
            committees=self.committees,
            records=self.records,
            router=self.router,
            host=host,
            discovery=discovery,
            gossip=gossip,
            announce_addrs=self.options.announce_addrs,
        )
        slivers = SliverService(context)
        slivers.register(self.router)
        self.records.register(self.router)
        epochs = EpochService(context, self.options.epochs, self.committees.writer())
        healing = HealingService(context, self.options.healing)
        economy = EconomyService(context, self.options.economy)
        economy.register(self.router)
        if self.genesis.economy is not None:
            # Paid storage is opt-in by genesis (docs/economics.md, "Paid storage").
            self.records.payments = economy.check_payment
            economy.shared_ends = self.records.add_shared_end
        # After the sliver service: it guards the recovery symbol handlers during its window.
        challenges = ChallengeService(context, self.options.challenges)
        challenges.register(self.router)
        if self.genesis.economy is not None:
            # Each epoch value carries the ending epoch's settlement, paid by the epoch's
            # availability certificates (docs/economics.md, "Settlements in the epoch change").
            economy.challenges = challenges
            epochs.settlements = economy
        self.router.add(PeerHealthRequest, self._serve_health)
        self.configure(self.router)
        return RunningServices(
            context=context,
            slivers=slivers,
            epochs=epochs,
            healing=healing,
            economy=economy,
            challenges=challenges,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        host_config = HostConfig(
            seed=self.identity.seed,
            listen_addrs=self.options.listen_addrs,
            announce_addrs=self.options.announce_addrs,
            inbound=self.options.inbound,
        )
        async with open_host(host_config) as host, trio.open_nursery() as nursery:
            self.metrics.watch_inbound(host.inbound)
            if self.options.metrics_bind:
                app = build_metrics_app(self.metrics, self.health)
                await nursery.start(serve_http, app, self.options.metrics_bind)
            async with (
                open_discovery(host, DiscoveryConfig(mode="server")) as discovery,
                open_gossip(host) as gossip,
            ):
                services = self._compose(host, discovery, gossip)
                # The signer's locks and the certified orders are in memory before any request
                # is answered (a member must never approve without its locks).
                await services.economy.load()
                self._services = services
                host.set_handler(
                    self.protocol,
                    self.router.dispatch,
                    HandlerLimits(
                        max_request=self.max_frame,
                        max_reply=self.max_frame,
                        handler_timeout=self.options.request_timeout,
                        max_concurrent=self.options.max_concurrent_requests,
                        request_cap=self.router.request_cap,
                    ),
                )
                await nursery.start(self.records.run, gossip, self.records_topic)
                await nursery.start(
                    services.economy.run,
                    gossip,
                    topic(self.genesis.network_id_text, CERTIFICATES_TOPIC),
                )
                nursery.start_soon(self._join, discovery)
                nursery.start_soon(self._watch_connections, host)
                nursery.start_soon(services.healing.run)
                if self.options.epochs.enabled:
                    # Catches up with the epoch chain (bounded) before the peer reports started.
                    await nursery.start(services.epochs.run)
                    await nursery.start(services.challenges.run)
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
                # The first tries fail routinely while the other peers start; a peer that keeps
                # failing (after ~15 s) says so as a warning.
                level = logging.INFO if attempt < JOIN_QUIET_ATTEMPTS else logging.WARNING
                logger.log(level, "dht bootstrap failed attempt=%d error=%s", attempt, error)
            await trio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _watch_connections(self, host: Host) -> None:
        while True:
            self.metrics.peers_connected.set(len(host.connected_peers()))
            try:
                used = await trio.to_thread.run_sync(self.store.used_bytes)
                self.metrics.storage_used_bytes.set(used)
            except StorageError as error:
                logger.warning("storage accounting failed error=%s", error)
            await trio.sleep(15.0)

    async def _serve_health(self, request: PeerHealthRequest, remote: PeerId) -> PeerHealthReply:
        """`walrus-peer health` asks every member this (docs/cli.md, "Health")."""
        services = self.services
        in_place, arriving = services.healing.migration.own_shards()
        return PeerHealthReply(
            version=__version__,
            epoch=Epoch(self.epoch),
            uptime_seconds=int(time.monotonic() - self._started_monotonic),
            peers_connected=min(len(services.context.host.connected_peers()), 2**32 - 1),
            shards_in_place=tuple(in_place),
            shards_arriving=tuple(arriving),
            challenge_certified_epoch=(
                None
                if services.challenges.last_certified_epoch is None
                else Epoch(services.challenges.last_certified_epoch)
            ),
        )

    def health(self) -> dict[str, Any]:
        services = self._services
        connected = len(services.context.host.connected_peers()) if services is not None else 0
        return {
            "status": "ok" if self.started.is_set() else "starting",
            "peerId": self.peer_id,
            "network": self.genesis.network,
            "networkId": self.genesis.network_id_text,
            "epoch": self.epoch,
            "shards": list(self.committee.shards_of(self.peer_id)),
            "peersConnected": connected,
            "uptimeSeconds": round(time.monotonic() - self._started_monotonic, 1),
            "challengeLastCertifiedEpoch": (
                services.challenges.last_certified_epoch if services is not None else None
            ),
            **(services.healing.migration.summary() if services is not None else {}),
        }
