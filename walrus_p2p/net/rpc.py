"""Request/reply over libp2p streams: one stream per request, bytes in, bytes out.

Wire format on a request stream (all frames are :mod:`framing` frames)::

    client -> server   frame(request payload), then FIN
    server -> client   frame(status byte + body), then FIN

``status`` 0 means the body is the handler's reply. ``status`` 1 means the request failed at this
layer: the body is ``REASON`` (ASCII, UPPER_SNAKE) ``\\x00`` message (UTF-8). The node layer above
maps its own errors to ordinary replies; this status byte exists so a crashed handler, a request
above the size cap or a handler timeout reaches the client as :class:`RemoteError` with a reason
instead of a bare reset. Unexpected handler exceptions go out as ``INTERNAL`` without details
(docs/design.md §12, "Errors"); :class:`WalrusError` subclasses go out with their reason and
message.

Every stream is closed (or reset after a failure) in ``finally``: yamux stops opening streams on
a connection after 256 unclosed ones (docs/design.md §7).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from walrus_p2p.core.wire import HEAD_PEEK_BYTES, message_name
from walrus_p2p.errors import (
    NetworkError,
    PeerUnreachableError,
    RemoteError,
    RequestTimeoutError,
    WalrusError,
    WireError,
)
from walrus_p2p.net.framing import (
    StreamEndedError,
    read_exactly,
    read_header,
    write_frame,
)
from walrus_p2p.net.inbound import InboundBudget
from walrus_p2p.net.stream import Stream
from walrus_p2p.net.traffic import TRAFFIC
from walrus_p2p.types import PeerId

logger = logging.getLogger(__name__)

Handler = Callable[[bytes | bytearray, PeerId], Awaitable[bytes]]
"""``async def handler(payload, remote_peer_id) -> reply``; a payload of
:data:`walrus_p2p.core.memory.MIN_HUGE_BYTES` or more is the ``bytearray`` it was received into
(:func:`walrus_p2p.net.framing.read_exactly`)."""

STATUS_OK = 0
STATUS_ERROR = 1
MAX_ERROR_BODY = 1024
_REASON = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")

REFUSED_LINGER = 1.0
"""Seconds a stream refused before its request was read stays open for the error reply to
reach the client, before it is reset (so a sender that keeps writing is not buffered)."""

DEFAULT_MAX_REQUEST = 4 * 1024 * 1024
DEFAULT_MAX_REPLY = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class HandlerLimits:
    """Per-protocol server limits.

    ``max_request``: largest request payload accepted (checked on the header, before reading).
    ``read_timeout``: deadline for the whole request frame to arrive (slow-loris guard).
    ``handler_timeout``: deadline for the handler itself; on expiry the client gets ``TIMEOUT``.
    ``max_concurrent``: requests of this protocol served at once; further ones wait.
    ``request_cap``: given the first :data:`wire.HEAD_PEEK_BYTES` bytes of a request (fewer if
    it is shorter), the largest size a request of that kind may have
    (:func:`walrus_p2p.core.wire.max_size_for_head`); a bigger frame is refused before the
    rest is read or budgeted. ``None``: ``max_request`` is the only cap.
    """

    max_request: int = DEFAULT_MAX_REQUEST
    read_timeout: float = 30.0
    handler_timeout: float = 120.0
    max_concurrent: int = 64
    max_reply: int = 2**32 - 2
    request_cap: Callable[[bytes], int] | None = None


def encode_error(reason: str, message: str) -> bytes:
    if not _REASON.match(reason):
        reason = "INTERNAL"
    body = reason.encode("ascii") + b"\x00" + message.encode("utf-8", "replace")
    return bytes([STATUS_ERROR]) + body[:MAX_ERROR_BODY]


def decode_reply(frame: bytes | bytearray) -> bytes | bytearray:
    """Return the reply body, or raise the :class:`RemoteError` the server sent."""
    if not frame:
        raise WireError("empty reply frame")
    return decode_reply_parts(frame[0], frame[1:])


async def read_reply(stream: Stream, *, max_size: int) -> tuple[int, bytes | bytearray]:
    """Read one reply frame as its status byte and its body (for :func:`decode_reply_parts`),
    reading the status byte on its own so that a multi-megabyte body is not copied once more
    to drop it."""
    size = await read_header(stream, max_size=max_size + 1)
    if size == 0:
        raise WireError("empty reply frame")
    status = await read_exactly(stream, 1, "status")
    return status[0], await read_exactly(stream, size - 1, "body")


def decode_reply_parts(status: int, body: bytes | bytearray) -> bytes | bytearray:
    """:func:`decode_reply` for a status byte and a body read apart."""
    if status == STATUS_OK:
        return body
    if status != STATUS_ERROR:
        raise WireError(f"unknown reply status byte {status}")
    reason_bytes, separator, message_bytes = body.partition(b"\x00")
    reason = reason_bytes.decode("ascii", "replace")
    if not separator or not _REASON.match(reason):
        raise WireError("malformed error reply")
    message = message_bytes.decode("utf-8", "replace")
    raise RemoteError(message or reason, reason=reason)


async def _send_error(stream: Stream, reason: str, message: str) -> bool:
    """Send an error reply; True if it was written. The stream is then closed, not reset: a
    yamux RST can overtake the reply in the remote's buffer and the client would see only
    the reset."""
    frame = encode_error(reason, message)
    try:
        with trio.move_on_after(5.0):
            await write_frame(stream, frame, max_size=len(frame))
            return True
    except WalrusError as error:
        logger.debug(
            "could not send error reply peer=%s error=%s", stream.remote_peer_id[:12], error
        )
    return False


async def serve_stream(
    stream: Stream,
    handler: Handler,
    limits: HandlerLimits,
    limiter: trio.CapacityLimiter,
    budget: InboundBudget,
) -> None:
    """Serve one request stream. Never raises (except cancellation); always closes the stream.

    ``budget`` (the host's, :mod:`walrus_p2p.net.inbound`) admits the stream and grants the
    request's announced size before its body is read; a stream beyond the remote's or the
    host's stream limit is answered ``BUSY`` at once."""
    peer = stream.remote_peer_id
    protocol = stream.protocol_id
    refused = budget.admit(peer)
    if refused is not None:
        logger.info(
            "request stream refused peer=%s protocol=%s limit=%s", peer[:12], protocol, refused
        )
        try:
            await _send_error(stream, "BUSY", f"too many request streams ({refused}); retry later")
        finally:
            await stream.close_then_reset(REFUSED_LINGER)
        return
    granted = 0
    ok = False
    request: bytes | bytearray | None = None
    try:
        try:
            with trio.move_on_after(limits.read_timeout):
                size = await read_header(stream, max_size=limits.max_request)
                head = b""
                if limits.request_cap is not None:
                    head = bytes(await read_exactly(stream, min(size, HEAD_PEEK_BYTES), "head"))
                    cap = limits.request_cap(head)
                    if size > cap:
                        budget.counts["refused", "request_type_size"] += 1
                        raise WireError(f"request of {size} bytes exceeds {cap} for its type")
                await budget.reserve(peer, size)
                granted = size
                request = await read_exactly(stream, size, "body", start=head)
        except WireError as error:
            logger.info("rejected request peer=%s protocol=%s error=%s", peer[:12], protocol, error)
            ok = await _send_error(stream, WireError.reason, str(error))
            return
        except NetworkError as error:
            logger.info(
                "request not received peer=%s protocol=%s error=%s", peer[:12], protocol, error
            )
            return
        if request is None:
            logger.info("request read timed out peer=%s protocol=%s", peer[:12], protocol)
            ok = await _send_error(
                stream, RequestTimeoutError.reason, "request not received in time"
            )
            return

        reply: bytes | None = None
        async with limiter:
            try:
                with trio.move_on_after(limits.handler_timeout):
                    reply = await handler(request, peer)
            except WalrusError as error:
                logger.info(
                    "handler failed peer=%s protocol=%s reason=%s error=%s",
                    peer[:12],
                    protocol,
                    error.reason,
                    error,
                )
                ok = await _send_error(stream, error.reason, error.message)
                return
            except Exception:
                logger.exception("handler crashed peer=%s protocol=%s", peer[:12], protocol)
                ok = await _send_error(stream, WalrusError.reason, "internal error")
                return
        if reply is None:
            logger.warning("handler timed out peer=%s protocol=%s", peer[:12], protocol)
            ok = await _send_error(stream, RequestTimeoutError.reason, "handler timed out")
            return
        if not isinstance(reply, bytes | bytearray | memoryview):
            logger.error("handler returned %s, not bytes protocol=%s", type(reply), protocol)
            ok = await _send_error(stream, WalrusError.reason, "internal error")
            return
        if len(reply) > limits.max_reply:
            logger.error("reply too large protocol=%s size=%d", protocol, len(reply))
            ok = await _send_error(stream, WalrusError.reason, "internal error")
            return
        written = False
        try:
            with trio.move_on_after(limits.read_timeout + len(reply) / 1_000_000):
                await write_frame(stream, reply, max_size=len(reply) + 1, prefix=bytes([STATUS_OK]))
                TRAFFIC.count(f"reply:{message_name(reply) or '?'}", len(reply) + 1)
                written = True
        except (NetworkError, WireError) as error:
            logger.info(
                "reply not delivered peer=%s protocol=%s error=%s", peer[:12], protocol, error
            )
            return
        if not written:
            logger.info("reply write timed out peer=%s protocol=%s", peer[:12], protocol)
            return
        ok = True
    except Exception:
        # Anything escaping here would reach libp2p's connection nursery and take the
        # connection (or the host) down with it.
        logger.exception("request stream failed peer=%s protocol=%s", peer[:12], protocol)
    finally:
        budget.leave(peer, granted)
        if ok and request is None:
            await stream.close_then_reset(REFUSED_LINGER)
        elif ok:
            await stream.close()
        else:
            await stream.reset()


async def exchange(
    stream: Stream,
    payload: bytes | memoryview,
    *,
    max_request: int,
    max_reply: int,
    prefix: bytes = b"",
) -> bytes | bytearray:
    """Send one request, ``prefix + payload``, and read its reply on an open stream (no
    deadline of its own). A big reply is the ``bytearray`` it was received into.

    The request is written in a task of its own while the reply is awaited: a server that
    rejects an oversized request answers at once and stops reading, and a writer blocked on the
    muxer's flow-control window must not keep the client from seeing that answer.
    """
    write_error: list[WalrusError] = []

    async def send() -> None:
        try:
            await write_frame(stream, payload, max_size=max_request, prefix=prefix)
            await stream.close_write()
        except WalrusError as error:
            write_error.append(error)

    if len(prefix) + len(payload) > max_request:
        raise WireError(f"request too large: size={len(prefix) + len(payload)} max={max_request}")
    reply: tuple[int, bytes | bytearray] | None = None
    read_error: WalrusError | None = None
    # Errors are caught inside the nursery body: trio wraps anything escaping it in an
    # ExceptionGroup (strict_exception_groups), which callers should never see.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        try:
            reply = await read_reply(stream, max_size=max_reply)
        except WalrusError as error:
            read_error = error
        nursery.cancel_scope.cancel()
    if reply is None:
        if isinstance(read_error, NetworkError) and write_error:
            raise write_error[0]
        if read_error is None:  # pragma: no cover - read_reply returns or raises
            raise NetworkError("no reply")
        if isinstance(read_error, StreamEndedError):
            raise PeerUnreachableError(
                f"peer={stream.remote_peer_id[:12]} closed the stream before replying "
                f"({read_error})"
            ) from read_error
        raise read_error
    return decode_reply_parts(*reply)
