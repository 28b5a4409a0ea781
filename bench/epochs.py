"""Epoch changes of a process devnet, as a user runs it: timing, messages, bytes, CPU, writability.

Run from the repository root on an otherwise quiet machine::

    .venv/bin/python bench/epochs.py                                  # 20 peers, 100 shards, 30 s
    .venv/bin/python bench/epochs.py --peers 50 --shards 200 --epoch-duration 60 --changes 5
    .venv/bin/python bench/epochs.py --churn                          # kills/restarts + 4 writers
    .venv/bin/python bench/epochs.py --economy                        # with settlements
    .venv/bin/python bench/epochs.py --economy --write --max-blob 65536   # paid stores: locks
                                                                      # to hand over
    .venv/bin/python bench/epochs.py --epoch-duration 3600 --changes 0 --settle 60 \
        --quiet-seconds 90                                            # idle, nothing to agree on

What it does: starts ``walrus-peer devnet`` (the command a user types: one ``walrus-peer run``
process per peer plus the HTTP gateway) in a fresh directory with a short epoch, waits until the
gateway's ``/status`` says writable, then for ``--changes`` epoch changes:

- samples the gateway's ``GET /status`` every second (writable or not, the verified epoch);
- reads every peer process's CPU time from ``/proc/PID/stat`` every second;
- scrapes every peer's Prometheus endpoint (the devnet gives each one; ``peer.toml``) shortly
  before each scheduled change and once it is over, and takes from the difference the messages
  and bytes sent network-wide for that change (``walrus_control_*`` counters: consensus,
  gossip, sync, pings, by kind) and the transport's bytes (``walrus_net_bytes_sent_total``),
  the round that decided and the time each peer switched (``walrus_epoch_switched_unix``);
- prints per change: the scheduled start, the delay to the first and the median peer switch,
  the round, messages and bytes network-wide, CPU-s network-wide in the change's window;
- with ``--economy``, prints per change how long the peers' lock hand-overs took
  (``walrus_handover_seconds``) and how many reported orders they received; the hand-over's
  requests show by kind (``GetLocksRequest``/``GetLocksReply``);
- prints the idle CPU of the 20 peers between changes (status sampling on), and in one quiet
  window of ``--quiet-seconds`` in the middle of an epoch with the sampling paused.

``--churn``: additionally, every ``--churn-interval`` s for ``--churn-seconds``, three random peers
are SIGKILLed and restarted ``--restart-delay`` s later, while ``--writers`` threads store blobs of
0 B to 8 MB through the gateway (``PUT /v1/blobs``); afterwards it waits two more epoch changes,
reads every certified blob back through the gateway and compares it byte for byte, and prints
the fraction of stores that succeeded and how long after the last restart the network was
writable again.

Every process this bench starts is killed (process group) when it ends, whatever happens.
Benchmarks print; they never assert on speed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from walrus_p2p.testing.processes import (
    CpuMeter,
    DevnetCommand,
    DevnetError,
    cpu_model,
    http_get,
    http_put,
    load_text,
)

REPO = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class Sample:
    at: float
    writable: bool
    epoch: int | None
    cpu: float


CONTROL_PREFIXES = ("walrus_control_messages_sent_total", "walrus_control_bytes_sent_total")


def summed(scrape: dict[int, dict[str, float]], prefix: str) -> dict[str, float]:
    """Sum a metric over peers, per label set."""
    out: dict[str, float] = {}
    for values in scrape.values():
        for name, value in values.items():
            if name == prefix or name.startswith(prefix + "{"):
                labels = name[len(prefix) :]
                out[labels] = out.get(labels, 0.0) + value
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def kind_of(labels: str) -> str:
    found = re.search(r'kind="([^"]+)"', labels)
    return found.group(1) if found else (labels or "-")


class Sampler(threading.Thread):
    def __init__(self, devnet: DevnetCommand, meter: CpuMeter) -> None:
        super().__init__(daemon=True)
        self.devnet = devnet
        self.meter = meter
        self.samples: list[Sample] = []
        self.paused = threading.Event()
        self.stopped = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        next_at = time.time()
        while not self.stopped.is_set():
            next_at += 1.0
            cpu = self.meter.sample(self.devnet.pids())
            if not self.paused.is_set():
                status, body = http_get(self.devnet.url("/status"), 0.95)
                epoch = None
                with contextlib.suppress(ValueError, AttributeError):
                    epoch = int(json.loads(body).get("epoch"))
                with self.lock:
                    self.samples.append(Sample(time.time(), status == 200, epoch, cpu))
            self.stopped.wait(max(0.0, next_at - time.time()))


@dataclass
class ChangeFigures:
    epoch: int
    first_switch: float | None
    median_switch: float | None
    switched: int
    round: float | None
    messages: dict[str, float]
    bytes: dict[str, float]
    net_bytes: float
    cpu: float
    window: float
    handovers: list[float]
    """Seconds each peer's lock hand-over into this epoch took (``walrus_handover_seconds``
    of the peers whose ``walrus_handover_epoch`` is this one; docs/economics.md)."""
    handover_orders: float


def measure_change(
    devnet: DevnetCommand, meter: CpuMeter, epoch: int, window: float
) -> ChangeFigures:
    scheduled = devnet.epoch_start(epoch)
    wait_until(scheduled - 2.0)
    before = devnet.scrape()
    cpu_before = meter.sample(devnet.pids())
    t_before = time.time()
    wait_until(scheduled + window)
    devnet.refresh_pids()
    after = devnet.scrape()
    cpu_after = meter.sample(devnet.pids())
    t_after = time.time()
    switches = []
    rounds = []
    for values in after.values():
        at = values.get(f'walrus_epoch_switched_unix{{epoch="{epoch}"}}')
        if at is None and values.get("walrus_epoch_current", -1) >= epoch:
            at = values.get("walrus_epoch_last_switch_unix")
        if at:
            switches.append(at - scheduled)
        decided = values.get("walrus_epoch_decided_round")
        if decided is not None and values.get("walrus_epoch_current", -1) == epoch:
            rounds.append(decided)
    messages: dict[str, float] = {}
    sizes: dict[str, float] = {}
    for labels, value in delta(
        summed(after, CONTROL_PREFIXES[0]), summed(before, CONTROL_PREFIXES[0])
    ).items():
        messages[kind_of(labels)] = messages.get(kind_of(labels), 0.0) + value
    for labels, value in delta(
        summed(after, CONTROL_PREFIXES[1]), summed(before, CONTROL_PREFIXES[1])
    ).items():
        sizes[kind_of(labels)] = sizes.get(kind_of(labels), 0.0) + value
    net = sum(summed(after, "walrus_net_bytes_sent_total").values()) - sum(
        summed(before, "walrus_net_bytes_sent_total").values()
    )
    handovers = [
        values["walrus_handover_seconds"]
        for values in after.values()
        if values.get("walrus_handover_epoch") == epoch and "walrus_handover_seconds" in values
    ]
    orders = "walrus_handover_orders_total"
    handover_orders = sum(delta(summed(after, orders), summed(before, orders)).values())
    return ChangeFigures(
        epoch=epoch,
        first_switch=min(switches) if switches else None,
        median_switch=statistics.median(switches) if switches else None,
        switched=len(switches),
        round=statistics.median(rounds) if rounds else None,
        messages=messages,
        bytes=sizes,
        net_bytes=net,
        cpu=cpu_after - cpu_before,
        window=t_after - t_before,
        handovers=handovers,
        handover_orders=handover_orders,
    )


def wait_until(at: float) -> None:
    while True:
        left = at - time.time()
        if left <= 0:
            return
        time.sleep(min(left, 1.0))


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


@dataclass
class Writers:
    devnet: DevnetCommand
    count: int
    max_size: int
    epochs: int
    """Lifetime of each stored blob: it must outlast the read-back at the end."""
    stop: threading.Event = field(default_factory=threading.Event)
    results: list[tuple[bool, str | None, str, int, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run_one(self, seed: int) -> None:
        generator = random.Random(seed)
        while not self.stop.is_set():
            size = generator.choice([0, 1, 1024, 64 * 1024, 1 << 20, self.max_size])
            size = generator.randint(0, size) if size > 1024 else size
            data = os.urandom(size)
            status, body = http_put(self.devnet.url(f"/v1/blobs?epochs={self.epochs}"), data, 180.0)
            blob_id = None
            detail = str(status)
            if status == 200:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    reply = json.loads(body)
                    info = reply.get("newlyCreated") or reply.get("alreadyCertified") or {}
                    blob_id = (info.get("blobObject") or {}).get("blobId") or info.get("blobId")
            else:
                detail = f"{status} {body[:400].decode(errors='replace')}"
            with self.lock:
                self.results.append(
                    (blob_id is not None, blob_id, hashlib.sha256(data).hexdigest(), size, detail)
                )

    def start(self) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=self.run_one, args=(index,), daemon=True)
            for index in range(self.count)
        ]
        for thread in threads:
            thread.start()
        return threads


def churn(devnet: DevnetCommand, arguments: argparse.Namespace, log: list[str]) -> float:
    """Kill three random peers every interval, restart each after the delay; returns the time
    of the last restart."""
    generator = random.Random(arguments.seed)
    ends = time.time() + arguments.churn_seconds
    last_restart = time.time()
    timers: list[threading.Timer] = []
    while time.time() < ends:
        devnet.refresh_pids()
        victims = generator.sample(sorted(devnet.peers), 3)
        for index in victims:
            devnet.kill(index)
        log.append(f"{time.strftime('%H:%M:%S')} killed {victims}")

        def restart(victims: list[int] = victims) -> None:
            for index in victims:
                devnet.restart(index)
            log.append(f"{time.strftime('%H:%M:%S')} restarted {victims}")

        timer = threading.Timer(arguments.restart_delay, restart)
        timer.start()
        timers.append(timer)
        last_restart = time.time() + arguments.restart_delay
        time.sleep(arguments.churn_interval)
    for timer in timers:
        timer.join()
    return last_restart


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=20)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--epoch-duration", type=int, default=30)
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--window", type=float, default=0.0, help="seconds after a change")
    parser.add_argument("--quiet-seconds", type=float, default=10.0)
    parser.add_argument(
        "--settle", type=float, default=0.0, help="seconds to wait once writable, before measuring"
    )
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--keep", action="store_true", help="keep the devnet directory")
    parser.add_argument("--churn", action="store_true")
    parser.add_argument(
        "--write",
        action="store_true",
        help="--writers store blobs through the gateway during the run (implied by --churn)",
    )
    parser.add_argument(
        "--economy",
        action="store_true",
        help="devnet --economy: every epoch value carries a settlement (docs/economics.md)",
    )
    parser.add_argument("--churn-seconds", type=float, default=120.0)
    parser.add_argument("--churn-interval", type=float, default=15.0)
    parser.add_argument("--restart-delay", type=float, default=8.0)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--max-blob", type=int, default=8_000_000)
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args()

    window = arguments.window or min(15.0, arguments.epoch_duration / 2)
    print(
        f"bench/epochs.py {time.strftime('%Y-%m-%d %H:%M:%S %Z')} commit={git_commit()} "
        f"cpu={cpu_model()!r} cores={os.cpu_count()} load={load_text()}"
    )
    print(
        f"peers={arguments.peers} shards={arguments.shards} "
        f"epoch={arguments.epoch_duration}s changes={arguments.changes} churn={arguments.churn} "
        f"economy={arguments.economy}"
    )
    directory = Path(tempfile.mkdtemp(prefix="walrus-epochs-"))
    devnet = DevnetCommand(
        directory,
        peers=arguments.peers,
        shards=arguments.shards,
        epoch_duration=arguments.epoch_duration,
        http_port=arguments.http_port,
        economy=arguments.economy,
    )
    meter = CpuMeter()
    sampler = Sampler(devnet, meter)
    try:
        devnet.start()
        try:
            ready = devnet.wait_ready(arguments.ready_timeout)
        except DevnetError as error:
            raise SystemExit(str(error)) from error
        devnet.discover()
        print(
            f"devnet writable after {ready:.1f}s; peers with metrics: "
            f"{sum(1 for p in devnet.peers.values() if p.metrics)} of {len(devnet.peers)}"
        )
        time.sleep(arguments.settle)
        sampler.start()
        now = time.time()
        first = int((now - devnet.genesis_time) // devnet.epoch_duration) + 1
        if devnet.epoch_start(first) - now < 3.0:
            first += 1
        # Idle: a quiet window (no /status sampling) in the epoch before the first measured
        # change, once the previous change is long over.
        quiet_start = max(now, devnet.epoch_start(first) - arguments.quiet_seconds - 3.0)
        if arguments.changes == 0:  # an idle run: measure at once
            quiet_start = now
        quiet_cpu = None
        if devnet.epoch_start(first) - 3.0 - quiet_start >= arguments.quiet_seconds * 0.8:
            wait_until(quiet_start)
            sampler.paused.set()
            devnet.refresh_pids()
            before = meter.sample(devnet.pids())
            t0 = time.time()
            time.sleep(arguments.quiet_seconds)
            quiet_cpu = (meter.sample(devnet.pids()) - before) / (time.time() - t0)
            sampler.paused.clear()

        writers: Writers | None = None
        churn_log: list[str] = []
        churn_thread: threading.Thread | None = None
        last_restart: list[float] = []
        if arguments.churn or arguments.write:
            # Blobs live until after the read-back two changes past the run's last one.
            lifetime = arguments.changes + 6
            if arguments.churn:
                lifetime += int(arguments.churn_seconds // arguments.epoch_duration)
            writers = Writers(devnet, arguments.writers, arguments.max_blob, lifetime)
            writers.start()
        if arguments.churn:

            def run_churn() -> None:
                last_restart.append(churn(devnet, arguments, churn_log))

            churn_thread = threading.Thread(target=run_churn, daemon=True)
            churn_thread.start()

        run_start = time.time()
        cpu_run_start = meter.sample(devnet.pids())
        figures: list[ChangeFigures] = []
        print(
            "epoch | first/median switch after scheduled start (s) | switched | round | "
            "messages | control bytes | transport bytes | CPU-s (window)"
        )
        for epoch in range(first, first + arguments.changes):
            change = measure_change(devnet, meter, epoch, window)
            figures.append(change)
            messages = sum(change.messages.values())
            sizes = sum(change.bytes.values())
            detail = ", ".join(
                f"{kind} {int(count)}/{int(change.bytes.get(kind, 0))}B"
                for kind, count in sorted(change.messages.items())
            )
            print(
                f"{epoch:5d} | {fmt(change.first_switch)} / {fmt(change.median_switch)} | "
                f"{change.switched:3d}/{len(devnet.peers)} | {fmt(change.round, '.0f')} | "
                f"{int(messages)} | {int(sizes)} | {int(change.net_bytes)} | "
                f"{change.cpu:.2f} ({change.window:.0f}s)  load={load_text()}"
            )
            if detail:
                print(f"      by kind (messages/bytes): {detail}")
            if change.handovers:
                print(
                    f"      lock hand-over: {len(change.handovers)} peers done, "
                    f"p50 {statistics.median(change.handovers):.2f}s "
                    f"max {max(change.handovers):.2f}s, "
                    f"{int(change.handover_orders)} reported orders received"
                )
        run_seconds = time.time() - run_start
        cpu_run = meter.sample(devnet.pids()) - cpu_run_start

        if churn_thread is not None:
            churn_thread.join()
        if writers is not None:
            writers.stop.set()
            print("\n".join("churn: " + line for line in churn_log))

        with sampler.lock:
            samples = [s for s in sampler.samples if s.at >= run_start]
        writable = sum(1 for s in samples if s.writable)
        print(
            f"writable in {writable}/{len(samples)} 1-s samples "
            f"({100.0 * writable / max(1, len(samples)):.1f} %) over {run_seconds:.0f}s"
        )
        print(
            f"CPU of the peers: {cpu_run / run_seconds:.3f} cores averaged over the run "
            f"({cpu_run:.1f} CPU-s in {run_seconds:.0f}s)"
        )
        # Idle between changes: from window end to 2 s before the next scheduled start.
        idle_cpu = 0.0
        idle_time = 0.0
        with sampler.lock:
            all_samples = list(sampler.samples)
        for change in figures[:-1]:
            start = devnet.epoch_start(change.epoch) + window
            end = devnet.epoch_start(change.epoch + 1) - 2.0
            inside = [s for s in all_samples if start <= s.at <= end]
            if len(inside) >= 2:
                idle_cpu += inside[-1].cpu - inside[0].cpu
                idle_time += inside[-1].at - inside[0].at
        if idle_time:
            print(
                f"idle CPU between changes (status sampled every 1 s): "
                f"{idle_cpu / idle_time:.3f} cores"
            )
        if quiet_cpu is not None:
            print(
                f"idle CPU in a quiet window of {arguments.quiet_seconds:g}s "
                f"(no sampling): {quiet_cpu:.3f} cores"
            )
        delays = [c.median_switch for c in figures if c.median_switch is not None]
        decided = [c for c in figures if c.switched > 0]
        if delays:
            print(
                f"changes decided: {len(decided)}/{len(figures)}; median switch delay "
                f"{statistics.median(delays):.1f}s, max {max(delays):.1f}s"
            )
        epochs = [s.epoch for s in samples if s.epoch is not None]
        if epochs:
            print(f"gateway epoch: {min(epochs)} -> {max(epochs)}")

        if writers is not None:
            if last_restart:
                back = [
                    s.at - last_restart[0]
                    for s in all_samples
                    if s.at >= last_restart[0] and s.writable
                ]
                print(
                    "writable again after the last restart: "
                    + (f"{back[0]:.1f}s" if back else "not within the run")
                )
            results = list(writers.results)
            ok = [r for r in results if r[0]]
            print(
                f"stores: {len(ok)}/{len(results)} succeeded "
                f"({100.0 * len(ok) / max(1, len(results)):.1f} %)"
            )
            failures: dict[str, int] = {}
            for result in results:
                if not result[0]:
                    failures[result[4][:60]] = failures.get(result[4][:60], 0) + 1
            for reason, count in sorted(failures.items(), key=lambda x: -x[1])[:6]:
                print(f"  failed {count}x: {reason}")
            for result in [r for r in results if not r[0]][:3]:
                print(f"  e.g. size={result[3]}: {result[4]}")
            target = int((time.time() - devnet.genesis_time) // devnet.epoch_duration) + 2
            wait_until(devnet.epoch_start(target) + 5.0)
            identical = 0
            for _ok, blob_id, digest, _size, _detail in ok:
                status, body = http_get(devnet.url(f"/v1/blobs/{blob_id}"), 120.0)
                if status == 200 and hashlib.sha256(body).hexdigest() == digest:
                    identical += 1
                else:
                    print(f"  read back FAILED blob={blob_id} status={status}")
            print(f"read back two epochs later: {identical}/{len(ok)} byte-identical")
    finally:
        sampler.stopped.set()
        devnet.stop()
        if arguments.keep:
            print(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
