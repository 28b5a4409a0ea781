"""Load shedding: at most N requests of a kind in flight, the rest refused at once with 429.

Refusing immediately (instead of queueing) keeps the gateway's memory bounded (each write buffers
up to ``max_body`` bytes, each read a whole blob) and tells clients to back off with
``Retry-After``. The token is held until the whole response, streamed body included, has been
sent, and is released in ``finally`` so that a dropped connection or a cancelled request cannot
leak it.
"""

from __future__ import annotations

import trio
from starlette.types import ASGIApp, Receive, Scope, Send

from walrus_p2p.api._errors import error_response


class Admission:
    """ASGI wrapper admitting at most ``limiter.total_tokens`` concurrent requests to ``app``."""

    def __init__(
        self, app: ASGIApp, limiter: trio.CapacityLimiter, *, kind: str, retry_after_seconds: int
    ) -> None:
        self._app = app
        self._limiter = limiter
        self._kind = kind
        self._retry_after = str(retry_after_seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        token = object()
        try:
            self._limiter.acquire_on_behalf_of_nowait(token)
        except trio.WouldBlock:
            response = error_response(
                429,
                "TOO_MANY_REQUESTS",
                f"too many {self._kind} requests in flight; retry later",
                {"Retry-After": self._retry_after},
            )
            await response(scope, receive, send)
            return
        try:
            await self._app(scope, receive, send)
        finally:
            self._limiter.release_on_behalf_of(token)
