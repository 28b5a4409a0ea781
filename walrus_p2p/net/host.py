"""The libp2p host: identity, transports, connections, stream handlers, request/reply.

:func:`open_host` builds a py-libp2p 0.8.1 host with exactly the stack of docs/design.md §7:
TCP, Noise only (``sec_opt``: the library default also offers TLS, SECIO and plaintext), yamux
only, and an Ed25519 identity derived from a 32-byte seed, so a peer keeps its peer id across
restarts. It installs :mod:`walrus_p2p.net.libp2p_patches` (every change made to the library
itself, version-checked) and works around these library behaviours (docs/network.md):

- the swarm's negative dial cache blocks a peer for 60 s after one failed dial; the block is
  shortened (through ``libp2p_patches``) and an explicit :meth:`Host.connect` lifts it;
- every inbound stream handler (ours and the library's: identify, ping, kad, pubsub) runs
  behind a guard, because an exception escaping a handler ends the connection's nursery and,
  through it, the swarm service;
- leaving ``host.run()`` while services still spawn tasks can raise "Nursery is closed to new
  arrivals"; shutdown swallows exactly that error and logs it.

Nothing from libp2p leaves this package: :class:`Host` takes and returns ``str`` peer ids and
multiaddrs, and raises only :mod:`walrus_p2p.errors` types.
"""

from __future__ import annotations

import logging
import socket
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import libp2p
import multiaddr
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID

from walrus_p2p.errors import (
    ConfigError,
    NetworkError,
    PeerUnreachableError,
    RequestTimeoutError,
    WireError,
)
from walrus_p2p.net import libp2p_patches, rpc
from walrus_p2p.net._groups import is_nursery_closed, sole_body_error
from walrus_p2p.net.inbound import InboundBudget, InboundLimits
from walrus_p2p.net.logs import route_libp2p_logs
from walrus_p2p.net.stream import Stream
from walrus_p2p.types import PeerId

logger = logging.getLogger(__name__)

SEED_LENGTH = 32
PEERSTORE_ADDR_TTL = 24 * 3600
"""How long explicitly given addresses stay in the peerstore (libp2p's connect uses 120 s)."""

StreamHandler = Callable[[Stream], Awaitable[None]]
"""Handler for a raw inbound stream; the host closes the stream when it returns."""


@dataclass(frozen=True, slots=True)
class HostConfig:
    """How to build a host.

    ``seed``: 32 bytes; the Ed25519 identity (and so the peer id) is derived from it.
    ``listen_addrs``: multiaddrs to listen on; ``/ip4/127.0.0.1/tcp/0`` picks a free port.
    ``announce_addrs``: what to advertise instead of the listen addrs (containers, NAT).
    ``dial_timeout``: seconds for one dial (TCP + Noise + yamux).
    ``dial_retries``: extra attempts per address inside one dial (libp2p's default is 3).
    ``failed_dial_block_seconds``: how long a peer whose every address failed is not re-dialled
    (libp2p blocks for 60 s; an explicit :meth:`Host.connect` always lifts the block).
    ``min_connections``: libp2p's auto-connector dials peers from the peerstore while fewer
    than this are open, aiming at the midpoint of it and ``inbound.max_connections``; the
    pruner trims above ``inbound.max_connections`` (library defaults: 50..200, target 170
    dials).
    ``inbound``: limits on connections, request streams and bytes from remote peers
    (net/inbound.py).
    """

    seed: bytes
    listen_addrs: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    announce_addrs: tuple[str, ...] | None = None
    dial_timeout: float = 10.0
    dial_retries: int = 1
    failed_dial_block_seconds: float = 5.0
    min_connections: int = 8
    inbound: InboundLimits = field(default_factory=InboundLimits)


def parse_peer_id(text: str) -> Any:
    """A libp2p ``ID`` from its base58 text; :class:`WireError` if it is not one."""
    try:
        return ID.from_base58(text)
    except Exception as error:
        raise WireError(f"not a peer id: {text[:64]!r}") from error


def parse_multiaddr(text: str) -> Any:
    try:
        return multiaddr.Multiaddr(text)
    except Exception as error:
        raise WireError(f"not a multiaddr: {text[:128]!r}") from error


def split_peer_addr(text: str) -> tuple[PeerId, str]:
    """Split ``/ip4/1.2.3.4/tcp/4001/p2p/<peer id>`` into (peer id, transport address)."""
    marker = "/p2p/"
    index = text.rfind(marker)
    if index <= 0:
        raise WireError(f"multiaddr has no /p2p/<peer id> suffix: {text[:128]!r}")
    peer_text = text[index + len(marker) :]
    parse_peer_id(peer_text)
    address = text[:index]
    parse_multiaddr(address)
    return PeerId(peer_text), address


