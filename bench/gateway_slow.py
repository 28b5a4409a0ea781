"""The HTTP gateway under slow clients: a normal client's latency, the gateway's memory, the cuts.

Run from the repository root::

    .venv/bin/python bench/gateway_slow.py                       # 500 slow clients, 20 s
    .venv/bin/python bench/gateway_slow.py --clients 50 --seconds 5 --idle-seconds 2   # smoke

The gateway runs in a child process (this script with ``--serve``) over the in-memory
`FakeBlobService` of the tests, not over a storage network: what is measured is the HTTP side
(connections, deadlines, admission), which does not depend on where blobs come from. It binds
127.0.0.1 with the default limits, except those given by flags (``--header-timeout``,
``--send-timeout``, ...).

This process first measures a normal client alone (``--idle-seconds``), then opens ``--clients``
slow clients and keeps measuring while they run (``--seconds``). The slow clients are a third
each of:

* ``slowloris``: sends a request head one byte per ``--interval`` seconds, never finishing it;
* ``upload``: sends a whole head announcing a 1 MiB body, then one body byte per interval;
* ``download``: asks for a ``--download-mib`` blob with a 4 KiB receive buffer and never reads.

They connect from ``--addresses`` different loopback addresses (127.1.x.y; Linux routes all of
127.0.0.0/8 to the loopback interface), as strangers on the internet would, so the gateway's
per-address limits do not simply refuse them all; the normal client is 127.0.0.1. A slow client
that is cut or refused does not come back, unless ``--reconnect`` is given: then it starts over
at once, as a determined attacker would.

Printed: the normal client's GET and PUT latencies (median, 95th percentile, non-200 answers)
idle and under attack, the gateway's resident memory (``VmRSS`` max and its peak ``VmHWM``), and
every second the gateway's open connections, writes cut at the send deadline, requests in
flight, blob bytes held and refusals by reason, with how many slow clients of each kind were cut
(or refused) by then, client side. Figures depend on the machine and its load: the CPU model and
the load average are printed with them. Benchmarks print; they never assert on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from walrus_p2p.api import GatewayLimits, build_gateway_app
from walrus_p2p.net.http import ConnectionStats, serve_http
from walrus_p2p.testing.fake_service import FakeBlobService
from walrus_p2p.testing.processes import cpu_model, load_text

MIB = 1 << 20
SMALL = os.urandom(10_000)
KINDS = ("slowloris", "upload", "download")


def raise_file_limit() -> tuple[int, int]:
    """Soft open-file limit up to the hard one: 500 clients and their server need 1000+ fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# --- the gateway (child process) -------------------------------------------------------------


async def serve_main(args: argparse.Namespace) -> None:
    service = FakeBlobService()
    small_id = service.put(SMALL)
    big_id = service.put(bytes(args.download_mib * MIB))
    limits = GatewayLimits(
        header_timeout_seconds=args.header_timeout,
        send_timeout_seconds=args.send_timeout,
        body_timeout_seconds=args.body_timeout,
        min_body_rate=args.min_body_rate,
    )
    app = build_gateway_app(service, limits)
    control = app.state.admission
    stats = ConnectionStats()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(
            lambda task_status: serve_http(
                app,
                "127.0.0.1:0",
                limits=limits.http_limits(),
                stats=stats,
                task_status=task_status,
            )
        )
        print(json.dumps({"url": urls[0], "small": small_id, "big": big_id}), flush=True)
        started = time.monotonic()
        while True:
            refused = Counter(
                reason for (_, reason), n in control.refusals.counts.items() for _ in range(n)
            )
            report = {
                "t": round(time.monotonic() - started, 2),
                "open": stats.open,
                "accepted": stats.accepted,
                "send_timeouts": stats.send_timeouts,
                "reads": control.reads.in_flight,
                "writes": control.writes.in_flight,
                "uploads": control.uploads.in_flight,
                "held_mib": round(control.budget.held / MIB, 1),
                "refused": dict(refused),
            }
            print(json.dumps(report), flush=True)
            await trio.sleep(0.5)


