"""Prometheus metrics and the health summary of a storage peer, served on localhost.

The metric objects live in one private registry per peer (not the process-global one), so several
peers can run in one process in tests without clashing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from walrus_p2p.net.inbound import InboundBudget
from walrus_p2p.net.traffic import TRAFFIC, Traffic


class TrafficCollector(Collector):
    """The net layer's traffic counters of this process (:mod:`walrus_p2p.net.traffic`):
    ``walrus_control_messages_sent_total{kind}``, ``walrus_control_bytes_sent_total{kind}`` and
    ``walrus_net_bytes_sent_total`` (everything written to TCP)."""

    def __init__(self, traffic: Traffic = TRAFFIC) -> None:
        self.traffic = traffic

    def collect(self) -> Any:
        messages = CounterMetricFamily(
            "walrus_control_messages_sent",
            "Requests (by wire type), replies and gossip RPCs this process sent",
            labels=["kind"],
        )
        sizes = CounterMetricFamily(
            "walrus_control_bytes_sent",
            "Bytes of the requests, replies and gossip RPCs this process sent, by kind",
            labels=["kind"],
        )
        for kind in sorted(self.traffic.messages):
            messages.add_metric([kind], self.traffic.messages[kind])
            sizes.add_metric([kind], self.traffic.bytes[kind])
        yield messages
        yield sizes
        yield CounterMetricFamily(
            "walrus_net_bytes_sent",
            "Bytes this process wrote to TCP connections (libp2p framing included)",
            value=self.traffic.transport_bytes_sent,
        )


class InboundCollector(Collector):
    """The host's inbound limits (:mod:`walrus_p2p.net.inbound`):
    ``walrus_inbound_total{outcome,reason}`` (streams refused, grants throttled, by the limit
    that applied), ``walrus_inbound_streams`` and ``walrus_inbound_granted_bytes`` (now)."""

    def __init__(self, budget: InboundBudget) -> None:
        self.budget = budget

    def collect(self) -> Any:
        outcomes = CounterMetricFamily(
            "walrus_inbound",
            "Request streams refused and byte grants throttled by the inbound limits",
            labels=["outcome", "reason"],
        )
        for (outcome, reason), count in sorted(self.budget.counts.items()):
            outcomes.add_metric([outcome, reason], count)
        yield outcomes
        yield GaugeMetricFamily(
            "walrus_inbound_streams",
            "Request streams from other peers being served now",
            value=self.budget.streams,
        )
        yield GaugeMetricFamily(
            "walrus_inbound_granted_bytes",
            "Request bytes granted to streams from other peers now",
            value=self.budget.held_bytes,
        )


class PeerMetrics:
    """The counters and gauges a storage peer exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.slivers_stored = Counter(
            "walrus_slivers_stored",
            "Slivers verified and written durably",
            registry=self.registry,
        )
        self.bytes_stored = Counter(
            "walrus_sliver_bytes_stored",
            "Sliver bytes verified and written durably",
            registry=self.registry,
        )
        self.requests = Counter(
            "walrus_requests",
            "Protocol requests served, by type and outcome (ok or an error reason code)",
            ["type", "outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            "walrus_errors",
            "Errors by reason code",
            ["reason"],
            registry=self.registry,
        )
        self.peers_connected = Gauge(
            "walrus_peers_connected", "Connected libp2p peers", registry=self.registry
        )
        self.storage_used_bytes = Gauge(
            "walrus_storage_used_bytes", "Bytes used by the sliver store", registry=self.registry
        )
        self.blobs_stored = Gauge(
            "walrus_blobs_stored", "Blobs with metadata in the store", registry=self.registry
        )
        self.recovery_bytes = Counter(
            "walrus_recovery_bytes_received",
            "Bytes received for sliver recovery",
            registry=self.registry,
        )
        self.epoch_current = Gauge(
            "walrus_epoch_current", "The epoch this peer is in", registry=self.registry
        )
        self.epoch_last_switch_unix = Gauge(
            "walrus_epoch_last_switch_unix",
            "Unix time at which this peer switched to its current epoch",
            registry=self.registry,
        )
        self.epoch_decided_round = Gauge(
            "walrus_epoch_decided_round",
            "Consensus round whose precommits certified the current epoch",
            registry=self.registry,
        )
        self.epoch_committee_members = Gauge(
            "walrus_epoch_committee_members",
            "Members holding shards in the committee of the current epoch",
            registry=self.registry,
        )
        self.handover_epoch = Gauge(
            "walrus_handover_epoch",
            "The latest epoch whose lock hand-over this peer completed (docs/economics.md)",
            registry=self.registry,
        )
        self.handover_seconds = Gauge(
            "walrus_handover_seconds",
            "How long this peer's latest lock hand-over took, from its start to its journal write",
            registry=self.registry,
        )
        self.handover_orders = Counter(
            "walrus_handover_orders",
            "Locked orders received in hand-over reports, and how many were adopted",
            ["outcome"],
            registry=self.registry,
        )
        self.registry.register(TrafficCollector())
        self._inbound: InboundCollector | None = None
        self.started_at = time.time()

    def watch_inbound(self, budget: InboundBudget) -> None:
        """Export the host's inbound limits (once the host is open; a restarted peer's new
        host replaces the old one's)."""
        if self._inbound is not None:
            self.registry.unregister(self._inbound)
        self._inbound = InboundCollector(budget)
        self.registry.register(self._inbound)

    def epoch_switched(self, epoch: int, round_: int, members: int) -> None:
        self.epoch_current.set(epoch)
        self.epoch_last_switch_unix.set(time.time())
        self.epoch_decided_round.set(round_)
        self.epoch_committee_members.set(members)

    def handover_done(self, epoch: int, seconds: float, orders: int, adopted: int) -> None:
        self.handover_epoch.set(epoch)
        self.handover_seconds.set(seconds)
        self.handover_orders.labels("adopted").inc(adopted)
        self.handover_orders.labels("known").inc(orders - adopted)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def build_metrics_app(metrics: PeerMetrics, health: Callable[[], dict[str, Any]]) -> Starlette:
    """`/metrics` in Prometheus text format, `/health` as a JSON summary (200 ok, 503 degraded)."""

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def health_endpoint(request: Request) -> Response:
        summary = health()
        status = 200 if summary.get("status") == "ok" else 503
        return Response(
            json.dumps(summary, sort_keys=True), status_code=status, media_type="application/json"
        )

    return Starlette(
        routes=[
            Route("/metrics", metrics_endpoint),
            Route("/health", health_endpoint),
        ]
    )
