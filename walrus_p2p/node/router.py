"""Request routing of a storage peer: one handler per request type, composed from its services.

docs/design.md §11.1. Every service of the peer (slivers, records, epochs, healing, migration)
registers the request types it answers with :meth:`Router.add`; a type has exactly one handler.
The router decodes each request on the storage protocol, checks the remote's control-plane rate,
calls the handler, counts the outcome and encodes the reply. Tests and fault injection replace
a handler through :meth:`Router.replace` (and get the original back to wrap it), never by
patching a service's private members.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from walrus_p2p.core import memory, wire
from walrus_p2p.errors import WalrusError, WireError
from walrus_p2p.node.metrics import PeerMetrics
from walrus_p2p.node.protocol import ProtocolRefusal
from walrus_p2p.node.ratelimit import RequestRates
from walrus_p2p.types import PeerId

logger = logging.getLogger(__name__)

RequestHandler = Callable[[Any, PeerId], Awaitable[Any]]
"""``await handler(request, remote)`` returns the reply message or raises a WalrusError."""


class Router:
    """Request type -> handler, and the dispatch of one request on the storage protocol."""

    def __init__(
        self, *, limits: wire.WireLimits, metrics: PeerMetrics, rates: RequestRates
    ) -> None:
        self.limits = limits
        self.metrics = metrics
        self.rates = rates
        self._handlers: dict[type[wire.Message], RequestHandler] = {}

    def add(self, message_type: type[wire.Message], handler: RequestHandler) -> None:
        """Serve ``message_type`` with ``handler``; a type already served raises ValueError."""
        if message_type in self._handlers:
            raise ValueError(f"{message_type.__name__} already has a handler")
        self._handlers[message_type] = handler

    def replace(self, message_type: type[wire.Message], handler: RequestHandler) -> RequestHandler:
        """Swap the handler of a served type (tests, fault injection); returns the old one."""
        original = self.handler(message_type)
        self._handlers[message_type] = handler
        return original

    def handler(self, message_type: type[wire.Message]) -> RequestHandler:
        try:
            return self._handlers[message_type]
        except KeyError:
            raise KeyError(f"no handler for {message_type.__name__}") from None

    @property
    def request_types(self) -> tuple[type[wire.Message], ...]:
        return tuple(self._handlers)

    def request_cap(self, head: bytes) -> int:
        """The largest request of the type ``head`` names (the rpc layer refuses a bigger
        frame before reading it: docs/network.md, "Inbound limits")."""
        return wire.max_size_for_head(head, self.request_types, limits=self.limits)

    def check_rate(self, remote: PeerId, kind: str) -> None:
        """Refuse a control-plane request beyond the remote's rate (node/ratelimit.py)."""
        if not self.rates.allow(remote, kind):
            raise ProtocolRefusal("RATE_LIMITED", f"too many {kind} from this peer; retry later")

    async def dispatch(self, payload: bytes | bytearray, remote: PeerId) -> bytes:
        """Decode, dispatch, encode. Errors propagate to the rpc layer, which sends the reason."""
        types = self.request_types
        try:
            # A sliver to store is checked and written, never kept: it stays a view of the
            # received frame (no 13 MiB copy into fresh memory per sliver). Other requests get
            # bytes of their own.
            big = len(payload) >= memory.MIN_HUGE_BYTES
            request = wire.decode(payload, types, limits=self.limits, view_tail=big)
            if big and not isinstance(request, wire.StoreSliverRequest):
                request = wire.decode(payload, types, limits=self.limits)
        except WireError:
            self.metrics.requests.labels(type="malformed", outcome="WIRE_MALFORMED").inc()
            self.metrics.errors.labels(reason="WIRE_MALFORMED").inc()
            raise
        kind = type(request).__name__
        handler = self._handlers[type(request)]
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