def peer_id_from_seed(seed: bytes) -> PeerId:
    """The peer id a host built from ``seed`` will have (no network needed)."""
    key_pair = _key_pair(seed)
    return PeerId(ID.from_pubkey(key_pair.public_key).to_base58())


def _key_pair(seed: bytes) -> Any:
    if len(seed) != SEED_LENGTH:
        raise ConfigError(f"identity seed must be {SEED_LENGTH} bytes, got {len(seed)}")
    try:
        return create_new_key_pair(seed)
    except Exception as error:
        raise ConfigError(f"identity seed is unusable: {error}") from error


def _strip_p2p(address: Any, own: str) -> str:
    text = str(address)
    suffix = f"/p2p/{own}"
    return text[: -len(suffix)] if text.endswith(suffix) else text


class Host:
    """A running libp2p host; build it with :func:`open_host`.

    All methods take and return peer ids and multiaddrs as ``str`` and raise
    :class:`NetworkError` subclasses (or :class:`WireError` for malformed ids and frames).
    """

    def __init__(self, raw: Any, config: HostConfig) -> None:
        self._raw = raw
        self._config = config
        self._peer_id = PeerId(raw.get_id().to_base58())
        self._limiters: dict[str, trio.CapacityLimiter] = {}
        self._handlers: dict[str, rpc.Handler] = {}
        self.inbound = InboundBudget(config.inbound)
        """Request streams and bytes granted to remote peers, on every protocol (net/inbound.py)."""

    # -- identity and addresses -------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        return self._peer_id

    @property
    def listen_addrs(self) -> list[str]:
        """The transport addresses this host is reachable on (no ``/p2p/`` suffix)."""
        return [_strip_p2p(address, self._peer_id) for address in self._raw.get_addrs()]

    @property
    def peer_addrs(self) -> list[str]:
        """The listen addresses with ``/p2p/<peer id>`` appended, as bootstrap lists want them."""
        return [f"{address}/p2p/{self._peer_id}" for address in self.listen_addrs]

    @property
    def libp2p_host(self) -> Any:
        """The py-libp2p host, for the other modules of ``walrus_p2p.net`` only."""
        return self._raw

    def add_addrs(self, peer_id: str, addrs: Sequence[str]) -> None:
        """Remember addresses for a peer without dialling it."""
        peer = parse_peer_id(peer_id)
        parsed = [parse_multiaddr(address) for address in addrs]
        if parsed:
            self._raw.get_peerstore().add_addrs(peer, parsed, PEERSTORE_ADDR_TTL)

    def known_addrs(self, peer_id: str) -> list[str]:
        """Addresses the peerstore holds for a peer (learned from config, identify or the DHT)."""
        peer = parse_peer_id(peer_id)
        try:
            addresses = self._raw.get_peerstore().addrs(peer)
        except Exception:
            return []
        return [_strip_p2p(address, peer_id) for address in addresses]

    # -- connections -----------------------------------------------------------------------

    def connected_peers(self) -> list[PeerId]:
        return [PeerId(peer.to_base58()) for peer in self._raw.get_connected_peers()]

    def is_connected(self, peer_id: str) -> bool:
        peer = parse_peer_id(peer_id)
        connections = self._raw.get_network().get_connections(peer)
        return any(not connection.is_closed for connection in connections)

    def unblock(self, peer_id: str) -> None:
        """Lift the swarm's failed-dial block for a peer (see ``failed_dial_block_seconds``)."""
        self._raw.get_network().unblock_peer(parse_peer_id(peer_id))

    async def connect(
        self, peer_id: str, addrs: Sequence[str] = (), *, timeout: float = 10.0
    ) -> None:
        """Make sure a connection to ``peer_id`` exists, dialling ``addrs`` (or known ones)."""
        if peer_id == self._peer_id:
            raise PeerUnreachableError("refusing to dial ourselves")
        peer = parse_peer_id(peer_id)
        parsed = [parse_multiaddr(address) for address in addrs]
        if parsed:
            # Given addresses replace known ones: Swarm.dial_peer tries only ONE address per
            # transport (MAX_ADDRS_PER_PEER with one per rank, swarm.py), so a stale address
            # left in the peerstore would shadow the fresh one.
            peerstore = self._raw.get_peerstore()
            peerstore.clear_addrs(peer)
            peerstore.add_addrs(peer, parsed, PEERSTORE_ADDR_TTL)
        # An explicit connect is new information: do not let an old failure block it.
        self.unblock(peer_id)
        known = list(parsed)
        if not known:
            try:
                known = list(self._raw.get_peerstore().addrs(peer))
            except Exception:
                known = []
        error: Exception | None = None
        with trio.move_on_after(timeout) as scope:
            try:
                await self._raw.connect(PeerInfo(peer, known))
            except Exception as caught:
                error = caught
        if scope.cancelled_caught:
            raise PeerUnreachableError(f"dial to peer={peer_id[:12]} timed out after {timeout:g}s")
        if error is not None:
            raise PeerUnreachableError(f"cannot connect to peer={peer_id[:12]}: {error}") from error

    async def disconnect(self, peer_id: str) -> None:
        peer = parse_peer_id(peer_id)
        try:
            with trio.move_on_after(5.0):
                await self._raw.disconnect(peer)
        except Exception as error:
            logger.debug("disconnect failed peer=%s error=%r", peer_id[:12], error)

    # -- streams ---------------------------------------------------------------------------

    async def open_stream(self, peer_id: str, protocol_id: str) -> Stream:
        """Open a stream to ``peer_id`` speaking ``protocol_id``, dialling if needed.

        No deadline of its own: callers wrap it (``request`` does).
        """
        if peer_id == self._peer_id:
            raise PeerUnreachableError("refusing to open a stream to ourselves")
        peer = parse_peer_id(peer_id)
        try:
            raw_stream = await self._raw.new_stream(peer, [protocol_id])
        except Exception as error:
            self._raise_if_unsupported(error, peer_id, protocol_id)
            # A connection to a peer that just restarted can still be listed after it died,
            # and libp2p dials only when no connection is listed: it refuses the stream
            # instead. Closing what is listed and trying once more dials afresh.
            if not self._raw.get_network().get_connections(peer):
                raise PeerUnreachableError(
                    f"cannot open stream to peer={peer_id[:12]}: {error}"
                ) from error
            logger.debug("stream refused on a listed connection, redialling peer=%s", peer_id[:12])
            await self.disconnect(peer_id)
            try:
                raw_stream = await self._raw.new_stream(peer, [protocol_id])
            except Exception as retry_error:
                self._raise_if_unsupported(retry_error, peer_id, protocol_id)
                raise PeerUnreachableError(
                    f"cannot open stream to peer={peer_id[:12]}: {retry_error}"
                ) from retry_error
        return Stream(raw_stream, remote_peer_id=PeerId(peer_id), protocol_id=protocol_id)

    @staticmethod
    def _raise_if_unsupported(error: Exception, peer_id: str, protocol_id: str) -> None:
        if _says_protocol_unsupported(error):
            raise NetworkError(
                f"peer={peer_id[:12]} does not serve protocol={protocol_id}",
                reason="PROTOCOL_NOT_SUPPORTED",
            ) from error

    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        """Serve raw streams of ``protocol_id``. The stream is reset if the handler raises and
        closed when it returns; errors are logged, never propagated into libp2p."""

        async def on_stream(raw_stream: Any) -> None:
            remote = PeerId(raw_stream.muxed_conn.peer_id.to_base58())
            stream = Stream(raw_stream, remote_peer_id=remote, protocol_id=protocol_id)
            try:
                await handler(stream)
            except Exception:
                logger.exception(
                    "stream handler failed protocol=%s peer=%s", protocol_id, remote[:12]
                )
                await stream.reset()
            finally:
                await stream.close()

        self._raw.set_stream_handler(protocol_id, on_stream)

    def remove_stream_handler(self, protocol_id: str) -> None:
        self._raw.remove_stream_handler(protocol_id)
        self._limiters.pop(protocol_id, None)
        self._handlers.pop(protocol_id, None)

    # -- request / reply -------------------------------------------------------------------

    def set_handler(
        self,
        protocol_id: str,
        handler: rpc.Handler,
        limits: rpc.HandlerLimits | None = None,
    ) -> None:
        """Serve request/reply on ``protocol_id``: ``async def handler(payload, peer) -> reply``.

        A handler exception never reaches libp2p: the client gets a ``RemoteError`` (the
        error's reason for a ``WalrusError``, ``INTERNAL`` otherwise) and the stream is closed.
        """
        limits = limits or rpc.HandlerLimits()
        limiter = trio.CapacityLimiter(limits.max_concurrent)
        self._limiters[protocol_id] = limiter
        self._handlers[protocol_id] = handler

        async def on_stream(stream: Stream) -> None:
            await rpc.serve_stream(stream, handler, limits, limiter, self.inbound)

        self.set_stream_handler(protocol_id, on_stream)

    @property
    def handlers(self) -> Mapping[str, rpc.Handler]:
        """The request/reply handler of each protocol set with :meth:`set_handler` (read-only):
        the fuzzer calls them with hostile payloads (docs/testing.md, "Fuzzing")."""
        return types.MappingProxyType(self._handlers)

    async def request(
        self,
        peer_id: str,
        protocol_id: str,
        payload: bytes | memoryview,
        *,
        timeout: float,
        max_reply: int = rpc.DEFAULT_MAX_REPLY,
        max_request: int = rpc.DEFAULT_MAX_REQUEST,
        prefix: bytes = b"",
    ) -> bytes | bytearray:
        """Send ``prefix + payload`` on a new stream and return the reply; ``timeout`` covers
        it all (dial, protocol negotiation, request, reply). A big reply is the ``bytearray``
        it was received into (:func:`walrus_p2p.net.framing.read_exactly`).

        Raises :class:`RequestTimeoutError`, :class:`PeerUnreachableError`,
        :class:`RemoteError` (the server answered with an error), :class:`WireError` (the reply
        is malformed, truncated or above ``max_reply``) or :class:`NetworkError`.
        """
        size = len(prefix) + len(payload)
        if size > max_request:
            raise WireError(f"request too large: size={size} max={max_request}")
        reply: bytes | bytearray | None = None
        with trio.move_on_after(timeout):
            stream = await self.open_stream(peer_id, protocol_id)
            ok = False
            try:
                reply = await rpc.exchange(
                    stream, payload, max_request=max_request, max_reply=max_reply, prefix=prefix
                )
                ok = True
            finally:
                if ok:
                    await stream.close()
                else:
                    await stream.reset()
        if reply is None:
            raise RequestTimeoutError(
                f"request to peer={peer_id[:12]} protocol={protocol_id} "
                f"timed out after {timeout:g}s"
            )
        return reply


