"""Typed request/reply: one wire message out, the one expected message type back.

Light peers (client/) and storage peers (node/) both ask storage peers questions; this is the
one place that turns a :class:`~walrus_p2p.core.wire.Message` into a framed request under a
single deadline (dial included) and decodes the reply against the type the request expects,
so a peer cannot answer one question with another.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from walrus_p2p.core import wire
from walrus_p2p.errors import RequestTimeoutError
from walrus_p2p.net.host import Host
from walrus_p2p.net.traffic import TRAFFIC
from walrus_p2p.types import PeerId

M = TypeVar("M", bound=wire.Message)

Connector = Callable[[PeerId, float], Awaitable[None]]
"""``await connect(peer_id, timeout)``: make sure a connection exists (dial, DHT lookup...)."""


async def call_message(
    host: Host,
    connect: Connector,
    peer_id: PeerId,
    protocol: str,
    request: wire.Message,
    expected: type[M],
    *,
    timeout: float,
    limits: wire.WireLimits,
    max_frame: int,
    view_tail: bool = False,
) -> tuple[M, int]:
    """Send ``request`` to ``peer_id`` and return the decoded reply and its size in bytes.

    ``timeout`` covers everything, connecting included. Raises a ``WalrusError`` on any failure:
    ``RequestTimeoutError``, ``PeerUnreachableError``, ``RemoteError`` (the peer refused, with
    its reason) or ``WireError`` (a malformed or unexpected reply). ``view_tail``: see
    :func:`walrus_p2p.core.wire.decode`.
    """
    # A sliver in the request is written from where it lies, not copied into the encoding.
    head, tail = wire.encode_parts(request, limits=limits)
    TRAFFIC.count(type(request).__name__, len(head) + len(tail))
    reply: bytes | bytearray | None = None
    with trio.move_on_after(timeout):
        await connect(peer_id, timeout)
        reply = await host.request(
            peer_id,
            protocol,
            tail,
            prefix=head,
            timeout=timeout,
            max_request=max_frame,
            max_reply=max_frame,
        )
    if reply is None:
        raise RequestTimeoutError(
            f"{type(request).__name__} to peer={peer_id[:12]} timed out after {timeout:g}s"
        )
    return wire.decode(reply, expected, limits=limits, view_tail=view_tail), len(reply)
