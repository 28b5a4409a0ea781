"""Per-peer request rates of the control plane: token buckets, refused with ``RATE_LIMITED``.

docs/epochs.md, "Load shedding". Control-plane requests (epoch sync, record listings, in-place
reports, pings, consensus batches) are cheap one by one, but a peer that restarts in a loop, or
twenty peers that time out together and all retry, can ask for them faster than a home machine
answers; answering late makes the askers time out and ask again. So each remote peer gets a
bucket per request kind: ``burst`` requests at once, refilled at ``rate`` per second. A request
beyond it is refused at once (the asker backs off), before any work is done. Data-plane requests
(slivers, metadata, symbols) are not limited here: they are bounded by the handler concurrency.

The table keeps at most ``max_entries`` buckets (least recently used dropped first), so many
distinct peer ids cannot grow it without bound.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from walrus_p2p.types import PeerId


@dataclass(frozen=True, slots=True)
class Rate:
    rate: float
    """Requests per second, sustained."""
    burst: float
    """Requests at once."""


CONTROL_RATES: dict[str, Rate] = {
    "GetEpochRecordsRequest": Rate(2.0, 8.0),
    "ListBlobRecordsRequest": Rate(5.0, 20.0),
    "GetBlobRecordsRequest": Rate(20.0, 60.0),
    "GetShardsInPlaceRequest": Rate(5.0, 20.0),
    "BlobStatusRequest": Rate(20.0, 60.0),
    "EpochMessagesRequest": Rate(20.0, 100.0),
    # The economy (docs/economics.md, "The protocol"): a wallet asks each member once per order
    # for an approval and gives it the certificate once; a peer catching up pages a listing.
    "ApproveOrderRequest": Rate(50.0, 100.0),
    "SubmitCertificateRequest": Rate(50.0, 100.0),
    "GetAccountRequest": Rate(20.0, 60.0),
    "ListCertificatesRequest": Rate(5.0, 20.0),
    "GetEconomyRequest": Rate(20.0, 60.0),
    "GetSharedBlobRequest": Rate(20.0, 60.0),
    # A new committee member reads each old member's lock report once per epoch change (a page
    # of 64 orders per request; docs/economics.md, "Double spending").
    "GetLocksRequest": Rate(10.0, 100.0),
    "ChallengeTicketRequest": Rate(4.0, 20.0),
    "ChallengeResponseRequest": Rate(4.0, 20.0),
    "PostAvailabilityCertificatesRequest": Rate(5.0, 20.0),
    "GetAvailabilityCertificatesRequest": Rate(5.0, 20.0),
    # `walrus-peer health` asks each member once (docs/cli.md, "Health").
    "PeerHealthRequest": Rate(2.0, 10.0),
}
"""Per remote peer and request type. Honest peers stay far below: a member sends one consensus
batch per step (a few a second during a change), a catch-up pages a listing, a light client's
status check pings each member once; a challenge round asks each member for one ticket and
sends it one response (retried every half second while the member has not entered its window)."""


class RequestRates:
    """Token buckets keyed by (remote peer, request kind)."""

    def __init__(
        self,
        rates: Mapping[str, Rate] = CONTROL_RATES,
        *,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rates = dict(rates)
        self.max_entries = max_entries
        self.clock = clock
        self._buckets: OrderedDict[tuple[PeerId, str], tuple[float, float]] = OrderedDict()
        self.refused = 0

    def allow(self, peer: PeerId, kind: str) -> bool:
        """Take one token; False (and nothing taken) when the bucket is empty. Kinds without a
        rate are always allowed."""
        rate = self.rates.get(kind)
        if rate is None:
            return True
        now = self.clock()
        key = (peer, kind)
        tokens, stamp = self._buckets.pop(key, (rate.burst, now))
        tokens = min(rate.burst, tokens + (now - stamp) * rate.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        else:
            self.refused += 1
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_entries:
            self._buckets.popitem(last=False)
        return allowed
