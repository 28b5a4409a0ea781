"""The network-wide cost of a control-plane operation on a process devnet, for the benches.

Messages and bytes sent by kind (every peer's ``walrus_control_*_sent_total`` counters plus this
process's own, the light peers' of the bench), transport bytes and the peers' CPU seconds
(docs/network.md, "Traffic accounting"): sample before and after some operations, then print
the difference per operation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from walrus_p2p.net.traffic import TRAFFIC
from walrus_p2p.testing.processes import CpuMeter, Devnet

_KIND = re.compile(r'kind="([^"]+)"')


@dataclass(frozen=True, slots=True)
class CostSample:
    messages: dict[str, float]
    sizes: dict[str, float]
    transport: float
    cpu: float


def network_cost(devnet: Devnet, meter: CpuMeter) -> CostSample:
    """The counters now, summed over every peer of ``devnet`` and this process (blocking)."""
    messages: dict[str, float] = {kind: float(count) for kind, count in TRAFFIC.messages.items()}
    sizes: dict[str, float] = {kind: float(count) for kind, count in TRAFFIC.bytes.items()}
    transport = float(TRAFFIC.transport_bytes_sent)
    for index in devnet.peers:
        for name, value in devnet.metrics(index).items():
            kind = _KIND.search(name)
            if name.startswith("walrus_control_messages_sent_total{") and kind:
                messages[kind.group(1)] = messages.get(kind.group(1), 0.0) + value
            elif name.startswith("walrus_control_bytes_sent_total{") and kind:
                sizes[kind.group(1)] = sizes.get(kind.group(1), 0.0) + value
            elif name == "walrus_net_bytes_sent_total":
                transport += value
    cpu = meter.sample([peer.process.pid for peer in devnet.peers.values() if peer.process])
    return CostSample(messages, sizes, transport, cpu)


def print_cost(before: CostSample, after: CostSample, operations: int, what: str) -> None:
    """Per ``what`` (e.g. "certified transfer"): messages and bytes by kind, transport bytes,
    peer CPU."""
    if not operations:
        return
    print(f"network-wide per {what} (peers and this process's light peers, n={operations}):")
    for kind in sorted(set(after.messages) | set(before.messages)):
        count = after.messages.get(kind, 0.0) - before.messages.get(kind, 0.0)
        size = after.sizes.get(kind, 0.0) - before.sizes.get(kind, 0.0)
        if count > 0:
            print(
                f"  {kind:<28} {count / operations:>8.1f} messages {size / operations:>10.0f} bytes"
            )
    cpu = after.cpu - before.cpu
    transport = (after.transport - before.transport) / operations
    print(
        f"  transport bytes (all TCP writes) {transport:,.0f}; "
        f"peer CPU {cpu / operations * 1000:.1f} ms per {what} ({cpu:.1f} CPU-s in all)"
    )