def _guard_common_handler(raw: Any) -> None:
    """Put a guard around the one entry point through which libp2p runs every inbound
    stream handler (``BasicHost._swarm_stream_handler``, installed on the swarm in
    ``BasicHost.__init__``).

    ``SwarmConn._handle_muxed_stream`` awaits the handler inside the connection's stream
    nursery without catching anything, so one exception from any handler (ours, identify,
    ping, kad, pubsub) tears down the connection and can end the swarm service.
    """
    network = raw.get_network()
    inner = network.common_stream_handler

    async def guarded(net_stream: Any) -> None:
        try:
            await inner(net_stream)
        except Exception as error:
            try:
                peer = net_stream.muxed_conn.peer_id.to_base58()[:12]
            except Exception:
                peer = "?"
            logger.warning(
                "inbound stream handler failed peer=%s protocol=%s error=%r",
                peer,
                _protocol_of(net_stream),
                error,
            )
            with trio.CancelScope(shield=True), trio.move_on_after(5.0), suppress(Exception):
                await net_stream.reset()

    network.set_stream_handler(guarded)


def _protocol_of(net_stream: Any) -> str:
    try:
        return str(net_stream.get_protocol())
    except Exception:
        return "?"


def _check_port_free(address: Any) -> None:
    """Refuse a fixed TCP port that another socket already holds.

    libp2p's TCP listener sets SO_REUSEPORT (transport/tcp/tcp.py, for hole punching), so a
    second peer started on the same port binds without error and the kernel then splits
    inbound connections between the two processes. A probe bind *without* SO_REUSEPORT fails
    with EADDRINUSE in that case (every socket sharing a port must set the option).
    """
    port_text = address.value_for_protocol("tcp")
    if port_text is None or int(port_text) == 0:
        return
    protocols = {protocol.name for protocol in address.protocols()}
    if "ip4" in protocols:
        family, host = socket.AF_INET, str(address.value_for_protocol("ip4"))
    elif "ip6" in protocols:
        family, host = socket.AF_INET6, str(address.value_for_protocol("ip6"))
    else:
        return
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR (as libp2p sets it) so a restart is not refused for TIME_WAIT sockets of
        # its previous run; on Linux it still refuses a port with a live listener.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, int(port_text)))
    except OSError as error:
        raise NetworkError(f"cannot listen on {address}: {error.strerror or error}") from error
    finally:
        probe.close()


