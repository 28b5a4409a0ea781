"""Admission: how much work the gateway takes on at once, counted in requests and in blob bytes.

Three bounds, one mechanism (docs/http-api.md, "Limits"):

- requests of a kind (reads, writes) in flight on the whole gateway;
- requests of a kind in flight from one client address, so that one stranger cannot take every
  slot of the gateway (the address is the TCP peer's: behind a reverse proxy every client shares
  the proxy's, and ``X-Forwarded-For`` is not trusted);
- blob bytes held by requests in flight (bodies being received and stored, blobs being read and
  sent), since a request's memory is the blob it carries, not the request itself.

A request beyond a bound is refused at once with 429 and ``Retry-After`` instead of being queued,
so a waiting request never holds memory. The slots are taken before the app runs; the bytes are
taken by the handler as soon as it knows the size (before it reads or receives them), through the
request's `Reservation`. Everything is given back in one ``finally`` after the whole response,
streamed body included, has been sent, so a dropped connection or a cancelled request cannot
leak it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from walrus_p2p.api._errors import ApiError, error_response

logger = logging.getLogger(__name__)

BUSY = "busy"
"""Refusal reason: the gateway already has its limit of requests of this kind in flight."""
PER_ADDRESS = "per_address"
"""Refusal reason: this client address already has its limit of requests of this kind."""
BYTES = "bytes"
"""Refusal reason: the blob bytes held by requests in flight would exceed the budget."""
REFUSAL_REASONS = (BUSY, PER_ADDRESS, BYTES)

REFUSAL_LOG_INTERVAL_SECONDS = 10.0
"""At most one refusal line per kind and reason in this time (an attack must not flood the log)."""
_RESERVATION_KEY = "walrus_p2p.reservation"
_UNKNOWN_ADDRESS = "unknown"


class RequestSlots:
    """At most ``total`` requests of one kind in flight, at most ``per_address`` per address;
    an address with fewer than ``guaranteed_per_address`` in flight is admitted even when the
    total is spent, so strangers holding every slot (slow readers, from many addresses) cannot
    lock a newcomer out. What such requests hold is still bounded: by the connection limit and
    by the byte budget."""

    def __init__(
        self, kind: str, *, total: int, per_address: int, guaranteed_per_address: int = 0
    ) -> None:
        self.kind = kind
        self.total = total
        self.per_address = per_address
        self.guaranteed_per_address = guaranteed_per_address
        self.in_flight = 0
        self._by_address: Counter[str] = Counter()

    def try_take(self, address: str) -> str | None:
        """Take a slot for ``address``; the refusal reason if there is none."""
        held = self._by_address[address]
        if self.in_flight >= self.total and held >= self.guaranteed_per_address:
            return BUSY
        if held >= self.per_address:
            return PER_ADDRESS
        self.in_flight += 1
        self._by_address[address] += 1
        return None

    def give_back(self, address: str) -> None:
        self.in_flight -= 1
        self._by_address[address] -= 1
        if self._by_address[address] <= 0:
            # Only addresses with requests in flight are remembered: the table stays bounded.
            del self._by_address[address]

    def in_flight_from(self, address: str) -> int:
        return self._by_address[address]

    @contextmanager
    def held(self, control: AdmissionControl, address: str) -> Iterator[None]:
        """Hold a slot for the block, or raise the 429 that refuses the request (counted)."""
        refusal = self.try_take(address)
        if refusal is not None:
            control.refusals.record(self.kind, refusal, address)
            raise control.too_many(f"too many {self.kind} requests on this gateway; retry later")
        try:
            yield
        finally:
            self.give_back(address)


SMALL_BLOB_BYTES = 64 * 1024
"""Blob bytes a request may always take, counted but never refused: a small read or upload is
never starved by strangers holding the budget with big ones (what small requests hold is
bounded by the connection limit: 1024 × 64 KiB)."""


class ByteBudget:
    """Blob bytes that requests in flight may hold together."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0

    def try_take(self, size: int, *, already: int = 0) -> bool:
        """Take ``size`` more bytes for a request holding ``already``; a request staying within
        :data:`SMALL_BLOB_BYTES` in all always gets them."""
        if already + size > SMALL_BLOB_BYTES and self.held + size > self.total:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