# --- the clients (this process) --------------------------------------------------------------


@dataclass
class Outcomes:
    started: float = field(default_factory=time.monotonic)
    cut: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    answers: Counter[str] = field(default_factory=Counter)
    connect_failed: int = 0


async def connect_from(address: str, port: int, receive_buffer: int | None = None) -> Any:
    sock = trio.socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.bind((address, 0))
    await sock.connect(("127.0.0.1", port))
    return sock


async def slow_client(
    kind: str,
    address: str,
    port: int,
    ids: dict[str, str],
    args: argparse.Namespace,
    outcomes: Outcomes,
) -> None:
    try:
        sock = await connect_from(address, port, 4096 if kind == "download" else None)
    except OSError:
        outcomes.connect_failed += 1
        return
    with sock:
        try:
            if kind == "download":
                head = f"GET /v1/blobs/{ids['big']} HTTP/1.1\r\nHost: gw\r\n\r\n".encode()
                await sock.send(head)
                await trio.sleep_forever()  # never reads; the gateway's side says when it cut
            if kind == "slowloris":
                drip = b"GET /status HTTP/1.1\r\nHost: gw\r\nX-Slow: " + b"s" * 100_000
            else:
                head = b"PUT /v1/blobs?epochs=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: "
                await sock.send(head + str(MIB).encode() + b"\r\n\r\n")
                drip = b"u" * MIB
            for byte in drip:
                await sock.send(bytes([byte]))
                with trio.move_on_after(args.interval):
                    reply = await sock.recv(4096)
                    outcomes.answers[f"{kind} {reply[9:12].decode() or 'closed'}"] += 1
                    break
        except OSError:
            outcomes.answers[f"{kind} reset"] += 1
        outcomes.cut[kind].append(time.monotonic() - outcomes.started)


async def returning_client(
    kind: str,
    address: str,
    port: int,
    ids: dict[str, str],
    args: argparse.Namespace,
    outcomes: Outcomes,
) -> None:
    """A slow client that, with ``--reconnect``, comes back as soon as it is cut or refused
    (at most ``MAX_RETURNS`` times; the attack's end cancels it)."""
    for _ in range(MAX_RETURNS if args.reconnect else 1):
        await slow_client(kind, address, port, ids, args, outcomes)
        await trio.sleep(0.05)


MAX_RETURNS = 10_000


def loopback_address(index: int, count: int) -> str:
    slot = index % count
    return f"127.1.{slot // 250}.{slot % 250 + 1}"


async def normal_client(url: str, small_id: str, seconds: float) -> dict[str, Any]:
    gets: list[float] = []
    puts: list[float] = []
    failures: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        while time.monotonic() < deadline:
            for method, latencies in (("GET", gets), ("PUT", puts)):
                started = time.monotonic()
                try:
                    if method == "GET":
                        response = await client.get(f"/v1/blobs/{small_id}")
                    else:
                        response = await client.put(
                            "/v1/blobs?epochs=1", content=os.urandom(10_000)
                        )
                except httpx.HTTPError as error:
                    failures[f"{method} {type(error).__name__}"] += 1
                    continue
                if response.status_code == 200:
                    latencies.append(time.monotonic() - started)
                else:
                    failures[f"{method} {response.status_code}"] += 1
            await trio.sleep(0.05)
    return {"get": gets, "put": puts, "failures": dict(failures)}


def percentiles(latencies: list[float]) -> str:
    if not latencies:
        return "      -        -"
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"{statistics.median(ordered) * 1000:7.1f} {p95 * 1000:8.1f}"


