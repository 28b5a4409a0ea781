"""Gossipsub: publish and receive news on topics, with caller-supplied validators.

Configured deliberately (docs/design.md §7, docs/network.md):

- heartbeat every 3 s instead of the library's 120 s, and *adaptive gossip off*: with it on,
  ``GossipSub._adapt_heartbeat_parameters`` raises a poor-health heartbeat to 30-60 s;
- the per-(forwarder, topic) spam limit (library default 10 msg/s) sized by the caller; the
  same limit silently drops our own publishes, so :meth:`Gossip.publish` checks it first and
  raises instead;
- subscription queues of ``subscription_queue_size`` (library default 32, then silent drops);
- strict signing on: every message is signed by its origin and checked by libp2p before our
  validator sees it;
- topic validators from the caller: a remote message that fails is dropped and not forwarded;
  a local publish that fails raises :class:`WireError` (libp2p would return normally);
- a guard on the pubsub stream handler: ``Pubsub.continuously_read_stream`` parses frames
  without catching protobuf's ``DecodeError`` (and other per-message errors); the guard resets
  that peer's stream and forgets the peer instead of letting the error reach the connection.

Freshness is the caller's business: after a reconnect a peer may be replayed old messages.
"""

from __future__ import annotations

import logging
import math
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID as MESHSUB_10
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11 as MESHSUB_11
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub

from walrus_p2p.errors import ConfigError, NetworkError, WalrusError, WireError
from walrus_p2p.net import libp2p_patches
from walrus_p2p.net._groups import sole_body_error
from walrus_p2p.net._service import run_guarded_service
from walrus_p2p.net.host import Host
from walrus_p2p.net.traffic import TRAFFIC
from walrus_p2p.types import PeerId

logger = logging.getLogger(__name__)

GOSSIP_PROTOCOLS = (MESHSUB_11, MESHSUB_10)
"""Standard gossipsub versions only (js/go interoperate); py-libp2p's 1.3+/2.0 are left out,
and so is 1.2: its IDONTWANT is worth it for large messages only, but py-libp2p sends one to
every mesh peer for *every* message received, whatever its size (go-libp2p: from 1 KiB on).
Our topics carry small signed records: at 20 peers IDONTWANT was ~20 % of a peer's CPU during
an epoch change (docs/network.md, "Gossip cost")."""


OPPORTUNISTIC_GRAFT_SECONDS = 60.0
"""How often each topic's mesh may take opportunistic grafts (go-libp2p: every 60 heartbeats)."""


class _CountedGossipSub(GossipSub):
    """GossipSub that counts every RPC it sends (:data:`walrus_p2p.net.traffic.TRAFFIC`) and
    grafts opportunistically the way the gossipsub 1.1 spec and go-libp2p do.

    py-libp2p 0.8.1 runs opportunistic grafting at *every* heartbeat and takes candidates whose
    score is *at least* a fraction of the mesh's median, so with equal scores (every honest peer
    scores 0) it grafts two more peers per topic and heartbeat until the mesh passes
    ``degree_high``, prunes it back to ``degree``, and starts again: an idle 20-peer network sent
    dozens of GRAFT and PRUNE per peer and minute, most of its idle gossip (docs/network.md,
    "Gossip cost"). Here a topic's mesh is considered once per
    :data:`OPPORTUNISTIC_GRAFT_SECONDS`, and only peers scoring *above* the median qualify; the
    library's own candidate selection and bookkeeping do the rest.
    ``tests/node/test_gossip.py`` fails when the library no longer calls these two hooks or no
    longer needs them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._graft_due: dict[str, float] = {}

    def send_rpc(self, peer_id: Any, rpc: Any, priority: bool = False) -> None:
        TRAFFIC.count("gossip", rpc.ByteSize())
        super().send_rpc(peer_id, rpc, priority)

    def _perform_opportunistic_grafting(self, topic: str, peers_to_graft: Any) -> int:
        now = time.monotonic()
        due = self._graft_due.setdefault(topic, now + OPPORTUNISTIC_GRAFT_SECONDS)
        if now < due:
            return 0
        self._graft_due[topic] = now + OPPORTUNISTIC_GRAFT_SECONDS
        return int(super()._perform_opportunistic_grafting(topic, peers_to_graft))

    def _calculate_grafting_threshold(
        self, median_score: float, avg_score: float, min_score: float, topic: str
    ) -> float:
        floor = super()._calculate_grafting_threshold(median_score, avg_score, min_score, topic)
        # The library keeps candidates scoring >= the threshold; the spec wants > median.
        return math.nextafter(max(floor, median_score), math.inf)


@dataclass(frozen=True, slots=True)
class GossipMessage:
    """A message delivered on a topic, after libp2p's signature check and our validator."""

    topic: str
    data: bytes
    origin: PeerId
    """The peer that published (and signed) the message."""
    forwarder: PeerId
    """The peer that passed it to us (equal to ``origin`` when we got it first-hand)."""
    seqno: int


