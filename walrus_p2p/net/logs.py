"""Route py-libp2p's log records into walrus-p2p's logging tree, rate-limited.

``import libp2p`` runs ``libp2p.utils.logging.setup_logging()``, which clears the handlers of the
``libp2p`` logger, sets it to WARNING and turns propagation off. The records then fall through to
``logging.lastResort`` and land on stderr unformatted, thousands a minute in a busy DHT
(docs/design.md §7). :func:`route_libp2p_logs` attaches one handler to the ``libp2p`` logger that
re-emits each record on ``walrus_p2p.net.libp2p.<module>`` (so the application's own logging
configuration decides where they go), and drops records above a per-logger-and-level budget per
window, with one summary line saying how many were dropped.

Some library records are routine outcomes that our own code handles and reports with context: a
dial that fails (``Failed to open TCP stream``, logged at ERROR by the TCP transport) or a stream
that cannot be opened (``Failed to open stream to peer``, ERROR in the basic host). Each of these
also raises, and the caller decides what it means (a peer not started yet, one that went away).
They are forwarded at DEBUG (:data:`ROUTINE`), so a healthy start of a network prints no errors
(docs/network.md, "Logs").
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

LIBP2P_LOGGER = "libp2p"
ROUTED_PREFIX = "walrus_p2p.net.libp2p"

ROUTINE: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("libp2p.transport.tcp.tcp", re.compile(r"Failed to open TCP stream")),
    ("libp2p.host.basic_host", re.compile(r"Failed to open stream to peer")),
    (
        "libp2p.protocol_muxer.multiselect_client",
        re.compile(r"MultiselectClient handshake: read failed"),
    ),
    (
        "libp2p.stream_muxer.yamux.yamux",
        re.compile(r"Error in handle_incoming for peer \S+: (ClosedResource|BrokenResource)Error"),
    ),
)
"""(logger, message pattern, matched at the start) of library records forwarded at DEBUG:
failures the library also raises or handles itself (a connection this process closed, one the
remote dropped), which the caller reports at the level they deserve."""


def _routine(record: logging.LogRecord) -> bool:
    if record.levelno <= logging.DEBUG:
        return False
    for name, pattern in ROUTINE:
        if record.name == name and pattern.match(record.getMessage()):
            return True
    return False


class RateLimitedForwarder(logging.Handler):
    """Forward records to another logger tree, at most ``burst`` per (logger, level) per window."""

    def __init__(
        self,
        *,
        burst: int = 20,
        window_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(level=logging.NOTSET)
        self.burst = burst
        self.window_seconds = window_seconds
        self._clock = clock
        self._lock_counts = threading.Lock()
        # key -> (window start, records forwarded in window, records dropped in window)
        self._windows: dict[tuple[str, int], tuple[float, int, int]] = {}

    def _target(self, name: str) -> logging.Logger:
        suffix = name[len(LIBP2P_LOGGER) :].lstrip(".")
        return logging.getLogger(f"{ROUTED_PREFIX}.{suffix}" if suffix else ROUTED_PREFIX)

    def emit(self, record: logging.LogRecord) -> None:
        key = (record.name, record.levelno)
        now = self._clock()
        dropped_before = 0
        with self._lock_counts:
            start, forwarded, dropped = self._windows.get(key, (now, 0, 0))
            if now - start >= self.window_seconds:
                dropped_before = dropped
                start, forwarded, dropped = now, 0, 0
            if forwarded >= self.burst:
                self._windows[key] = (start, forwarded, dropped + 1)
                return
            self._windows[key] = (start, forwarded + 1, dropped)
        target = self._target(record.name)
        if dropped_before:
            target.log(
                record.levelno,
                "libp2p log rate limit dropped=%d window_seconds=%.0f",
                dropped_before,
                self.window_seconds,
            )
        level = logging.DEBUG if _routine(record) else record.levelno
        if target.isEnabledFor(level):
            clone = logging.makeLogRecord(record.__dict__)
            clone.name = target.name
            if level != record.levelno:
                clone.levelno, clone.levelname = level, logging.getLevelName(level)
            target.handle(clone)


_installed: RateLimitedForwarder | None = None


def route_libp2p_logs(
    *, level: int = logging.WARNING, burst: int = 20, window_seconds: float = 60.0
) -> RateLimitedForwarder:
    """Install (once) the forwarder on the ``libp2p`` logger; later calls update its limits.

    ``level`` is the lowest libp2p level forwarded at all; DEBUG from libp2p is extremely verbose
    and formats large protobufs, so keep it at WARNING unless chasing a library bug.
    """
    global _installed
    source = logging.getLogger(LIBP2P_LOGGER)
    if _installed is None or _installed not in source.handlers:
        _installed = RateLimitedForwarder(burst=burst, window_seconds=window_seconds)
        source.addHandler(_installed)
    _installed.burst = burst
    _installed.window_seconds = window_seconds
    source.setLevel(level)
    source.propagate = False
    return _installed
