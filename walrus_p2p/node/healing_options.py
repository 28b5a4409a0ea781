"""Settings of a storage peer's self-healing services (see ``docs/healing.md``).

Kept apart from :mod:`walrus_p2p.node.healing` so that :mod:`walrus_p2p.node.peer` can carry
them in its options without importing the services (which import the peer module).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HealingOptions:
    """Every delay, interval and bound of blob sync, catch-up, scrub and garbage collection.

    Defaults suit a home peer; tests shrink the delays. ``enabled=False`` turns every
    background task off (the request handlers for sync and attestations stay).
    """

    enabled: bool = True

    # blob sync
    sync_delay: float = 3.0
    """Wait after a certificate before recovering: the writer may still be uploading."""
    sync_workers: int = 2
    """Blobs recovered at once."""
    sync_queue_size: int = 4096
    """Blob ids waiting for sync; beyond that the next full scan finds the rest."""
    sync_max_attempts: int = 8
    """Attempts per blob before it waits for the next scan (a restart or catch-up round)."""
    sync_backoff_initial: float = 2.0
    sync_backoff_max: float = 120.0
    request_timeout: float = 30.0
    """Deadline of one symbol, metadata or records request."""
    extra_fraction: float = 0.1
    """Symbol requests in flight beyond those needed, as a fraction (rounded down) of them:
    one extra for 10..19 needed symbols. Extras cost traffic; hedging covers slow helpers."""
    hedge_delay: float = 2.0
    """While symbols are still missing after this long, one more request goes out (twice)."""
    slivers_in_parallel: int = 2
    """Slivers of one blob rebuilt at once."""

    # catch-up
    catch_up_on_start: bool = True
    catch_up_interval: float = 600.0
    """Seconds between periodic catch-up rounds (after the first one at start)."""
    catch_up_sources: int = 3
    """Peers whose record listings are pulled in one round (records are verified anyway)."""
    catch_up_max_pages: int = 10_000
    """Bound on pages pulled from one source in one round."""
    catch_up_page_blobs: int = 64
    stall_catch_up_seconds: float = 10.0
    """A pause of the peer's event loop at least this long (the process was stopped, the
    machine slept) starts a catch-up round at once: gossip and pushes sent meanwhile are lost,
    and the next periodic round may be ``catch_up_interval`` away. 0 turns it off."""
    stall_check_interval: float = 5.0
    """A stall shows as a sleep that ends late by the stall's length, whatever the interval: a
    check every 5 s finds a 10 s stall as surely as one every second, at a fifth of the wake-ups."""
    reachability_interval: float = 3.0
    """Seconds between two pings of a random committee member. A peer that keeps running but
    loses the network (a partition, a cable) sees most pings fail; when they succeed again
    after at least ``stall_catch_up_seconds`` it runs a catch-up round at once. 0 turns it off.
    This pace holds while a ping of the window failed; while all succeed, pings go out every
    ``reachability_idle_interval`` instead (a ping costs both ends a stream: at 10 s the pings
    were about a tenth of an idle 20-peer network's CPU; docs/network.md, "Idle cost"). A
    partition is then noticed within that interval plus three pings."""
    reachability_idle_interval: float = 30.0
    reachability_timeout: float = 3.0

    # scrub
    scrub_interval: float = 3600.0
    """Seconds between scrub passes (a pass re-reads and re-hashes every owned sliver)."""
    scrub_bytes_per_second: float = 8 * 1024 * 1024
    """I/O budget of the scrubber; it sleeps to keep to it."""
    scrub_first_delay: float = 300.0

    # garbage collection
    gc_interval: float = 300.0
    gc_first_delay: float = 30.0

    # invalid blobs
    attestation_timeout: float = 30.0

    # shard migration (node/migration.py)
    migration_page_bytes: int = 4 * 1024 * 1024
    """Sliver bytes per pull reply (the previous owner sends one whole sliver at least)."""
    migration_attempts: int = 4
    """Failed pulls in a row before the new owner gives up on the previous owner and recovers
    the rest of the shard from symbols."""
    migration_retry_delay: float = 2.0
    """Seconds before the next attempt, times the attempt number."""
    migration_parallel_shards: int = 2
    migration_max_pages: int = 1_000_000
    in_place_check_interval: float = 3.0
    """Seconds between two completeness checks before reporting shards in place."""
    in_place_max_rounds: int = 200
    """Completeness checks (each queues blob syncs for what is missing) before giving up until
    the next epoch."""
    in_place_republish_interval: float = 60.0
    """The peer's in-place report is gossiped again this often (peers that restarted lost it)."""
    release_grace: float = 30.0
    """Seconds the previous owner keeps a moved shard after the new owner reported it in place
    (reads already routed to it finish)."""