def memory_of(pid: int) -> tuple[float, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


async def client_main(args: argparse.Namespace, gateway: subprocess.Popen[str]) -> None:
    assert gateway.stdout is not None
    hello = json.loads(gateway.stdout.readline())
    url, ids = hello["url"], {"small": hello["small"], "big": hello["big"]}
    port = int(url.rsplit(":", 1)[1])
    reports: list[dict[str, Any]] = []
    rss_max = 0.0

    async def read_reports() -> None:
        assert gateway.stdout is not None
        while line := await trio.to_thread.run_sync(gateway.stdout.readline):
            reports.append(json.loads(line))

    async def sample_memory(done: trio.Event) -> None:
        nonlocal rss_max
        while not done.is_set():
            rss_max = max(rss_max, memory_of(gateway.pid)[0])
            await trio.sleep(0.2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_reports)
        idle = await normal_client(url, ids["small"], args.idle_seconds)
        rss_idle = memory_of(gateway.pid)[0]
        outcomes = Outcomes()
        attack_started_report = len(reports)
        done = trio.Event()
        nursery.start_soon(sample_memory, done)
        async with trio.open_nursery() as attackers:
            for index in range(args.clients):
                kind = KINDS[index % len(KINDS)]
                address = loopback_address(index, args.addresses)
                attackers.start_soon(returning_client, kind, address, port, ids, args, outcomes)
                if index % 50 == 49:
                    await trio.sleep(0)
            attack = await normal_client(url, ids["small"], args.seconds)
            attackers.cancel_scope.cancel()
        done.set()
        rss_after, hwm = memory_of(gateway.pid)
        nursery.cancel_scope.cancel()

    print(f"{'phase':<8} {'GET p50':>7} {'GET p95':>8} {'PUT p50':>7} {'PUT p95':>8}  failures")
    for name, result in (("idle", idle), ("attack", attack)):
        print(
            f"{name:<8} {percentiles(result['get'])} {percentiles(result['put'])}  "
            f"{result['failures'] or '-'}  ({len(result['get'])} GETs, {len(result['put'])} PUTs)"
        )
    print(
        f"gateway RSS: idle {rss_idle:.1f} MiB, max under attack {rss_max:.1f} MiB, "
        f"after {rss_after:.1f} MiB, peak VmHWM {hwm:.1f} MiB"
    )
    print(
        f"slow clients: {args.clients} from {args.addresses} addresses; "
        f"connect failures {outcomes.connect_failed}"
    )
    for kind in KINDS:
        times = sorted(outcomes.cut[kind])
        when = (
            f"first {times[0]:.1f} s, median {statistics.median(times):.1f} s, "
            f"last {times[-1]:.1f} s"
            if times
            else "none"
        )
        print(f"  {kind:<9} cut or answered (client side): {len(times):>4}  {when}")
    print(f"  answers seen by slow clients: {dict(sorted(outcomes.answers.items()))}")
    print("gateway, every second of the attack (server side):")
    for report in reports[attack_started_report::2]:
        print(
            f"  t={report['t']:>6} open={report['open']:>4} accepted={report['accepted']:>5} "
            f"send_timeouts={report['send_timeouts']:>4} reads={report['reads']:>3} "
            f"uploads={report['uploads']:>3} writes={report['writes']:>2} "
            f"held={report['held_mib']:>6} MiB "
            f"refused={report['refused']}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--addresses", type=int, default=100, help="loopback source addresses")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the attack")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between drips")
    parser.add_argument("--download-mib", type=int, default=16)
    parser.add_argument("--header-timeout", type=float, default=10.0)
    parser.add_argument("--send-timeout", type=float, default=30.0)
    parser.add_argument("--body-timeout", type=float, default=120.0)
    parser.add_argument("--min-body-rate", type=int, default=8192)
    parser.add_argument(
        "--reconnect", action="store_true", help="slow clients come back once cut or refused"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    soft, _ = raise_file_limit()
    if args.serve:
        trio.run(serve_main, args)
        return 0
    if soft < 2 * args.clients + 200:
        print(f"open file limit {soft} is too low for {args.clients} clients")
        return 1
    print(f"cpu: {cpu_model()}  load: {load_text()}  open files: {soft}")
    child_args = [*sys.argv[1:], "--serve"]
    gateway = subprocess.Popen(
        [sys.executable, __file__, *child_args], stdout=subprocess.PIPE, text=True
    )
    try:
        trio.run(client_main, args, gateway)
    finally:
        gateway.terminate()
        gateway.wait(10)
    print(f"load after: {load_text()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