def _says_protocol_unsupported(error: BaseException) -> bool:
    """libp2p reports a refused protocol as StreamFailure caused by MultiselectClientError
    whose text says "protocol(s) not supported" (multiselect_client.py); no exception type
    of its own tells it apart from a connection that died during negotiation."""
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            return False
        text = str(seen).lower()
        if "protocol not supported" in text or "protocols not supported" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def _close_connections(raw: Any) -> None:
    """Close every connection at once.

    ``Swarm.close`` closes connections one after another and ``Yamux.close`` ends with
    ``trio.sleep(0.1)`` (yamux.py), so a host with 20 connections took seconds to stop.
    """

    async def close_one(connection: Any) -> None:
        try:
            await connection.close()
        except Exception as error:
            logger.debug("connection close failed error=%r", error)

    network = raw.get_network()
    async with trio.open_nursery() as nursery:
        for connections in list(network.connections.values()):
            for connection in list(connections):
                nursery.start_soon(close_one, connection)


@asynccontextmanager
async def open_host(config: HostConfig) -> AsyncIterator[Host]:
    """Build, start and (on exit) stop a libp2p host.

    Open :func:`walrus_p2p.net.discovery.open_discovery` and
    :func:`walrus_p2p.net.gossip.open_gossip` *inside* this context so they stop first.
    """
    route_libp2p_logs()
    key_pair = _key_pair(config.seed)
    listen = [parse_multiaddr(address) for address in config.listen_addrs]
    for address in listen:
        protocols = {protocol.name for protocol in address.protocols()}
        if "tcp" not in protocols or protocols & {"ws", "wss", "quic", "quic-v1"}:
            raise ConfigError(f"only plain TCP listen addresses are supported: {address}")
        _check_port_free(address)
    announce = (
        [parse_multiaddr(address) for address in config.announce_addrs]
        if config.announce_addrs is not None
        else None
    )
    # MuxerMultistream.new_conn builds `Yamux(...)` by name for /yamux/1.0.0 and ignores the
    # class given in muxer_opt: the shielded subclass goes in through install() too.
    libp2p_patches.install()
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    # libp2p admits max_connections - min_connections inbound connections: the inbound cap is
    # ours, and outbound dials keep min_connections slots of their own.
    inbound_cap = config.inbound.max_connections
    connection_config = ConnectionConfig(
        dial_timeout=config.dial_timeout,
        max_connections=inbound_cap + config.min_connections,
        min_connections=config.min_connections,
        low_watermark=config.min_connections,
        high_watermark=max(config.min_connections + 1, inbound_cap),
        max_connections_per_peer=config.inbound.max_connections_per_peer,
    )
    try:
        raw = libp2p.new_host(
            key_pair=key_pair,
            sec_opt={NOISE_PROTOCOL_ID: noise},
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): libp2p_patches.ShieldedYamux},
            listen_addrs=listen,
            announce_addrs=announce,
            connection_config=connection_config,
        )
    except Exception as error:
        raise ConfigError(f"cannot build libp2p host: {error}") from error
    network: Any = raw.get_network()
    network.retry_config = RetryConfig(max_retries=config.dial_retries, initial_delay=0.2)
    libp2p_patches.set_failed_dial_block(network, config.failed_dial_block_seconds)
    _guard_common_handler(raw)

    host = Host(raw, config)
    libp2p_patches.count_connection_refusals(network, host.inbound.counts)
    started = False
    body_error: BaseException | None = None
    escaped: BaseException | None = None
    try:
        async with raw.run(listen_addrs=listen):
            # Swarm.listen logs a failed bind at debug level and returns False; BasicHost.run
            # ignores the result, so a taken port would give a host that listens nowhere.
            missing = [str(a) for a in listen if str(a) not in network.listeners]
            if missing:
                escaped = NetworkError(f"cannot listen on {', '.join(missing)}")
            started = True
            if escaped is None:
                logger.info("host started peer=%s addrs=%s", host.peer_id[:12], host.listen_addrs)
            try:
                if escaped is not None:
                    raise escaped
                yield host
            except BaseException as error:
                body_error = error
                raise
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(10.0):
                    await _close_connections(raw)
                    try:
                        await raw.close()
                    except Exception as error:
                        logger.debug("host close error=%r", error)
    except BaseException as error:
        sole = sole_body_error(error, body_error)
        if sole is not None:
            escaped = sole
        elif body_error is None and is_nursery_closed(error):
            # Leaving host.run() while a service still spawns tasks (docs/design.md §7).
            logger.debug("host shutdown raced a task spawn peer=%s", host.peer_id[:12])
        elif not started and isinstance(error, Exception):
            raise NetworkError(f"host failed to start: {error}") from error
        else:
            raise
    if escaped is not None:
        # Raised outside the except block so its __context__ stays what it was.
        raise escaped
    logger.info("host stopped peer=%s", host.peer_id[:12])


__all__ = [
    "Host",
    "HostConfig",
    "StreamHandler",
    "open_host",
    "parse_peer_id",
    "peer_id_from_seed",
    "split_peer_addr",
]
