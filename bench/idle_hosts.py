"""Idle CPU of bare libp2p hosts, the floor an idle storage peer network is compared with.

Run from the repository root on an otherwise quiet machine::

    .venv/bin/python bench/idle_hosts.py                 # 20 processes, 60 s
    .venv/bin/python bench/idle_hosts.py --peers 50

Starts ``--peers`` processes, each opening one host exactly as a storage peer does
(``walrus_p2p.net.host.open_host``: TCP + Noise + yamux, the same options and patches) on
127.0.0.1, connected to every other one (a 20-peer devnet's peers are all connected to each
other too), and nothing else: no DHT, no gossip, no storage protocol. After ``--settle``
seconds it reads the processes' CPU time from ``/proc`` over ``--seconds`` and prints the cores
they used together, with the CPU model and the load average. docs/epochs.md, "Idle cost",
compares it with ``bench/epochs.py``'s idle figure of the storage peers.

Every process it starts is killed when it ends. Benchmarks print; they never assert.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from walrus_p2p.testing.processes import CpuMeter, cpu_model, load_text, stop_process

CHILD = r"""
import json, sys, time
from pathlib import Path
import trio
from walrus_p2p.net.host import HostConfig, open_host

index, directory = int(sys.argv[1]), Path(sys.argv[2])

async def main() -> None:
    async with open_host(HostConfig(seed=bytes([index + 1]) * 32)) as host:
        (directory / f"{index}.json").write_text(json.dumps([host.peer_id, host.listen_addrs]))
        (directory / f"{index}.json.done").touch()
        for _ in range(600):  # bounded: until every other host has written its address
            others = sorted(directory.glob("*.json.done"))
            if len(others) >= int(sys.argv[3]):
                break
            await trio.sleep(0.2)
        for path in directory.glob("*.json"):
            peer_id, addrs = json.loads(path.read_text())
            if peer_id != host.peer_id and path.stem > str(index):
                try:
                    await host.connect(peer_id, addrs, timeout=20.0)
                except Exception as error:  # a baseline: report and go on
                    print("connect failed", error, file=sys.stderr)
        await trio.sleep(float(sys.argv[4]))

trio.run(main)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=20)
    parser.add_argument("--settle", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    arguments = parser.parse_args()
    print(
        f"bench/idle_hosts.py {time.strftime('%Y-%m-%d %H:%M:%S %Z')} cpu={cpu_model()!r} "
        f"cores={os.cpu_count()} load={load_text()} peers={arguments.peers}"
    )
    directory = Path(tempfile.mkdtemp(prefix="walrus-idle-hosts-"))
    lifetime = arguments.settle + arguments.seconds + 120
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                str(i),
                str(directory),
                str(arguments.peers),
                str(lifetime),
            ],
            start_new_session=True,
        )
        for i in range(arguments.peers)
    ]
    try:
        deadline = time.monotonic() + 180
        while len(list(directory.glob("*.json.done"))) < arguments.peers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise SystemExit("hosts did not start")
            time.sleep(0.5)
        time.sleep(arguments.settle)
        pids = [p.pid for p in processes]
        meter = CpuMeter()
        base = meter.sample(pids)
        started = time.time()
        time.sleep(arguments.seconds)
        used = meter.sample(pids) - base
        elapsed = time.time() - started
        alive = sum(1 for p in processes if p.poll() is None)
        print(
            f"{alive} bare hosts, all connected: {used / elapsed:.3f} cores together "
            f"({used:.2f} CPU-s in {elapsed:.0f}s) load={load_text()}"
        )
        print(json.dumps({"peers": arguments.peers, "cores": round(used / elapsed, 4)}))
    finally:
        for process in processes:
            stop_process(process, kill=True)


if __name__ == "__main__":
    main()
