"""The network layer: the only package that imports libp2p.

Everything here takes and returns plain ``str`` peer ids and multiaddrs and raises only
:mod:`walrus_p2p.errors` types; see ``docs/network.md`` for what is configured and why.

Typical storage peer::

    async with open_host(HostConfig(seed=seed, listen_addrs=addrs)) as host:
        host.set_handler(protocol_id(network, "store"), handle_store, HandlerLimits(...))
        async with open_discovery(host, DiscoveryConfig(mode="server")) as discovery, \\
                open_gossip(host) as gossip:
            await discovery.bootstrap(bootstrap_entries)
            ...
"""

from walrus_p2p.net.discovery import DhtMode, Discovery, DiscoveryConfig, open_discovery
from walrus_p2p.net.framing import read_frame, write_frame
from walrus_p2p.net.gossip import (
    Gossip,
    GossipConfig,
    GossipMessage,
    Subscription,
    Validator,
    open_gossip,
)
from walrus_p2p.net.host import (
    Host,
    HostConfig,
    StreamHandler,
    open_host,
    peer_id_from_seed,
    split_peer_addr,
)
from walrus_p2p.net.logs import route_libp2p_logs
from walrus_p2p.net.names import protocol_id, topic
from walrus_p2p.net.rpc import Handler, HandlerLimits
from walrus_p2p.net.stream import Stream

__all__ = [
    "DhtMode",
    "Discovery",
    "DiscoveryConfig",
    "Gossip",
    "GossipConfig",
    "GossipMessage",
    "Handler",
    "HandlerLimits",
    "Host",
    "HostConfig",
    "Stream",
    "StreamHandler",
    "Subscription",
    "Validator",
    "open_discovery",
    "open_gossip",
    "open_host",
    "peer_id_from_seed",
    "protocol_id",
    "read_frame",
    "route_libp2p_logs",
    "split_peer_addr",
    "topic",
    "write_frame",
]