class Refusals:
    """Refusals counted by kind and reason, and logged at INFO at most once per interval each."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self._logged_at: dict[tuple[str, str], float] = {}
        self._logged_count: Counter[tuple[str, str]] = Counter()

    def record(self, kind: str, reason: str, address: str) -> None:
        key = (kind, reason)
        self.counts[key] += 1
        now = time.monotonic()
        last = self._logged_at.get(key)
        if last is not None and now - last < REFUSAL_LOG_INTERVAL_SECONDS:
            return
        logger.info(
            "request refused kind=%s reason=%s address=%s refused=%d (+%d since the last line)",
            kind,
            reason,
            address,
            self.counts[key],
            self.counts[key] - self._logged_count[key],
        )
        self._logged_at[key] = now
        self._logged_count[key] = self.counts[key]

    def total(self, reason: str | None = None) -> int:
        return sum(n for (_, why), n in self.counts.items() if reason is None or why == reason)


@dataclass(frozen=True, slots=True)
class AdmissionControl:
    """The gateway's shared admission state: slots per kind, the byte budget, the refusals."""

    reads: RequestSlots
    uploads: RequestSlots
    """Request bodies being received (and then stored), per address and in total."""
    writes: RequestSlots
    """Stores into the network, taken once a body is complete."""
    budget: ByteBudget
    refusals: Refusals
    retry_after_seconds: int

    def too_many(self, message: str) -> ApiError:
        return ApiError(
            429,
            "TOO_MANY_REQUESTS",
            message,
            headers={"Retry-After": str(self.retry_after_seconds)},
        )


class Reservation:
    """The blob bytes one request holds from the budget; all given back when it ends."""

    def __init__(self, control: AdmissionControl, kind: str, address: str) -> None:
        self._control = control
        self._kind = kind
        self._address = address
        self.held = 0

    def take(self, size: int) -> None:
        """Hold ``size`` more bytes, or raise the error that refuses the request.

        Bytes that would not fit even in an empty budget can never be held: that is a 503 (this
        gateway does not serve blobs that large), not a 429 that would be retried forever.
        """
        budget = self._control.budget
        if self.held + size > budget.total:
            logger.warning(
                "blob larger than the byte budget refused kind=%s size=%d max_bytes_in_flight=%d",
                self._kind,
                self.held + size,
                budget.total,
            )
            raise ApiError(
                503,
                "BLOB_TOO_LARGE",
                f"the blob is larger than this gateway serves ({budget.total} bytes)",
            )
        if not budget.try_take(size, already=self.held):
            self._control.refusals.record(self._kind, BYTES, self._address)
            raise self._control.too_many(
                "the gateway holds too many blob bytes for requests in flight; retry later"
            )
        self.held += size

    def give_back_all(self) -> None:
        self._control.budget.give_back(self.held)
        self.held = 0


def reservation_of(request: Request) -> Reservation:
    """The reservation `Admission` opened for this request."""
    reservation = request.scope.get(_RESERVATION_KEY)
    if not isinstance(reservation, Reservation):
        raise RuntimeError("the request did not go through Admission")
    return reservation


def client_address(scope: Scope) -> str:
    """The TCP peer's address (not ``X-Forwarded-For``, which any client can write)."""
    client = scope.get("client")
    if not client:
        return _UNKNOWN_ADDRESS
    return str(client[0])


class Admission:
    """ASGI wrapper admitting a request to ``app`` only within ``slots`` and the byte budget."""

    def __init__(self, app: ASGIApp, control: AdmissionControl, slots: RequestSlots) -> None:
        self._app = app
        self._control = control
        self._slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        address = client_address(scope)
        refusal = self._slots.try_take(address)
        if refusal is not None:
            await self._refuse(refusal, address, scope, receive, send)
            return
        reservation = Reservation(self._control, self._slots.kind, address)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                reservation.give_back_all()
                self._slots.give_back(address)

        async def send_then_release(message: Message) -> None:
            # The slot is free before the response's last bytes leave: a client that sends
            # its next request as soon as it has the answer must not find its own slot still
            # held (with one upload per address, that was a 429 for a sequential client).
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                release()
            await send(message)

        try:
            await self._app({**scope, _RESERVATION_KEY: reservation}, receive, send_then_release)
        finally:
            release()

    async def _refuse(
        self, reason: str, address: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self._control.refusals.record(self._slots.kind, reason, address)
        whose = "from this address" if reason == PER_ADDRESS else "on this gateway"
        error = self._control.too_many(f"too many {self._slots.kind} requests {whose}; retry later")
        response = error_response(error.status, error.reason, error.message, error.headers)
        await response(scope, receive, send)
