"""Serving an ASGI app over HTTP on trio: one runner for the storage peer's metrics endpoint and
the gateway, with the bounds a server open to strangers needs (docs/http-api.md, "Limits").

Hypercorn's trio worker speaks HTTP/1.1 and h2 for us, but its ``serve`` has no bound on open
connections and writes to a socket inside a shielded cancel scope, so a client that stops reading
would hold a connection, and whatever the request holds, forever. ``serve_http`` therefore runs
its own accept loop and hands each connection to hypercorn's per-connection server
(``TCPServer``), with:

- a connection slot taken before ``accept``: at ``max_connections`` the loop stops accepting and
  new connections wait in the kernel's listen backlog (no memory of ours) until one closes;
- the socket stream wrapped so that each write must finish within ``send_timeout`` (the deadline
  sits inside hypercorn's shield, so it fires) or the connection is closed; reads are made in
  pieces of at most ``RECEIVE_CHUNK`` bytes;
- hypercorn's ``keep_alive_timeout`` set to ``header_timeout``: hypercorn starts that timer when a
  connection opens and again when a response ends, and stops it only once a whole request head
  has arrived, so it is a deadline for the head, however slowly its bytes trickle in
  (slowloris), and for an idle keep-alive connection;
- the request head bounded by ``max_header_bytes`` (h11 answers 431 and closes; h2 refuses a
  larger header list);
- each ``http.response.body`` send of the app bounded by ``send_timeout`` too, which covers an h2
  stream whose client never opens its flow-control window (that wait is not a socket write), and
  a request body the app left unread closed with its connection (see `bounded_app`).

This leans on hypercorn internals (``TCPServer``, ``WorkerContext``, ``wrap_app``), so it is
written for one hypercorn minor version, :data:`HYPERCORN_SERIES`: pyproject.toml pins it, a
warning is logged at start on any other version, and tests/unit/test_gateway_limits.py fails
when the installed version moves (and its slow-client tests fail if the wrapper stops working).

Hypercorn's ``read_timeout`` (a bound on each socket read) stays off: a client legitimately sends
nothing while a long download or a slow store runs, so it would cut honest requests, while the
head deadline above and the gateway's body timeout already bound the client's turns to send.
"""

from __future__ import annotations

import errno
import importlib.metadata
import logging
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from walrus_p2p.errors import ConfigError

logger = logging.getLogger(__name__)

HYPERCORN_SERIES = "0.18"
"""The hypercorn minor version whose internals ``serve_http`` uses."""


def hypercorn_is_supported() -> bool:
    """True when the installed hypercorn is of :data:`HYPERCORN_SERIES`."""
    version = importlib.metadata.version("hypercorn")
    return version == HYPERCORN_SERIES or version.startswith(HYPERCORN_SERIES + ".")


DEFAULT_MAX_CONNECTIONS = 1024
"""Open connections at once; see docs/http-api.md, "Limits" (at most about 200 KiB of ours each)."""
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
"""The request line and headers together; real clients send well under 2 KiB."""
DEFAULT_HEADER_TIMEOUT_SECONDS = 10.0
"""From connect (or the end of the previous response) to a complete request head."""
DEFAULT_SEND_TIMEOUT_SECONDS = 30.0
"""Each socket write (at most one 64 KiB response piece): a reader slower than ~2 KiB/s is cut."""

RECEIVE_CHUNK = 16 * 1024
"""Largest socket read handed to hypercorn; with ``APP_QUEUE_MESSAGES`` it bounds the request
body a connection can have queued for an app that is not reading it (64 KiB)."""
APP_QUEUE_MESSAGES = 4
"""Body messages hypercorn queues for an app before it stops reading the socket."""
H2_MAX_CONCURRENT_STREAMS = 32
"""Requests one h2 connection may have open at once (hypercorn's default is 100)."""
FD_RESERVE = 64
"""File descriptors kept for everything but HTTP connections when checking the process limit."""
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_RETRY_SECONDS = 0.1
_ABANDON_SECONDS = 1.0
"""How long an unread request body is taken and dropped before its connection is closed."""
_CONNECTION_KEY = "walrus_p2p.connection"


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Per-server and per-connection bounds of `serve_http`; bad values raise ``ConfigError``."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    header_timeout_seconds: float = DEFAULT_HEADER_TIMEOUT_SECONDS
    send_timeout_seconds: float = DEFAULT_SEND_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ConfigError(f"max_connections must be >= 1, got {self.max_connections}")
        if self.max_header_bytes < 1024:
            # Below this even an ordinary request head from curl or a browser would not fit.
            raise ConfigError(f"max_header_bytes must be >= 1024, got {self.max_header_bytes}")
        for name in ("header_timeout_seconds", "send_timeout_seconds"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value}")


