"""Storage challenges under churn on a process devnet: honest peers killed and restarted inside
the challenge window must still get their availability certificates (docs/challenges.md,
"Churn").

Run from the repository root (nothing else running; it starts ``--peers`` peer processes)::

    .venv/bin/python bench/challenge_churn.py              # 20 peers, 30 s epochs, 20 epochs
    .venv/bin/python bench/challenge_churn.py --peers 4 --shards 8 --epochs 3   # smoke

Every peer runs challenge rounds with an explicit window (``[challenges] window_seconds`` in its
``peer.toml``, ``--window``, default 10 s: rounds then run whatever the epoch length). After
``--blobs`` blobs are stored, for each of ``--epochs`` epochs: ``--kill-after`` seconds into the
epoch one random peer is SIGKILLed and restarted ``--restart-after`` seconds later (both inside
the window); once the next epoch has begun and ``--settle`` seconds passed, every member of the
committee is asked for that epoch's availability certificates (verified against the committee).
All peers are honest, so every member without a certificate is a **false failure**. Printed per
epoch: members certified, the churned peer's outcome; then the totals, the peers' CPU, the CPU
model and the load. Benchmarks print; they never assert.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import trio

from walrus_p2p.client.challenges import fetch_availability
from walrus_p2p.client.service import open_client
from walrus_p2p.devnet import CLIENT_KEY_DIR
from walrus_p2p.node.config import config_path, ensure_identity, load_genesis
from walrus_p2p.testing.processes import CpuMeter, Devnet, bench_header, load_text

METER = CpuMeter()


def peer_pids(devnet: Devnet) -> list[int]:
    return [peer.child.pid for peer in devnet.peers.values() if peer.child.running]


async def wait_for_epoch(client: object, epoch: int, deadline: float) -> int:
    light = client.light  # type: ignore[attr-defined]
    while trio.current_time() < deadline:
        await light.refresh_if_stale()
        if light.epoch >= epoch:
            return int(light.epoch)
        await trio.sleep(0.5)
    raise TimeoutError(f"epoch {epoch} did not begin in time")


async def run(devnet: Devnet, arguments: argparse.Namespace) -> None:
    genesis = load_genesis(devnet.genesis_path)
    owner, _ = ensure_identity(devnet.directory / CLIENT_KEY_DIR)
    rng = random.Random(arguments.seed)
    duration = genesis.epoch_duration_seconds
    false_failures = 0
    churned_failures = 0
    checked = 0
    async with open_client(genesis, owner) as client:
        for _ in range(arguments.blobs):
            await client.store(os.urandom(64 * 1024), epochs=arguments.epochs + 5, permanent=False)
        first = client.light.epoch + 1
        cpu_before = METER.sample(peer_pids(devnet))
        started = time.monotonic()
        for epoch in range(first, first + arguments.epochs):
            deadline = trio.current_time() + 4 * duration
            await wait_for_epoch(client, epoch, deadline)
            index = rng.choice(sorted(devnet.peers))
            await trio.sleep(arguments.kill_after)
            METER.sample(peer_pids(devnet))
            devnet.stop_peer(index, kill=True)
            await trio.sleep(arguments.restart_after)
            devnet.start_peer(index)
            await wait_for_epoch(client, epoch + 1, deadline)
            await trio.sleep(arguments.settle)
            report = await fetch_availability(
                client.light, epoch, sample=len(devnet.peers), timeout=10.0
            )
            missing = [member for member in report.members if not member.certified]
            churned = devnet.peers[index].peer_id
            churned_ok = all(member.peer_id != churned for member in missing)
            false_failures += len(missing)
            churned_failures += 0 if churned_ok else 1
            checked += len(report.members)
            print(
                f"  epoch {epoch}: {len(report.members) - len(missing)}/{len(report.members)} "
                f"members certified (asked {report.asked}, answered {report.answered}); churned "
                f"peer-{index:02d} {'certified' if churned_ok else 'NOT certified'}"
                + (f"; without: {[member.peer_id[:12] for member in missing]}" if missing else "")
            )
        elapsed = time.monotonic() - started
        cpu = METER.sample(peer_pids(devnet)) - cpu_before
        counted = challenge_counters(devnet)
    print(
        f"{arguments.epochs} epochs of {duration} s with one kill and restart each: "
        f"{false_failures} false failures in {checked} member-epochs "
        f"({churned_failures} of them the churned peer); peers' CPU {cpu:.1f} s over "
        f"{elapsed:.0f} s = {cpu / elapsed:.2f} cores"
    )
    print(
        "challenge counters of the running peers at the end (a restarted peer's start at 0): "
        + ", ".join(f"{name} {value:,.0f}" for name, value in sorted(counted.items()))
    )


def challenge_counters(devnet: Devnet) -> dict[str, float]:
    """Sums over the peers of the challenge metrics that show rounds ran on real data."""
    totals: dict[str, float] = {}
    for index in devnet.peers:
        for name, value in devnet.metrics(index).items():
            if name.startswith(
                (
                    "walrus_challenge_rounds_total",
                    "walrus_challenge_blobs_read_total",
                    "walrus_challenge_disk_bytes_read_total",
                    "walrus_challenge_verdicts_total",
                )
            ):
                totals[name] = totals.get(name, 0.0) + value
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=20)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--epoch-duration", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--blobs", type=int, default=20)
    parser.add_argument("--kill-after", type=float, default=2.0)
    parser.add_argument("--restart-after", type=float, default=3.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    arguments = parser.parse_args()
    print(bench_header("bench/challenge_churn.py"))
    print(
        f"peers={arguments.peers} shards={arguments.shards} epoch={arguments.epoch_duration}s "
        f"epochs={arguments.epochs} window={arguments.window}s blobs={arguments.blobs} "
        f"kill-after={arguments.kill_after}s restart-after={arguments.restart_after}s"
    )
    directory = Path(tempfile.mkdtemp(prefix="walrus-challenge-churn-"))
    devnet = Devnet(
        directory, arguments.peers, arguments.shards, epoch_duration=arguments.epoch_duration
    )
    try:
        devnet.prepare()
        for peer in devnet.peers.values():
            path = config_path(peer.data_dir)
            path.write_text(
                path.read_text() + f"\n[challenges]\nwindow_seconds = {arguments.window}\n"
            )
        for index in devnet.peers:
            devnet.start_peer(index)
        for index in devnet.peers:
            devnet.wait_peer_metrics(index, timeout=arguments.ready_timeout)
        trio.run(run, devnet, arguments)
    finally:
        devnet.close()
    print(f"load after: {load_text()}")


if __name__ == "__main__":
    main()
