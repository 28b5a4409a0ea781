"""Every change this project makes to py-libp2p, in one place (docs/network.md, "libp2p
patches"): one :func:`install`, a check of the library version they were written for, a switch
to run without the tuning, and :func:`live` to see which are in effect.

Two kinds. **Fixes** keep a peer correct and are always installed (each one checks first that
the library still has what it replaces, and logs a warning and skips itself if not):

- ``shielded-yamux-writes``: a yamux frame write is not cancelled half-way (:class:`ShieldedYamux`).

**Tuning** makes the library cheap enough for a 2-core machine and changes nothing on the wire
that yamux does not leave to each side. It is installed only on py-libp2p
:data:`LIBP2P_VERSION` (on any other version the process runs without it and says so in a
warning), and not at all with ``WALRUS_LIBP2P_TUNING=off`` in the environment (to compare, or
to rule the tuning out when hunting a bug). Settings 1-9 below come from ``bench/transport.py``
and the 20-peer profiles; 10 is the dial delay.

What each one does (the measured effect of each, dated, is in docs/network.md, "libp2p
patches"; ``bench/transport.py`` measures it again):

1. **One Noise message per yamux frame.** yamux sends DATA frames of up to 64 KiB of payload
   (``MAX_MESSAGE_SIZE``, 12-byte header included), but a Noise transport message holds at most
   65,519 bytes of plaintext, so every full frame went out as two Noise messages, the second of
   17 bytes: two encryptions, two socket writes and two reads at the other end. The frame limit
   is lowered to the Noise limit. The remote sees ordinary, slightly smaller frames.
2. **Window credit in batches.** py-libp2p's reader sends a WINDOW_UPDATE after nearly every
   read (its "partial slack" and "release on read" rules), so a receiver answered each 64 KiB
   DATA frame with an encrypted frame of its own, and the writer handled it. Credit now goes
   back only once at least half of the receive window has been consumed: go-yamux's rule, and
   the first rule of py-libp2p's own method, whose window auto-tuning is kept. A writer never
   waits for it unless the reader stops reading (then more than half the window is buffered).
3. **Buffered socket reads.** ``TrioTCPStream.read(n)`` asked the kernel for exactly ``n``
   bytes: one ``recv`` for every 2-byte Noise length prefix and at least one for each body. It
   now receives up to 256 KiB at a time and serves later reads from what it holds, returning at
   most ``n`` bytes as before (``read`` is "up to n bytes").
4. **Fewer copies of received bytes.** Each received byte was copied about ten times between
   the socket and the caller. ``SecureSession.read`` kept the rest of a decrypted Noise message
   in a ``BytesIO`` (a slice, a write, and a copy out again); it now keeps the message itself
   and an offset. ``read_exactly``, as yamux and the Noise packet reader use it, accumulated
   into a ``bytearray`` and copied that into ``bytes`` even when the first read returned every
   byte asked for; that case now returns the bytes as they came.
5. **Freed memory stays in the process.** Every sliver sent or received passes through several
   fresh multi-megabyte buffers (CBOR, framing, Noise). glibc serves those with ``mmap`` and gives
   them back on ``free``, so each one is paid again in page faults (a sliver reply's encoding
   and framing were dominated by them). With the thresholds below (``mallopt``; without glibc
   nothing changes) freed heap is reused; the price is that up to ``TRIM_THRESHOLD`` bytes of
   freed heap stay resident.
6. **Fewer trips through the scheduler.** The locks py-libp2p takes for every frame become
   :class:`_QuickLock` (free: taken at once; held: waited for as before), a yamux stream's
   write lock is one of them, yamux's ``PY_YAMUX_*`` variables are read once, and a DATA body
   already decrypted is read without a cancel scope of its own.
7. **Signed peer records checked once a minute** in pubsub (:func:`_consume_signed_record`).
8. **The own signed peer record built once a minute** (:func:`_envelope_for_rpc`): pubsub,
   gossipsub and the DHT attach it to every RPC they send, and the library rebuilt the host's
   address list (multiaddr parsing) for each one to check that the cached record was current:
   ~19 % of a peer's CPU in a 20-peer epoch change (docs/network.md, "Gossip cost").
9. **Bytes written to TCP are counted** (:data:`walrus_p2p.net.traffic.TRAFFIC`), for the
   network-wide traffic figures of ``bench/epochs.py``: one integer addition per write.
10. **No happy-eyeballs pause**: the swarm waited 250 ms before *every* dial
    (``swarm._HAPPY_EYEBALLS_DELAY``), also with a single address to try.
11. **Refused connections are counted** (:func:`count_connection_refusals`): the swarm closes
    an inbound connection beyond its cap, fails one whose handshake fails or comes too late, and
    trims a peer's connections beyond the per-peer limit, and says so only in debug logs; each
    now adds one to the host's inbound counts (``walrus_inbound_total{outcome="refused"}``,
    reasons ``connection_cap``, ``connection_handshake``, ``connection_per_peer``).

Setting 5 (the allocator) is not part of :func:`install`: it changes ``malloc`` for the whole
process, so only the storage peer's runner calls :func:`tune_allocator` (and the benches that
stand for one). Two more library values are set per use, through this module too:
:func:`set_subscription_queue_size` and :func:`set_failed_dial_block`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.metadata
import logging
import os
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.io import msgio as libp2p_msgio
from libp2p.io import trio as libp2p_io_trio
from libp2p.io import utils as libp2p_io_utils
from libp2p.io.exceptions import ConnectionClosedError, IncompleteReadError
from libp2p.kad_dht import kad_dht as kad_dht_module
from libp2p.kad_dht import peer_routing as peer_routing_module
from libp2p.network import swarm as swarm_module
from libp2p.network.connection.exceptions import RawConnError
from libp2p.network.stream.net_stream import NetStream
from libp2p.pubsub import gossipsub as gossipsub_module
from libp2p.pubsub import pubsub as pubsub_module
from libp2p.security.noise import io as noise_io
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer import muxer_multistream as muxer_multistream_module
from libp2p.stream_muxer.yamux import yamux as yamux_module

from walrus_p2p.net.traffic import TRAFFIC

logger = logging.getLogger(__name__)

LIBP2P_VERSION = "0.8.1"
"""The py-libp2p release the tuning was written for and measured with."""

TUNING_SWITCH = "WALRUS_LIBP2P_TUNING"
"""Environment variable: ``off`` (or ``0``, ``false``, ``no``) runs without the tuning."""

RECEIVE_SIZE = 256 * 1024
"""Largest single ``recv`` of the buffered socket reader."""

TARGET_WINDOW = 4 * 1024 * 1024
"""Receive window each stream works towards from its first read (the library's cap: 16 MiB)."""

MMAP_THRESHOLD = 32 * 1024 * 1024
"""Allocations below this come from the heap (glibc's largest allowed value on 64-bit)."""
TRIM_THRESHOLD = 128 * 1024 * 1024
"""Freed heap above this much is returned to the system."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator() -> None:
    """Setting 5: keep freed heap in the process (glibc only; elsewhere nothing changes).
    Process-wide, so called by the storage peer's runner, not by :func:`install`."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return  # not glibc
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if not (
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    ):
        logger.debug("mallopt refused the thresholds; allocator left as it was")


def trim_allocator() -> bool:
    """Give freed heap back to the system now (glibc's ``malloc_trim(0)``; False elsewhere).

    Setting 5 keeps up to ``TRIM_THRESHOLD`` bytes of freed heap, and the freed pieces that
    strangers' streams leave behind (a flood of refused or half-open streams) are scattered
    through it, so glibc never trims them on its own: after an attack the peer kept its peak.
    The storage peer's runner calls this every :data:`TRIM_INTERVAL` seconds, which bounds
    how long such memory stays (docs/network.md, "Inbound limits")."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        malloc_trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return False  # not glibc
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    malloc_trim(0)
    return True


TRIM_INTERVAL = 10.0
"""Seconds between two :func:`trim_allocator` calls of a storage peer."""


async def _buffered_read(self: Any, n: int | None = None) -> bytes:
    """``TrioTCPStream.read`` with a receive buffer; same contract and same errors."""
    async with self.read_lock:
        if n == 0:
            return b""
        held: bytes | None = getattr(self, "_walrus_held", None)
        if held:
            position: int = self._walrus_position
            if n is None or n >= len(held) - position:
                self._walrus_held = None
                return held[position:] if position else held
            self._walrus_position = position + n
            return held[position : position + n]
        try:
            data: bytes = await self.stream.receive_some(max(RECEIVE_SIZE, n or 0))
        except trio.BrokenResourceError as error:
            raise ConnectionClosedError(
                f"TCP connection reset by remote peer: {error}", transport="tcp"
            ) from error
        except trio.ClosedResourceError:
            return b""
        if n is None or len(data) <= n:
            return data
        self._walrus_held = data
        self._walrus_position = n
        return data[:n]


async def _read_exactly(reader: Any, n: int, retry_count: int = 100) -> bytes:
    """``libp2p.io.utils.read_exactly`` without the copies when one read suffices."""
    data: bytes = await reader.read(n)
    if len(data) == n:
        return data if type(data) is bytes else bytes(data)
    parts = [data]
    got = len(data)
    for _attempt in range(retry_count):
        if got >= n:
            return b"".join(parts)
        more = await reader.read(n - got)
        parts.append(more)
        got += len(more)
    if got >= n:
        return b"".join(parts)
    raise IncompleteReadError(
        f"Connection closed during read operation: expected {n} bytes but received {got} bytes",
        expected_bytes=n,
        received_bytes=got,
    )


async def _session_read(self: Any, n: int | None = None) -> bytes:
    """``SecureSession.read``, same contract: ``n`` bytes (fewer only if the connection closed
    after some), or with ``n=None`` what is held or else the next message."""
    if n == 0:
        return b""
    held: bytes | None = getattr(self, "_walrus_held", None)
    position: int = getattr(self, "_walrus_position", 0)
    if n is None:
        if held is not None and position < len(held):
            self._walrus_held = None
            return held[position:] if position else held
        message: bytes = await self.conn.read_msg()
        if message == b"":
            raise ConnectionClosedError("Connection closed")
        return message
    parts: list[bytes] = []
    needed = n
    while needed > 0:
        if held is None or position >= len(held):
            held = None
            message = await self.conn.read_msg()
            if message == b"":
                self._walrus_held = None
                if parts:
                    return b"".join(parts)
                raise ConnectionClosedError("Connection closed")
            held, position = message, 0
        take = min(needed, len(held) - position)
        parts.append(held if take == len(held) else held[position : position + take])
        position += take
        needed -= take
    if held is not None and position >= len(held):
        held = None
    self._walrus_held = held
    self._walrus_position = position
    return parts[0] if len(parts) == 1 else b"".join(parts)


class _BatchedCreditStream(yamux_module.YamuxStream):
    """A yamux stream that returns receive credit in batches of at least half its window.

    ``Yamux.open_stream`` and the frame reader build streams through the module name
    ``YamuxStream``, which :func:`install` points here.
    """

    def __init__(self, stream_id: int, conn: Any, is_initiator: bool) -> None:
        super().__init__(stream_id, conn, is_initiator)
        # The library reached about this window after a stream's first few reads, through its
        # auto-tuning of many small updates; with batched credit it would stay at 256 KiB and
        # the writer would poll every 10 ms for credit. The first update grants it.
        self.target_recv_window = max(self.target_recv_window, TARGET_WINDOW)
        self.rw_lock = _ExclusiveWriteLock()  # type: ignore[assignment]

    async def _auto_tune_and_send_window_update(self, *, bytes_read: int = 0) -> None:
        increment = 0
        async with self.window_lock:
            buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
            # What the remote may not send yet although we have read it.
            delta = self.target_recv_window - (self.recv_window + buffered)
            if delta > 0 and delta >= self._grow_threshold():
                increment = self._grow_to_delta(buffered)
                increment += self._apply_autotune_epoch(buffered)
        if increment > 0:
            await self.send_window_update(increment, skip_lock=True)


_original_read_data_body = yamux_module.Yamux._read_data_body
_original_env = yamux_module._py_yamux_env
_original_env_set = yamux_module._py_yamux_env_set


@functools.cache
def _env_once(name: str, default: str = "") -> str:
    """``PY_YAMUX_*`` tuning variables, read once per process (yamux read them from
    ``os.environ`` several times for every frame)."""
    return str(_original_env(name, default))


@functools.cache
def _env_set_once(name: str) -> bool:
    return bool(_original_env_set(name))


async def _read_data_body(self: Any, length: int) -> bytes:
    """``Yamux._read_data_body`` without a cancel scope when the body is already decrypted.

    The library bounds the wait for a DATA frame's body with ``trio.fail_after`` on every
    frame. A frame arrives in one Noise message (setting 1), read together with its header, so
    the body is nearly always held already and the read cannot wait: that case is served
    directly. Otherwise the library's bounded read runs, as before.
    """
    session = self.secured_conn
    held: bytes | None = getattr(session, "_walrus_held", None)
    if held is not None and len(held) - session._walrus_position >= length:
        data: bytes = await _session_read(session, length)
        return data
    body: bytes = await _original_read_data_body(self, length)
    return body


SIGNED_RECORD_REFRESH = 60.0
"""Seconds during which a gossip sender's signed peer record, byte-identical to one this host
already accepted from the same peer, is not verified and stored again."""
_SIGNED_RECORD_CACHE = 1024
"""Accepted records remembered per host (oldest forgotten first)."""

_original_consume_signed_record = gossipsub_module.maybe_consume_signed_record  # type: ignore[attr-defined]
_accepted_records: weakref.WeakKeyDictionary[Any, OrderedDict[tuple[bytes, bytes], float]] = (
    weakref.WeakKeyDictionary()
)


def _consume_signed_record(message: Any, host: Any, peer_id: Any) -> bool:
    """``maybe_consume_signed_record`` for pubsub, verifying each record once a minute.

    Every gossipsub RPC carries its sender's signed peer record, and the library parsed it,
    checked its Ed25519 signature and rewrote the sender's addresses in the peerstore for every
    RPC received, twice (in the pubsub reader and again in gossipsub's RPC handler). A record
    whose exact bytes this host accepted from the same peer less than
    :data:`SIGNED_RECORD_REFRESH` seconds ago is accepted again without that work; any other
    record (new, changed, or one that failed) goes through the library's function.
    """
    if not message.HasField("senderRecord"):
        return True
    accepted = _accepted_records.get(host)
    if accepted is None:
        accepted = _accepted_records[host] = OrderedDict()
    key = (peer_id.to_bytes(), bytes(message.senderRecord))
    now = time.monotonic()
    last = accepted.get(key)
    if last is not None and now - last < SIGNED_RECORD_REFRESH:
        return True
    ok = bool(_original_consume_signed_record(message, host, peer_id))
    if ok:
        accepted[key] = now
        accepted.move_to_end(key)
        while len(accepted) > _SIGNED_RECORD_CACHE:
            accepted.popitem(last=False)
    return ok


_original_env_to_send = pubsub_module.env_to_send_in_RPC  # type: ignore[attr-defined]
_ENVELOPE_MODULES = (pubsub_module, gossipsub_module, kad_dht_module, peer_routing_module)
_own_envelopes: weakref.WeakKeyDictionary[Any, tuple[float, tuple[bytes, bool]]] = (
    weakref.WeakKeyDictionary()
)


def _envelope_for_rpc(host: Any) -> tuple[bytes, bool]:
    """``env_to_send_in_RPC``, asking the library (which rebuilds the host's addresses to see
    whether its cached record is current) at most once per :data:`SIGNED_RECORD_REFRESH`.

    A host's listen addresses change only when it starts listening; within a minute the record
    the library returned last is returned again. Addresses that change are picked up within
    that minute, as the library's own record cache on the receiving side already allows.
    """
    now = time.monotonic()
    cached = _own_envelopes.get(host)
    if cached is not None and now - cached[0] < SIGNED_RECORD_REFRESH:
        return cached[1][0], False
    result: tuple[bytes, bool] = _original_env_to_send(host)
    _own_envelopes[host] = (now, result)
    return result


_original_tcp_write = libp2p_io_trio.TrioTCPStream.write


async def _counted_write(self: Any, data: bytes) -> None:
    """``TrioTCPStream.write``, counting the bytes (:data:`TRAFFIC`)."""
    TRAFFIC.transport_bytes_sent += len(data)
    await _original_tcp_write(self, data)


class _QuickLock:
    """A ``trio.Lock`` that does not yield to the scheduler when it is free.

    ``trio.Lock.acquire`` always passes through the scheduler, taken or not. py-libp2p takes
    about a dozen such locks for every yamux frame (socket, muxer, stream window, stream state;
    about 14 acquisitions per 64 KiB frame counted in a read), nearly always free: each one a
    trip through trio's run loop. Here a free lock is taken at once, as ``acquire_nowait``
    does, and a held one is waited for exactly as before (the underlying ``trio.Lock`` keeps
    its fairness and its errors). A critical section without ``await`` was already atomic
    under trio; one with ``await`` still excludes the others.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = trio.Lock()

    def acquire_nowait(self) -> None:
        self._lock.acquire_nowait()

    async def acquire(self) -> None:
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def statistics(self) -> Any:
        return self._lock.statistics()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()


class _ExclusiveWriteLock:
    """Stands in for a yamux stream's ``ReadWriteLock``, of which yamux takes only the write
    side (one writer per stream at a time): the same exclusion from one :class:`_QuickLock`,
    without the generator-based context manager and the semaphore's scheduler trip."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = _QuickLock()

    def write_lock(self) -> _QuickLock:
        return self._lock

    def read_lock(self) -> _QuickLock:  # unused by yamux; exclusive is the safe reading
        return self._lock


_QUICK_LOCKS: dict[Any, tuple[str, ...]] = {
    yamux_module.Yamux: ("streams_lock", "_write_lock"),
    yamux_module.YamuxStream: ("window_lock", "close_lock"),
    libp2p_io_trio.TrioTCPStream: ("read_lock", "write_lock"),
    NetStream: ("_state_lock",),
}
"""The py-libp2p objects whose locks become :class:`_QuickLock` as they are built."""


def _with_quick_locks(cls: Any, names: tuple[str, ...]) -> None:
    original_init = cls.__init__

    @functools.wraps(original_init)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        for name in names:
            if isinstance(getattr(self, name, None), trio.Lock):
                setattr(self, name, _QuickLock())

    init._walrus_quick_locks = True  # type: ignore[attr-defined]
    cls.__init__ = init


FRAME_WRITE_TIMEOUT = 30.0
"""Upper bound on writing one yamux frame to the socket once it has started."""


class ShieldedYamux(yamux_module.Yamux):
    """Yamux whose frame writes cannot be interrupted half-way.

    ``Yamux._write_frame`` hands each frame to the Noise connection, which encrypts it (using
    up a nonce) and then writes it to the socket. A trio cancellation landing in that write
    (a request timeout, a cancelled writer task) leaves a partial or skipped ciphertext on
    the wire; the remote then fails with "Failed authentication of message" and the whole
    connection, with every other stream on it, dies. Measured here: one cancelled 4 MiB
    request write killed the connection within 0.5 s. The write is shielded; if it still
    does not finish within ``FRAME_WRITE_TIMEOUT`` the connection is closed, since it can no
    longer be trusted to be in sync.
    """

    async def _write_frame(self, data: bytes) -> None:
        finished = False
        with trio.CancelScope(shield=True):
            with trio.move_on_after(FRAME_WRITE_TIMEOUT):
                await super()._write_frame(data)
                finished = True
            if not finished:
                logger.warning("yamux frame write stalled; closing connection")
                with trio.move_on_after(5.0), suppress(Exception):
                    await self.secured_conn.close()
        if not finished:
            raise RawConnError("yamux frame write timed out")
        # A cancellation that arrived while shielded is delivered here, between frames.
        await trio.lowlevel.checkpoint_if_cancelled()


@dataclass(frozen=True, slots=True)
class Patch:
    """One change to the library: what it replaces (``targets``: object and attribute, each
    of which must exist before it is replaced), how to apply it, how to see it in effect."""

    name: str
    fix: bool
    """True: a correctness fix (always installed); False: tuning."""
    targets: tuple[tuple[Any, str], ...]
    apply: Callable[[], None]
    live: Callable[[], bool]


def _set_all(modules: tuple[Any, ...], name: str, value: Any) -> Callable[[], None]:
    def apply() -> None:
        for module in modules:
            setattr(module, name, value)

    return apply


def _all_are(modules: tuple[Any, ...], name: str, value: Any) -> Callable[[], bool]:
    return lambda: all(getattr(module, name, None) is value for module in modules)


def _apply_quick_locks() -> None:
    for cls, names in _QUICK_LOCKS.items():
        _with_quick_locks(cls, names)
    yamux_module._py_yamux_env = _env_once
    yamux_module._py_yamux_env_set = _env_set_once
    yamux_module.Yamux._read_data_body = _read_data_body  # type: ignore[method-assign]


def _quick_locks_live() -> bool:
    return (
        all(getattr(cls.__init__, "_walrus_quick_locks", False) for cls in _QUICK_LOCKS)
        and yamux_module._py_yamux_env is _env_once
        and yamux_module.Yamux._read_data_body is _read_data_body
    )


_READ_EXACTLY_MODULES = (libp2p_io_utils, libp2p_msgio, yamux_module)


def _apply_fewer_copies() -> None:
    SecureSession.read = _session_read  # type: ignore[method-assign]
    for module in _READ_EXACTLY_MODULES:
        module.read_exactly = _read_exactly  # type: ignore[attr-defined]


def _fewer_copies_live() -> bool:
    return SecureSession.read is _session_read and all(
        getattr(module, "read_exactly", None) is _read_exactly for module in _READ_EXACTLY_MODULES
    )


_REFUSAL_COUNTS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
"""Swarm -> the ``Counter`` its refused connections are counted in (patch 11)."""


def count_connection_refusals(network: Any, counts: Any) -> None:
    """Count the connections ``network`` (a libp2p swarm) refuses in ``counts`` (a
    ``Counter`` keyed ``("refused", reason)``, the host's inbound counts); without patch 11 in
    effect nothing is counted (:func:`live`)."""
    _REFUSAL_COUNTS[network] = counts


def _refused(network: Any, reason: str, how_many: int = 1) -> None:
    counts = _REFUSAL_COUNTS.get(network)
    if counts is not None and how_many > 0:
        counts["refused", reason] += how_many


# The originals (None on a library without them: the patch then skips itself).
_handle_inbound: Any = getattr(swarm_module.Swarm, "_handle_inbound_connection", None)
_upgrade_inbound: Any = getattr(swarm_module.Swarm, "upgrade_inbound_raw_conn", None)
_trim_connections: Any = getattr(swarm_module.Swarm, "_trim_connections", None)


async def _counted_handle_inbound(self: Any, read_write_closer: Any, maddr: Any) -> None:
    # The swarm takes an inbound slot with acquire_nowait() right after this, with no
    # checkpoint in between when it has no metric channel (as ours): no slot now is a refusal.
    limiter = getattr(self, "_inbound_limiter", None)
    if (
        limiter is not None
        and getattr(self, "metric_send_channel", None) is None
        and limiter.available_tokens < 1
    ):
        _refused(self, "connection_cap")
    await _handle_inbound(self, read_write_closer, maddr)


async def _counted_upgrade_inbound(self: Any, raw_conn: Any, maddr: Any) -> Any:
    try:
        return await _upgrade_inbound(self, raw_conn, maddr)
    except Exception as error:
        cap = "Maximum connections limit" in str(error)
        _refused(self, "connection_cap" if cap else "connection_handshake")
        raise


def _counted_trim(self: Any, peer_id: Any) -> None:
    before = len(self.connections.get(peer_id, ()))
    _trim_connections(self, peer_id)
    excess = before - self.connection_config.max_connections_per_peer
    _refused(self, "connection_per_peer", excess)


_COUNTED_SWARM = (
    ("_handle_inbound_connection", _counted_handle_inbound),
    ("upgrade_inbound_raw_conn", _counted_upgrade_inbound),
    ("_trim_connections", _counted_trim),
)


def _apply_counted_refusals() -> None:
    for name, replacement in _COUNTED_SWARM:
        setattr(swarm_module.Swarm, name, replacement)


def _counted_refusals_live() -> bool:
    return all(getattr(swarm_module.Swarm, n, None) is f for n, f in _COUNTED_SWARM)


_SIGNED_RECORD_MODULES = (pubsub_module, gossipsub_module)

PATCHES: tuple[Patch, ...] = (
    Patch(
        "shielded-yamux-writes",
        True,
        ((muxer_multistream_module, "Yamux"),),
        _set_all((muxer_multistream_module,), "Yamux", ShieldedYamux),
        _all_are((muxer_multistream_module,), "Yamux", ShieldedYamux),
    ),
    Patch(
        "1-frame-per-noise-message",
        False,
        ((yamux_module, "MAX_MESSAGE_SIZE"), (noise_io, "MAX_PLAINTEXT_LENGTH")),
        _set_all((yamux_module,), "MAX_MESSAGE_SIZE", noise_io.MAX_PLAINTEXT_LENGTH),
        lambda: yamux_module.MAX_MESSAGE_SIZE == noise_io.MAX_PLAINTEXT_LENGTH,
    ),
    Patch(
        "2-batched-window-credit",
        False,
        ((yamux_module, "YamuxStream"),),
        _set_all((yamux_module,), "YamuxStream", _BatchedCreditStream),
        _all_are((yamux_module,), "YamuxStream", _BatchedCreditStream),
    ),
    Patch(
        "3-buffered-socket-reads",
        False,
        ((libp2p_io_trio.TrioTCPStream, "read"),),
        _set_all((libp2p_io_trio.TrioTCPStream,), "read", _buffered_read),
        _all_are((libp2p_io_trio.TrioTCPStream,), "read", _buffered_read),
    ),
    Patch(
        "4-fewer-copies",
        False,
        ((SecureSession, "read"), *((m, "read_exactly") for m in _READ_EXACTLY_MODULES)),
        _apply_fewer_copies,
        _fewer_copies_live,
    ),
    Patch(
        "6-quick-locks",
        False,
        (
            *((cls, "__init__") for cls in _QUICK_LOCKS),
            (yamux_module, "_py_yamux_env"),
            (yamux_module, "_py_yamux_env_set"),
            (yamux_module.Yamux, "_read_data_body"),
        ),
        _apply_quick_locks,
        _quick_locks_live,
    ),
    Patch(
        "7-signed-records-checked-once-a-minute",
        False,
        tuple((m, "maybe_consume_signed_record") for m in _SIGNED_RECORD_MODULES),
        _set_all(_SIGNED_RECORD_MODULES, "maybe_consume_signed_record", _consume_signed_record),
        _all_are(_SIGNED_RECORD_MODULES, "maybe_consume_signed_record", _consume_signed_record),
    ),
    Patch(
        "8-own-record-built-once-a-minute",
        False,
        tuple((m, "env_to_send_in_RPC") for m in _ENVELOPE_MODULES),
        _set_all(_ENVELOPE_MODULES, "env_to_send_in_RPC", _envelope_for_rpc),
        _all_are(_ENVELOPE_MODULES, "env_to_send_in_RPC", _envelope_for_rpc),
    ),
    Patch(
        "9-transport-bytes-counted",
        False,
        ((libp2p_io_trio.TrioTCPStream, "write"),),
        _set_all((libp2p_io_trio.TrioTCPStream,), "write", _counted_write),
        _all_are((libp2p_io_trio.TrioTCPStream,), "write", _counted_write),
    ),
    Patch(
        "10-no-happy-eyeballs-delay",
        False,
        ((swarm_module, "_HAPPY_EYEBALLS_DELAY"),),
        _set_all((swarm_module,), "_HAPPY_EYEBALLS_DELAY", 0.0),
        lambda: swarm_module._HAPPY_EYEBALLS_DELAY == 0.0,
    ),
    Patch(
        "11-connection-refusals-counted",
        False,
        tuple((swarm_module.Swarm, name) for name, _ in _COUNTED_SWARM),
        _apply_counted_refusals,
        _counted_refusals_live,
    ),
)
"""Every patch, fixes first."""

_installed: bool | None = None


def installed_version() -> str:
    try:
        return importlib.metadata.version("libp2p")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def tuning_wanted() -> tuple[bool, str]:
    """Whether the tuning goes in, and why not."""
    switch = os.environ.get(TUNING_SWITCH, "").strip().lower()
    if switch in ("off", "0", "false", "no"):
        return False, f"{TUNING_SWITCH}={switch}"
    version = installed_version()
    if version != LIBP2P_VERSION:
        return False, f"py-libp2p {version} is not {LIBP2P_VERSION}, the version it was written for"
    return True, ""


def _missing(patch: Patch) -> list[str]:
    return [
        f"{getattr(owner, '__name__', owner)}.{name}"
        for owner, name in patch.targets
        if not hasattr(owner, name)
    ]


def install() -> bool:
    """Apply the fixes, and the tuning unless :func:`tuning_wanted` says no; once per
    process (later calls do nothing). Returns whether the tuning is in."""
    global _installed
    if _installed is not None:
        return _installed
    tuning, reason = tuning_wanted()
    if not tuning:
        logger.warning("running py-libp2p without this project's tuning: %s", reason)
    for patch in PATCHES:
        if not (patch.fix or tuning):
            continue
        missing = _missing(patch)
        if missing:
            logger.warning(
                "libp2p patch %s skipped: the library has no %s", patch.name, ", ".join(missing)
            )
            continue
        patch.apply()
    _installed = tuning
    return tuning


def live() -> dict[str, bool]:
    """Each patch's name and whether it is in effect in this process."""
    return {patch.name: bool(patch.live()) for patch in PATCHES}


def set_subscription_queue_size(size: int) -> None:
    """Queue length of the pubsub subscriptions opened from now on (the library's default, 32,
    drops messages silently once full); read by ``Pubsub.subscribe`` (pubsub.py)."""
    if not hasattr(pubsub_module, "SUBSCRIPTION_CHANNEL_SIZE"):
        logger.warning("pubsub has no SUBSCRIPTION_CHANNEL_SIZE; subscription queues unchanged")
        return
    pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = size


def set_failed_dial_block(network: Any, seconds: float) -> None:
    """How long the swarm refuses to dial a peer after a failed dial (the library: 60 s)."""
    cache = getattr(network, "_negative_peer_cache", None)
    if cache is None or not hasattr(cache, "_ttl"):
        logger.warning("swarm has no negative peer cache; failed-dial block unchanged")
        return
    cache._ttl = seconds
