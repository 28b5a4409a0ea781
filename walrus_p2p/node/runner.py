"""`walrus-peer run`: load a peer's data directory and serve until SIGINT or SIGTERM."""

from __future__ import annotations

import functools
import logging
import os
import signal
from pathlib import Path

import trio

from walrus_p2p.net.libp2p_patches import TRIM_INTERVAL, trim_allocator, tune_allocator
from walrus_p2p.node.challenges import ChallengeOptions
from walrus_p2p.node.config import load_peer, load_vote
from walrus_p2p.node.economy import EconomyOptions
from walrus_p2p.node.epochs import EpochOptions
from walrus_p2p.node.faults import fault_from_environment, peer_service_class
from walrus_p2p.node.peer import PeerOptions, StoragePeerService
from walrus_p2p.storage import open_store

logger = logging.getLogger(__name__)

STORE_DIR_NAME = "store"


async def run_peer(
    data_dir: str | os.PathLike[str],
    metrics_bind: str | None = None,
    *,
    task_status: trio.TaskStatus[StoragePeerService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the peer of ``data_dir``; returns after a clean shutdown on SIGINT/SIGTERM."""
    # A storage peer moves slivers of megabytes through fresh buffers all day: keep freed heap.
    tune_allocator()
    loaded = load_peer(data_dir)
    # Testing only (tests/testnet): unset in every normal run, see walrus_p2p/node/faults.py.
    service_class = peer_service_class(fault_from_environment(os.environ))
    store = open_store(
        Path(loaded.data_dir) / STORE_DIR_NAME, capacity_bytes=loaded.config.capacity_bytes
    )
    try:
        service = service_class(
            identity=loaded.identity,
            genesis=loaded.genesis,
            store=store,
            options=PeerOptions(
                listen_addrs=loaded.config.listen_addresses,
                metrics_bind=metrics_bind or loaded.config.metrics_address,
                epochs=EpochOptions(
                    candidate=loaded.config.candidate,
                    weight=loaded.config.weight,
                    capacity=loaded.config.capacity_bytes,
                ),
                inbound=loaded.config.inbound,
                challenges=ChallengeOptions(
                    enabled=loaded.config.challenges_enabled,
                    window_seconds=loaded.config.challenge_window_seconds,
                ),
                # peer.toml's [vote] is read again at each epoch change (walrus-peer vote).
                economy=EconomyOptions(vote_source=functools.partial(load_vote, data_dir)),
            ),
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(service.run)
                nursery.start_soon(_trim_allocator_periodically)
                task_status.started(service)
                async for signal_number in signals:
                    logger.info(
                        "shutting down peer=%s signal=%s",
                        service.peer_id[:12],
                        signal.Signals(signal_number).name,
                    )
                    nursery.cancel_scope.cancel()
                    break
    finally:
        store.close()
    logger.info("peer stopped")


async def _trim_allocator_periodically() -> None:
    """Freed heap goes back to the system every TRIM_INTERVAL seconds (until cancelled): the
    allocator tuning keeps it otherwise, and memory strangers made the peer touch would stay
    resident after they left (docs/network.md, "Inbound limits")."""
    if not trim_allocator():
        return
    while True:
        await trio.sleep(TRIM_INTERVAL)
        trim_allocator()