class SendDeadlineStream(trio.abc.HalfCloseableStream):
    """A socket stream whose writes must finish within a deadline, else it is closed.

    Hypercorn writes inside a shielded cancel scope (so that a cancelled app cannot cut a frame
    in half); the deadline here is an inner scope, which a shield does not stop. A timed-out
    write closes the socket and raises ``trio.BrokenResourceError``, which hypercorn takes as the
    client having gone away: the request's app gets ``http.disconnect`` and ends.

    Writes and the final ``send_eof`` take turns: hypercorn may end a connection from its reader
    task while the app's task is writing, and trio refuses two senders on one stream.
    """

    def __init__(
        self,
        stream: trio.SocketStream,
        send_timeout: float,
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        self._stream = stream
        self._send_timeout = send_timeout
        self._on_timeout = on_timeout
        self._sending = trio.Lock()

    @property
    def socket(self) -> trio.socket.SocketType:
        """Hypercorn reads the peer's address from here."""
        return self._stream.socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with trio.move_on_after(self._send_timeout) as deadline:
            async with self._sending:
                await self._stream.send_all(data)
        if deadline.cancelled_caught:
            if self._on_timeout is not None:
                self._on_timeout()
            await trio.aclose_forcefully(self._stream)
            raise trio.BrokenResourceError(f"a write did not finish in {self._send_timeout} s")

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        limit = RECEIVE_CHUNK if max_bytes is None else min(max_bytes, RECEIVE_CHUNK)
        return await self._stream.receive_some(limit)

    async def send_eof(self) -> None:
        async with self._sending:
            await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def abort(self) -> None:
        """Close the socket now; hypercorn's reader then sees the connection gone."""
        await trio.aclose_forcefully(self._stream)


def bounded_app(app: Any, send_timeout: float) -> Any:
    """The ASGI ``app`` with the per-request bounds `serve_http` adds.

    - Each ``http.response.body`` send must finish within ``send_timeout``, else the app gets
      ``trio.TooSlowError`` and ends (releasing whatever it holds). Over HTTP/1.1 the socket
      deadline of `SendDeadlineStream` fires first; this one covers h2, where a send waits on
      the client's flow-control window instead.
    - A request body the app leaves unread (a refusal, an error, a GET with a body) is taken from
      hypercorn's queue and dropped while the response ends, and the connection is closed if the
      body is still arriving a second later; the response says ``Connection: close``. Without
      this, hypercorn deadlocks: with the queue full, its reader waits to queue more body while
      the end of the response waits to queue ``http.disconnect`` behind it, so the connection
      would stay open forever, whatever its deadlines.
    """

    async def bounded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        body_done = not _declares_body(scope)

        async def tracking_receive() -> Any:
            nonlocal body_done
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                body_done = True
            return message

        async def drop_body() -> None:
            nonlocal body_done
            await _abandon_body(scope, receive)
            body_done = True

        async def bounded_send(message: Any) -> None:
            if message["type"] == "http.response.start" and not body_done:
                message = _closing(message, scope)
            if message["type"] != "http.response.body":
                await send(message)
                return
            with trio.fail_after(send_timeout):
                if body_done or message.get("more_body", False):
                    await send(message)
                    return
                # The last piece of the response ends the request inside hypercorn, which then
                # queues http.disconnect behind the unread body: drop the body meanwhile.
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(drop_body)
                    await send(message)

        try:
            await app(scope, tracking_receive, bounded_send)
        finally:
            if not body_done:
                await _abandon_body(scope, receive)

    return bounded


def _closing(start: Any, scope: Any) -> Any:
    """The response start with ``Connection: close`` (HTTP/1 only; h2 has no such header).

    A response that starts before the request body was read ends the connection (the rest of
    the body is dropped, see `bounded_app`); saying so keeps the client from sending its next
    request on a connection about to close.
    """
    if scope.get("http_version") not in ("1.0", "1.1"):
        return start
    headers = list(start.get("headers", []))
    if not any(name.lower() == b"connection" for name, _ in headers):
        headers.append((b"connection", b"close"))
    return {**start, "headers": headers}


def _declares_body(scope: Any) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def _abandon_body(scope: Any, receive: Callable[[], Awaitable[Any]]) -> None:
    """Take (and drop) what is left of an unread request body, for a short while at most.

    A small body is already queued and is taken at once, so the connection ends normally and
    the client reads the response. A body still arriving after ``_ABANDON_SECONDS`` has its
    connection closed; closing first would reset the connection under a response the client
    has not read yet (the kernel answers unread input with a reset).
    """
    connection = scope.get("state", {}).get(_CONNECTION_KEY)
    with trio.CancelScope(shield=True):
        with trio.move_on_after(_ABANDON_SECONDS):
            if await _drain_body(receive):
                return
        with trio.move_on_after(_ABANDON_SECONDS):
            if isinstance(connection, SendDeadlineStream):
                await connection.abort()
            await _drain_body(receive)


async def _drain_body(receive: Callable[[], Awaitable[Any]]) -> bool:
    """Receive until the body ends or the client is gone; True once that happened."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return True


def hypercorn_config(bind: str, limits: HttpLimits) -> HypercornConfig:
    """Hypercorn's settings for `serve_http` (the ones it applies per connection)."""
    config = HypercornConfig()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = None
    config.h11_max_incomplete_size = limits.max_header_bytes
    config.h2_max_header_list_size = limits.max_header_bytes
    config.h2_max_concurrent_streams = H2_MAX_CONCURRENT_STREAMS
    config.keep_alive_timeout = limits.header_timeout_seconds
    config.read_timeout = None
    config.max_app_queue_size = APP_QUEUE_MESSAGES
    return config


@dataclass
class ConnectionStats:
    """What `serve_http` did with connections since it started (read by tests and benches)."""

    open: int = 0
    accepted: int = 0
    send_timeouts: int = 0
    waited_for_slot: int = 0
    """Times the accept loop found every connection slot taken."""


async def serve_http(
    app: Any,
    bind: str,
    *,
    limits: HttpLimits | None = None,
    stats: ConnectionStats | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an ASGI app with hypercorn's HTTP protocols until cancelled (started: bound URLs).

    ``bind`` is "host:port" (port 0 picks one). Cancelling closes every connection at once.
    """
    limits = limits or HttpLimits()
    stats = stats if stats is not None else ConnectionStats()
    if not hypercorn_is_supported():
        logger.warning(
            "hypercorn %s: serve_http was written for %s.x and uses its TCPServer directly; "
            'check the connection limits (docs/http-api.md, "Limits")',
            importlib.metadata.version("hypercorn"),
            HYPERCORN_SERIES,
        )
    config = hypercorn_config(bind, limits)
    try:
        sockets = config.create_sockets()
    except OSError as error:
        raise ConfigError(f"cannot listen on {bind}: {error.strerror or error}") from error
    listeners = []
    urls = []
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        urls.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
    wrapped = wrap_app(bounded_app(app, limits.send_timeout_seconds), 0, "asgi")
    context = WorkerContext(None)
    slots = trio.Semaphore(limits.max_connections)

    async def connection(stream: trio.SocketStream) -> None:
        def timed_out() -> None:
            stats.send_timeouts += 1

        stats.open += 1
        stats.accepted += 1
        guarded = SendDeadlineStream(stream, limits.send_timeout_seconds, timed_out)
        try:
            state = ConnectionState({_CONNECTION_KEY: guarded})
            # Hypercorn annotates the stream as TLS, but takes any stream without a handshake
            # as plain TCP (hypercorn.serve passes trio.SocketStream the same way).
            await TCPServer(wrapped, config, context, state, guarded)  # type: ignore[arg-type]
        finally:
            stats.open -= 1
            slots.release()
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, slots, stats, nursery, connection)
        task_status.started(urls)


async def _accept_loop(
    listener: trio.SocketListener,
    slots: trio.Semaphore,
    stats: ConnectionStats,
    nursery: trio.Nursery,
    connection: Callable[[trio.SocketStream], Awaitable[None]],
) -> None:
    """Accept a connection only when a slot is free; the connection's task gives it back."""
    while True:
        if slots.value == 0:
            stats.waited_for_slot += 1
        await slots.acquire()
        try:
            stream = await listener.accept()
        except OSError as error:
            slots.release()
            if error.errno not in _ACCEPT_RETRY_ERRNOS:
                raise
            # Out of file descriptors or kernel memory: accepting again at once would spin.
            logger.warning("accept failed, retrying shortly error=%s", error)
            await trio.sleep(_ACCEPT_RETRY_SECONDS)
            continue
        except BaseException:
            slots.release()
            raise
        nursery.start_soon(connection, stream)


def warn_if_few_file_descriptors(max_connections: int) -> None:
    """Each connection is a file descriptor: say so if the process may run out before the cap."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < max_connections + FD_RESERVE:
        logger.warning(
            "the open file limit (%d) is below max_connections (%d) + %d; connections past it "
            "wait until others close (raise it with ulimit -n)",
            soft,
            max_connections,
            FD_RESERVE,
        )
