"""An ASGI app served for real on 127.0.0.1 (hypercorn, trio worker), with an httpx client in
front of it: the gateway tests' harness."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio

from walrus_p2p.net.http import serve_http

TIMEOUT = 10.0


@asynccontextmanager
async def open_app_client(app: Any, timeout: float = TIMEOUT) -> AsyncIterator[httpx.AsyncClient]:
    """Serve ``app`` on a free loopback port until the block ends; yield a client of it."""
    async with trio.open_nursery() as nursery:
        with trio.fail_after(timeout):
            urls = await nursery.start(serve_http, app, "127.0.0.1:0")
        async with httpx.AsyncClient(base_url=urls[0], timeout=timeout) as client:
            yield client
        nursery.cancel_scope.cancel()
