"""Peer discovery through the libp2p Kademlia DHT.

Storage peers run the DHT in server mode (they answer queries and sit in others' routing
tables); light peers run it in client mode (they only ask). Settings and traps (docs/design.md §7,
docs/network.md):

- connecting to a peer does not put it in the routing table: :meth:`Discovery.bootstrap` calls
  ``add_peer`` for every bootstrap peer reached and then ``refresh_routing_table()`` at once;
  the library only refreshes every 600 s (``kad_dht.ROUTING_TABLE_REFRESH_INTERVAL``), so a
  task of ours refreshes every ``refresh_interval`` seconds;
- the library's random walk is off by default (it costs ~4x the idle CPU); our periodic
  refresh does the same job at a pace we choose;
- the kad handler adds any peer that opens a kad stream to the routing table, client-mode
  peers included (``KadDHT._do_handle_stream`` passes ``skip_server_mode_check=True``);
  :func:`_only_servers_from_inbound` re-checks with identify's protocol list when it has one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import trio
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT

from walrus_p2p.errors import NetworkError, PeerUnreachableError, RequestTimeoutError
from walrus_p2p.net._groups import sole_body_error
from walrus_p2p.net._service import run_guarded_service
from walrus_p2p.net.host import Host, parse_peer_id, split_peer_addr
from walrus_p2p.types import PeerId

logger = logging.getLogger(__name__)

DhtMode = Literal["server", "client"]


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """``refresh_interval``: seconds between routing-table refreshes (None: never, beyond the
    library's own 600 s). ``random_walk``: the library's random-walk refresher (costly).

    A refresh is a network walk: every peer asked answers with up to 20 signed peer records,
    each checked (Ed25519) by the asker. At 20 peers a refresh every 60 s was the largest part
    of an idle peer's CPU (docs/network.md, "Idle cost"), for a table that did not change; the
    bootstrap refreshes at once, so 600 s (the library's own pace) is enough afterwards."""

    mode: DhtMode = "server"
    refresh_interval: float | None = 600.0
    random_walk: bool = False
    bootstrap_timeout: float = 10.0


def _as_pairs(peers: Sequence[tuple[str, str] | str]) -> list[tuple[PeerId, str]]:
    pairs: list[tuple[PeerId, str]] = []
    for entry in peers:
        if isinstance(entry, str):
            pairs.append(split_peer_addr(entry))
        else:
            peer_id, address = entry
            parse_peer_id(peer_id)
            pairs.append((PeerId(peer_id), address))
    return pairs


class Discovery:
    """The DHT of one host; build it with :func:`open_discovery`."""

    def __init__(self, host: Host, dht: Any, config: DiscoveryConfig, add_peer: Any) -> None:
        self._host = host
        self._dht = dht
        self._config = config
        self._add_peer = add_peer

    @property
    def mode(self) -> DhtMode:
        return self._config.mode

    def routing_table_peers(self) -> list[PeerId]:
        return sorted(PeerId(peer.to_base58()) for peer in self._dht.routing_table.get_peer_ids())

    async def bootstrap(
        self, peers: Sequence[tuple[str, str] | str], *, timeout: float | None = None
    ) -> list[PeerId]:
        """Connect to the bootstrap peers, add them to the routing table and refresh it.

        ``peers`` holds ``(peer id, multiaddr)`` pairs or ``.../p2p/<peer id>`` multiaddrs.
        Returns the bootstrap peers reached; raises :class:`PeerUnreachableError` if there
        were some and none answered. Ourselves in the list is skipped (every peer may share
        one bootstrap file).
        """
        timeout = self._config.bootstrap_timeout if timeout is None else timeout
        pairs = [
            (peer, address) for peer, address in _as_pairs(peers) if peer != self._host.peer_id
        ]
        reached: list[PeerId] = []

        async def reach(peer_id: PeerId, address: str) -> None:
            try:
                await self._host.connect(peer_id, [address], timeout=timeout)
            except NetworkError as error:
                # Routine while a network starts (peers dial others not listening yet); the
                # caller hears of it when none answered (PeerUnreachableError).
                logger.debug("bootstrap peer unreachable peer=%s error=%s", peer_id[:12], error)
                return
            # Bootstrap peers are servers by definition; identify may not have finished yet.
            try:
                await self._add_peer(parse_peer_id(peer_id), skip_server_mode_check=True)
            except Exception as error:
                logger.warning("bootstrap peer not added peer=%s error=%r", peer_id[:12], error)
                return
            reached.append(peer_id)

        async with trio.open_nursery() as nursery:
            for peer_id, address in pairs:
                nursery.start_soon(reach, peer_id, address)
        if pairs and not reached:
            raise PeerUnreachableError(f"none of {len(pairs)} bootstrap peers answered")
        if reached:
            try:
                await self.refresh(timeout=timeout * 3)
            except NetworkError as error:
                # The bootstrap peers are in the table; the periodic refresh will fill the rest.
                logger.warning("dht refresh after bootstrap failed error=%s", error)
        logger.info(
            "dht bootstrapped reached=%d of=%d table=%d",
            len(reached),
            len(pairs),
            len(self._dht.routing_table.get_peer_ids()),
        )
        return sorted(reached)

    async def refresh(self, *, timeout: float = 30.0) -> None:
        """Look ourselves (and a random key per bucket) up, filling the routing table."""
        done = False
        with trio.move_on_after(timeout):
            try:
                await self._dht.refresh_routing_table()
            except Exception as error:
                raise NetworkError(f"routing table refresh failed: {error}") from error
            done = True
        if not done:
            raise RequestTimeoutError(f"routing table refresh exceeded {timeout:g}s")

    async def find_peer(self, peer_id: str, *, timeout: float = 10.0) -> list[str]:
        """The addresses of ``peer_id`` from the routing table, the peerstore or a DHT lookup.

        Raises :class:`PeerUnreachableError` if the DHT does not know the peer and
        :class:`RequestTimeoutError` if the lookup takes longer than ``timeout``.
        """
        peer = parse_peer_id(peer_id)
        info: Any = None
        done = False
        with trio.move_on_after(timeout):
            try:
                info = await self._dht.find_peer(peer)
            except Exception as error:
                raise NetworkError(f"dht lookup of peer={peer_id[:12]} failed: {error}") from error
            done = True
        if not done:
            raise RequestTimeoutError(f"dht lookup of peer={peer_id[:12]} exceeded {timeout:g}s")
        if info is None or not info.addrs:
            raise PeerUnreachableError(f"peer={peer_id[:12]} not found in the dht")
        suffix = f"/p2p/{peer_id}"
        return sorted(
            {str(a)[: -len(suffix)] if str(a).endswith(suffix) else str(a) for a in info.addrs}
        )

    async def _refresh_forever(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            try:
                await self.refresh(timeout=max(10.0, interval / 2))
            except NetworkError as error:
                logger.info("periodic dht refresh failed error=%s", error)


IDENTIFY_WAIT = 1.0
"""Longest wait for identify's protocol list of a peer that opened a kad stream."""
IDENTIFY_POLL = 0.02
_WAITED_KEPT = 4096


def _only_servers_from_inbound(dht: Any) -> Any:
    """Stop the kad handler from adding peers that identify says are clients.

    ``KadDHT._do_handle_stream`` calls ``add_peer(peer, skip_server_mode_check=True)`` for
    every inbound kad stream, so light peers asking a question land in routing tables. The
    replacement lets ``RoutingTable.add_peer`` check identify's protocol list. That check
    admits a peer identify has not reported on yet, and a light peer's first question can
    arrive before identify's answer does: so the replacement first waits for that answer, up
    to :data:`IDENTIFY_WAIT` seconds once per peer (a peer whose identify never comes is then
    admitted as before). Returns the original method.
    """
    original = dht.add_peer
    waited: set[Any] = set()

    def identified(peer_id: Any) -> bool:
        try:
            return bool(dht.host.get_peerstore().get_protocols(peer_id))
        except Exception:
            return False

    async def add_peer(peer_id: Any, *, skip_server_mode_check: bool = False) -> bool:
        del skip_server_mode_check
        if peer_id not in waited and not identified(peer_id):
            with trio.move_on_after(IDENTIFY_WAIT):
                while not identified(peer_id):
                    await trio.sleep(IDENTIFY_POLL)
            if len(waited) >= _WAITED_KEPT:
                waited.clear()
            waited.add(peer_id)
        result: bool = await original(peer_id, skip_server_mode_check=False)
        return result

    dht.add_peer = add_peer
    return original


@asynccontextmanager
async def open_discovery(
    host: Host, config: DiscoveryConfig | None = None
) -> AsyncIterator[Discovery]:
    """Run the Kademlia DHT on ``host`` for the duration of the context (then call
    :meth:`Discovery.bootstrap`)."""
    config = config or DiscoveryConfig()
    mode = DHTMode.SERVER if config.mode == "server" else DHTMode.CLIENT
    dht = KadDHT(host.libp2p_host, mode, enable_random_walk=config.random_walk)
    discovery = Discovery(host, dht, config, _only_servers_from_inbound(dht))
    body_error: BaseException | None = None
    escaped: BaseException | None = None
    try:
        async with run_guarded_service(dht, "kad-dht"), trio.open_nursery() as nursery:
            if config.refresh_interval is not None and math.isfinite(config.refresh_interval):
                nursery.start_soon(discovery._refresh_forever, config.refresh_interval)
            try:
                yield discovery
            except BaseException as error:
                body_error = error
                raise
            finally:
                nursery.cancel_scope.cancel()
    except BaseException as error:
        escaped = sole_body_error(error, body_error)
        if escaped is None:
            raise
    if escaped is not None:
        raise escaped
