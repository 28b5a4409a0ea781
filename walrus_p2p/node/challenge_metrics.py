"""Metrics of the storage challenges, registered in the peer's own registry.

Label sets are bounded: outcomes and reasons are a handful of fixed codes, and ``member`` (the
first 12 characters of a peer id) takes at most one value per committee member (n ≤ 256).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from walrus_p2p.node.metrics import PeerMetrics


class ChallengeMetrics:
    def __init__(self, peer_metrics: PeerMetrics) -> None:
        registry = peer_metrics.registry
        self.rounds = Counter(
            "walrus_challenge_rounds",
            "Challenge rounds this peer ran as a challenged member, by outcome "
            "(certified, uncertified, skipped)",
            ["outcome"],
            registry=registry,
        )
        self.duration = Gauge(
            "walrus_challenge_last_duration_seconds",
            "Seconds from the start of this peer's last challenge round to its certificate (or "
            "to the end of the round without one)",
            registry=registry,
        )
        self.pass_seconds = Gauge(
            "walrus_challenge_last_pass_seconds",
            "Seconds the last pass over local slivers took (reads, expansion, hashing)",
            registry=registry,
        )
        self.disk_bytes = Counter(
            "walrus_challenge_disk_bytes_read",
            "Sliver bytes read from the store for challenges (each sliver once per round)",
            registry=registry,
        )
        self.blobs = Counter(
            "walrus_challenge_blobs_read",
            "Blobs whose slivers a challenge pass read",
            registry=registry,
        )
        self.messages = Counter(
            "walrus_challenge_messages",
            "Challenge requests sent by this peer, by type and outcome (ok or a reason code)",
            ["type", "outcome"],
            registry=registry,
        )
        self.verdicts = Counter(
            "walrus_challenge_verdicts",
            "Responses this peer judged as a challenger, by verdict (pass or a reason code)",
            ["verdict"],
            registry=registry,
        )
        self.failures = Counter(
            "walrus_challenge_failures",
            "Responses of a member that failed this peer's challenge, by member",
            ["member"],
            registry=registry,
        )
        self.last_certified_epoch = Gauge(
            "walrus_challenge_last_certified_epoch",
            "The last epoch for which this peer holds its own availability certificate",
            registry=registry,
        )
        self.certificates_kept = Counter(
            "walrus_challenge_certificates_merged",
            "Availability certificates verified and kept (own, pushed or pulled)",
            registry=registry,
        )
        self.refused_symbols = Counter(
            "walrus_challenge_recovery_symbols_refused",
            "Recovery symbol requests refused because a challenge window was open",
            registry=registry,
        )