Validator = Callable[[GossipMessage], bool]
"""Return True to accept. Exceptions count as rejection. Runs for remote *and* local messages;
keep it fast (it runs on the event loop for every copy received)."""


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Gossipsub parameters.

    ``max_messages_per_topic_per_second``: per forwarder and topic; above it libp2p drops
    messages *and* penalises the forwarder's score. Size it for the busiest honest peer: our
    peers batch records and stay at a few messages per second network-wide (docs/design.md §7).
    """

    heartbeat_interval: int = 3
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    max_messages_per_topic_per_second: float = 50.0
    subscription_queue_size: int = 1024
    max_message_size: int = 1 << 20
    seen_ttl: int = 120
    validation_timeout: float = 5.0


class Subscription:
    """Messages of one topic, in arrival order; iterate with ``async for``."""

    def __init__(self, topic: str, raw: Any) -> None:
        self.topic = topic
        self._raw = raw

    async def receive(self) -> GossipMessage:
        """The next message (no deadline of its own: wrap it)."""
        try:
            message = await self._raw.get()
        except (trio.EndOfChannel, trio.ClosedResourceError) as error:
            raise NetworkError(f"subscription to topic={self.topic} closed") from error
        return _convert(message, self.topic, forwarder=None)

    def __aiter__(self) -> AsyncIterator[GossipMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[GossipMessage]:
        while True:
            try:
                message = await self._raw.get()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            yield _convert(message, self.topic, forwarder=None)

    async def handle_each(
        self, handle: Callable[[GossipMessage], Awaitable[None]], *, what: str
    ) -> None:
        """Call ``handle`` on every message until the subscription ends; one message's failure
        never ends the loop (or the peer). A ``WalrusError`` (bad input, a refusal) is logged
        at debug; anything else is a bug, logged with its traceback: a gossip message comes from
        anyone, and a handler that raised an unexpected exception on one took the whole peer
        down before (docs/security.md, "Errors")."""
        async for message in self:
            try:
                await handle(message)
            except WalrusError as error:
                logger.debug(
                    "gossip message dropped topic=%s what=%s origin=%s error=%s",
                    self.topic,
                    what,
                    message.origin[:12],
                    error,
                )
            except Exception:
                logger.exception(
                    "gossip message handler failed topic=%s what=%s origin=%s",
                    self.topic,
                    what,
                    message.origin[:12],
                )


def _peer_text(raw_id: bytes) -> PeerId:
    try:
        return PeerId(ID(raw_id).to_base58())
    except Exception:
        return PeerId("")


def _convert(message: Any, topic: str, forwarder: Any) -> GossipMessage:
    origin = _peer_text(bytes(message.from_id))
    return GossipMessage(
        topic=topic,
        data=bytes(message.data),
        origin=origin,
        forwarder=PeerId(forwarder.to_base58()) if forwarder is not None else origin,
        seqno=int.from_bytes(bytes(message.seqno)[:8], "big") if message.seqno else 0,
    )


class Gossip:
    """Gossipsub on one host; build it with :func:`open_gossip`."""

    def __init__(self, host: Host, pubsub: Any, router: Any, config: GossipConfig) -> None:
        self._host = host
        self._pubsub = pubsub
        self._router = router
        self._config = config
        self._validators: dict[str, Validator] = {}

    def set_validator(self, topic: str, validator: Validator) -> None:
        """Install the validator of ``topic`` (one per topic; replaces any previous one)."""
        self._validators[topic] = validator

        def libp2p_validator(forwarder: Any, message: Any) -> bool:
            try:
                converted = _convert(message, topic, forwarder)
                accepted = bool(validator(converted))
            except Exception:
                logger.warning("gossip validator raised topic=%s", topic, exc_info=True)
                return False
            if not accepted:
                logger.info(
                    "gossip message rejected topic=%s origin=%s forwarder=%s",
                    topic,
                    converted.origin[:12],
                    converted.forwarder[:12],
                )
            return accepted

        self._pubsub.set_topic_validator(topic, libp2p_validator, False)

    @property
    def validators(self) -> Mapping[str, Validator]:
        """The validator of each topic (read-only): the fuzzer feeds them hostile messages
        directly (docs/testing.md, "Fuzzing")."""
        return types.MappingProxyType(self._validators)

    def remove_validator(self, topic: str) -> None:
        self._validators.pop(topic, None)
        self._pubsub.remove_topic_validator(topic)

    async def subscribe(self, topic: str) -> Subscription:
        try:
            raw = await self._pubsub.subscribe(topic)
        except Exception as error:
            raise NetworkError(f"cannot subscribe to topic={topic}: {error}") from error
        return Subscription(topic, raw)

    async def unsubscribe(self, topic: str) -> None:
        try:
            await self._pubsub.unsubscribe(topic)
        except Exception as error:
            raise NetworkError(f"cannot unsubscribe from topic={topic}: {error}") from error

    async def publish(self, topic: str, data: bytes) -> None:
        """Sign and send ``data`` on ``topic``.

        Raises :class:`WireError` if the message is too large or the topic's validator rejects
        it, and :class:`NetworkError` (reason ``RATE_LIMITED``) where libp2p's per-topic rate
        limit would otherwise drop it silently.
        """
        if len(data) > self._config.max_message_size:
            raise WireError(
                f"gossip message too large: size={len(data)} max={self._config.max_message_size}"
            )
        validator = self._validators.get(topic)
        if validator is not None:
            own = GossipMessage(
                topic=topic,
                data=bytes(data),
                origin=self._host.peer_id,
                forwarder=self._host.peer_id,
                seqno=0,
            )
            try:
                accepted = bool(validator(own))
            except Exception as error:
                raise WireError(
                    f"gossip validator raised on local publish topic={topic}"
                ) from error
            if not accepted:
                raise WireError(f"gossip validator rejected local publish topic={topic}")
        self._check_rate(topic)
        try:
            await self._pubsub.publish(topic, bytes(data))
        except Exception as error:
            raise NetworkError(f"publish on topic={topic} failed: {error}") from error

    def _check_rate(self, topic: str) -> None:
        # Mirrors GossipSub._check_spam_protection (gossipsub.py), which drops our own message
        # with only a log line once `max_messages_per_topic_per_second` is reached.
        limits = getattr(self._router, "message_rate_limits", None)
        if not limits or not getattr(self._router, "spam_protection_enabled", False):
            return
        per_topic = limits.get(self._pubsub.my_id)
        if not per_topic:
            return
        cutoff = time.time() - 1.0
        recent = sum(1 for stamp in per_topic.get(topic, ()) if stamp > cutoff)
        if recent >= self._router.max_messages_per_topic_per_second:
            raise NetworkError(
                f"gossip rate limit reached topic={topic} "
                f"max={self._router.max_messages_per_topic_per_second:g}/s",
                reason="RATE_LIMITED",
            )

    def topic_peers(self, topic: str) -> list[PeerId]:
        """Connected peers that told us they subscribe to ``topic``."""
        return sorted(PeerId(peer.to_base58()) for peer in self._pubsub.peer_topics.get(topic, ()))

    def mesh_peers(self, topic: str) -> list[PeerId]:
        return sorted(PeerId(peer.to_base58()) for peer in self._router.mesh.get(topic, ()))

    async def wait_for_topic_peers(self, topic: str, count: int, *, poll: float = 0.05) -> None:
        """Wait until at least ``count`` peers subscribe to ``topic`` (wrap it in a deadline).

        libp2p offers no event for this across peers, so it polls cheaply.
        """
        while len(self._pubsub.peer_topics.get(topic, ())) < count:
            await trio.sleep(poll)

    async def wait_for_mesh(self, topic: str, count: int, *, poll: float = 0.05) -> None:
        """Wait until our mesh of ``topic`` holds at least ``count`` peers."""
        while len(self._router.mesh.get(topic, ())) < count:
            await trio.sleep(poll)


def _guard_pubsub_handler(host: Host, pubsub: Any) -> None:
    """Replace the pubsub stream handler with one that survives any per-stream error."""
    inner = pubsub.stream_handler

    async def guarded(net_stream: Any) -> None:
        try:
            await inner(net_stream)
        except Exception as error:
            peer = net_stream.muxed_conn.peer_id
            logger.warning(
                "dropping malformed pubsub stream peer=%s error=%r", peer.to_base58()[:12], error
            )
            with trio.CancelScope(shield=True), trio.move_on_after(5.0), suppress(Exception):
                await net_stream.reset()
            try:
                pubsub._handle_dead_peer(peer)
            except Exception:
                logger.debug("pubsub dead-peer cleanup failed", exc_info=True)

    for protocol in GOSSIP_PROTOCOLS:
        host.libp2p_host.set_stream_handler(protocol, guarded)


@asynccontextmanager
async def open_gossip(host: Host, config: GossipConfig | None = None) -> AsyncIterator[Gossip]:
    """Run gossipsub on ``host`` for the duration of the context."""
    config = config or GossipConfig()
    if config.subscription_queue_size < 1 or config.heartbeat_interval < 1:
        raise ConfigError("gossip queue size and heartbeat interval must be positive")
    libp2p_patches.set_subscription_queue_size(config.subscription_queue_size)
    router = _CountedGossipSub(
        protocols=list(GOSSIP_PROTOCOLS),
        degree=config.degree,
        degree_low=config.degree_low,
        degree_high=config.degree_high,
        heartbeat_interval=config.heartbeat_interval,
        heartbeat_initial_delay=0.1,
        adaptive_gossip_enabled=False,
        spam_protection_enabled=True,
        max_messages_per_topic_per_second=config.max_messages_per_topic_per_second,
    )
    pubsub = Pubsub(
        host.libp2p_host,
        router,
        strict_signing=True,
        seen_ttl=config.seen_ttl,
        validation_timeout=config.validation_timeout,
        max_inbound_rpc_size=config.max_message_size + 64 * 1024,
    )
    _guard_pubsub_handler(host, pubsub)
    gossip = Gossip(host, pubsub, router, config)
    body_error: BaseException | None = None
    escaped: BaseException | None = None
    try:
        async with run_guarded_service(pubsub, "pubsub"), run_guarded_service(router, "gossipsub"):
            await pubsub.wait_until_ready()
            try:
                yield gossip
            except BaseException as error:
                body_error = error
                raise
    except BaseException as error:
        escaped = sole_body_error(error, body_error)
        if escaped is None:
            raise
    if escaped is not None:
        raise escaped
