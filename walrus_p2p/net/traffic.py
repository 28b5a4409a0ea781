"""Process-wide traffic counters of the net layer: what this process sent, by kind.

The control plane's cost is measured network-wide as the sum of every peer's counters
(``bench/epochs.py``; docs/network.md, "Traffic accounting"). One storage peer runs per process,
so the counters are per process; in-process test networks share them (only metrics read them).

Kinds:

- a request's wire type name (``EpochMessagesRequest``, ``GetEpochRecordsRequest``,
  ``BlobStatusRequest``, ...): one per request sent through
  :func:`walrus_p2p.net.messages.call_message`, bytes = the request's encoding;
- ``reply``: every reply a request handler of this process sent, bytes = the reply frame;
- ``gossip``: every pubsub RPC this process wrote (own publishes, relays, and control: graft,
  prune, ihave, iwant), bytes = its protobuf size;
- the transport total (:data:`TRAFFIC.transport_bytes_sent`) counts every byte written to a TCP
  socket by libp2p (Noise and yamux framing included; DHT, identify and ping too).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class Traffic:
    messages: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)
    transport_bytes_sent: int = 0

    def count(self, kind: str, size: int) -> None:
        self.messages[kind] += 1
        self.bytes[kind] += size


TRAFFIC = Traffic()
"""The counters of this process."""
