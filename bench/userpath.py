"""What a user meets: the ``walrus-peer`` command and the HTTP gateway on the default devnet,
timed as a user calls them, next to a Tahoe-LAFS grid doing the same operations in the same run.

Run from the repository root on an otherwise quiet machine (the CPU model and the load average
are printed with the figures)::

    .venv/bin/python bench/userpath.py                          # 20 peers / 100 shards
    .venv/bin/python bench/userpath.py --tahoe /tmp/tahoe/v/bin/tahoe
    .venv/bin/python bench/userpath.py --peers 4 --shards 10 --reps 2 --big-mib 4 --no-tahoe

Part 1, walrus-p2p: ``walrus-peer devnet --peers P --shards S`` (separate peer processes, the
gateway in the devnet process, exactly what ``make demo`` starts), then, as separate processes
the way a user types them (interpreter start included): ``info``, ``status BLOB``, ``read`` of a
1 KiB blob, ``store`` of a fresh 1 KiB file, ``store`` and ``read`` of a fresh ``--big-mib`` MiB
file; and over HTTP (one keep-alive connection, as a browser or an SDK would hold): ``GET`` of a
1 KiB blob (``--gets`` times), ``PUT`` of a fresh 1 KiB blob, ``PUT``/``GET`` of the big blob.
Every read is compared with what was stored. The devnet starts ``walrus-peer agent`` (docs/cli.md,
"The agent"), so the commands are answered by it; the small ones run again with
``WALRUS_AGENT=off`` ("no agent": each process starts its own light peer). Medians and p95 of
the wall times; peak RSS (VmHWM) of each CLI process (polled while it runs), of the agent
(which does the commands' work) and of the devnet process, which is the gateway.

Part 2, Tahoe-LAFS (when ``--tahoe`` names a ``tahoe`` executable, default
``/tmp/tahoe/v/bin/tahoe`` if it exists; ``pip install tahoe-lafs`` into any venv): after the
devnet has stopped, an introducer, ``--peers`` storage nodes and one client node, all on
127.0.0.1, encoding ``--tahoe-encoding`` (k:happy:n, default 7:20:20: like n = 100 shards, any
third of the servers may go; every share placed before ``put`` returns), Tahoe's default HTTPS
storage protocol (``--tahoe-foolscap`` for the legacy one). The same operations: ``tahoe put``
and ``tahoe get`` of 1 KiB and of the big file, and PUT/GET on its web API (``/uri``). Then the
ratios the issue asks for (store and read speed of the big blob, CLI and gateway).

Every process this bench starts is killed (process group) when it ends, whatever happens.
Benchmarks print; they never assert on speed.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from walrus_p2p.devnet import free_tcp_port
from walrus_p2p.testing.processes import cpu_model, load_text

KIB = 1024
MIB = 1024 * KIB
CLI = (sys.executable, "-m", "walrus_p2p.cli")
READY_TIMEOUT = 300.0
TAHOE_READY_TIMEOUT = 120.0
COMMAND_TIMEOUT = 300.0


# -- measuring processes ------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    peak_rss_mib: float
    returncode: int
    stdout: str
    stderr: str


def run_timed(argv: Sequence[str], env: dict[str, str], timeout: float = COMMAND_TIMEOUT) -> Run:
    """Run one command as a user would; wall time, peak RSS (VmHWM), output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(argv), stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env
        )
        deadline = started + timeout
        peak = 0.0
        while True:
            # VmHWM of the running child: wait4's ru_maxrss would count this (large) process's
            # memory, which a forked child carries until exec.
            peak = max(peak, vm_hwm_mib(process.pid))
            pid, status, _ = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                pid, status, _ = os.wait4(process.pid, 0)
                break
            time.sleep(0.001)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Run(
            seconds,
            peak,
            process.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


def checked(run: Run, what: str) -> Run:
    if run.returncode != 0:
        raise SystemExit(f"{what} failed (exit {run.returncode}): {run.stderr[-2000:]}")
    return run


def vm_hwm_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def agent_peak_rss(genesis: Path, env: dict[str, str]) -> float:
    """Peak RSS of the devnet's ``walrus-peer agent`` (its pid file), 0 if none runs."""
    from walrus_p2p.cli import agent_link

    saved = os.environ.get("XDG_RUNTIME_DIR")
    if "XDG_RUNTIME_DIR" in env:
        os.environ["XDG_RUNTIME_DIR"] = env["XDG_RUNTIME_DIR"]
    try:
        pid_file = agent_link.agent_directory() / f"{agent_link.agent_name(str(genesis))}.pid"
    finally:
        if saved is not None:
            os.environ["XDG_RUNTIME_DIR"] = saved
    try:
        return vm_hwm_mib(int(pid_file.read_text().strip()))
    except (OSError, ValueError):
        return 0.0


@dataclass
class Row:
    system: str
    operation: str
    seconds: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    size: int = 0

    def add(self, seconds: float, rss: float = 0.0) -> None:
        self.seconds.append(seconds)
        if rss:
            self.rss_mib.append(rss)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p95(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]

    def line(self) -> str:
        speed = f"{self.size / MIB / self.median:7.1f} MB/s" if self.size >= MIB else " " * 12
        rss = f"peak RSS {max(self.rss_mib):6.0f} MiB" if self.rss_mib else ""
        return (
            f"{self.system:<8} {self.operation:<28} n={len(self.seconds):<3} "
            f"p50 {fmt(self.median)}  p95 {fmt(self.p95)} {speed}  {rss}"
        )


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms" if seconds < 1 else f"{seconds:7.2f} s "


@contextlib.contextmanager
def process_group(
    argv: Sequence[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            list(argv),
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for_text(path: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if text in path.read_text(errors="replace"):
            return time.perf_counter() - started
        if process.poll() is not None:
            raise SystemExit(f"exited before {text!r}: {path.read_text()[-3000:]}")
        time.sleep(0.1)
    raise SystemExit(f"no {text!r} within {timeout:g}s: {path.read_text()[-3000:]}")


# -- HTTP -----------------------------------------------------------------------------------------


class Http:
    """One keep-alive HTTP/1.1 connection, reopened if the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.connection = http.client.HTTPConnection(host, port, timeout=COMMAND_TIMEOUT)

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes, float]:
        for attempt in range(2):
            started = time.perf_counter()
            try:
                self.connection.request(method, path, body=body)
                reply = self.connection.getresponse()
                data = reply.read()
                return reply.status, data, time.perf_counter() - started
            except (OSError, http.client.HTTPException) as error:
                # A fresh connection for the next call (a failed one keeps its state).
                self.connection.close()
                self.connection = http.client.HTTPConnection(
                    self.host, self.port, timeout=COMMAND_TIMEOUT
                )
                closed = isinstance(
                    error, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError
                )
                if attempt or not closed:
                    raise
        raise AssertionError("unreachable")


# -- walrus-p2p -----------------------------------------------------------------------------------


def walrus_part(args: argparse.Namespace, work: Path, rows: list[Row]) -> None:
    port = free_tcp_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALRUS_")}
    devnet_dir = work / "devnet"
    log = work / "devnet.out"
    argv = [
        *CLI,
        "devnet",
        "--peers",
        str(args.peers),
        "--shards",
        str(args.shards),
        "--dir",
        str(devnet_dir),
        "--http",
        f"127.0.0.1:{port}",
    ]
    started = time.perf_counter()
    with process_group(argv, env, log) as devnet:
        wait_for_text(log, "devnet ready", devnet, READY_TIMEOUT)
        print(f"devnet ready in {time.perf_counter() - started:.1f} s (load {load_text()})")
        env = {
            **env,
            "WALRUS_GENESIS": str(devnet_dir / "genesis.toml"),
            "WALRUS_KEY_DIR": str(work / "cli-key"),
        }
        time.sleep(args.settle)
        files = work / "files"
        files.mkdir()

        def fresh(size: int, name: str) -> tuple[Path, bytes]:
            data = secrets.token_bytes(size)
            path = files / name
            path.write_bytes(data)
            return path, data

        def cli_store(path: Path) -> tuple[str, Run]:
            run = checked(run_timed([*CLI, "store", str(path), "--epochs", "5"], env), "store")
            found = re.search(r"blob id (\S+)", run.stdout)
            if found is None:
                raise SystemExit(f"store printed no blob id: {run.stdout}")
            return found.group(1), run

        def cli_read(blob: str, expected: bytes) -> Run:
            out = files / "read.out"
            run = checked(run_timed([*CLI, "read", blob, "-o", str(out)], env), "read")
            if out.read_bytes() != expected:
                raise SystemExit(f"read of {blob} gave different bytes")
            out.unlink()
            return run

        small_path, small = fresh(KIB, "small.bin")
        small_id, _ = cli_store(small_path)
        warm = env
        for label, mode_env in (("", warm), (" (no agent)", {**warm, "WALRUS_AGENT": "off"})):
            env = mode_env
            info = Row("walrus", "cli info" + label)
            status = Row("walrus", "cli status" + label)
            read_small = Row("walrus", "cli read 1 KiB" + label)
            store_small = Row("walrus", "cli store 1 KiB" + label)
            health = Row("walrus", "cli health" + label)
            for rep in range(args.reps):
                run = checked(run_timed([*CLI, "info"], env), "info")
                info.add(run.seconds, run.peak_rss_mib)
                run = checked(run_timed([*CLI, "health"], env), "health")
                health.add(run.seconds, run.peak_rss_mib)
                run = checked(run_timed([*CLI, "status", small_id], env), "status")
                status.add(run.seconds, run.peak_rss_mib)
                run = cli_read(small_id, small)
                read_small.add(run.seconds, run.peak_rss_mib)
                path, _ = fresh(KIB, f"small-{rep}{label.strip()}.bin")
                _, run = cli_store(path)
                store_small.add(run.seconds, run.peak_rss_mib)
            rows += [info, health, status, read_small, store_small]
        env = warm
        big_size = args.big_mib * MIB
        store_big = Row("walrus", f"cli store {args.big_mib} MiB", size=big_size)
        read_big = Row("walrus", f"cli read {args.big_mib} MiB", size=big_size)
        for rep in range(args.big_reps):
            path, data = fresh(big_size, f"big-{rep}.bin")
            blob, run = cli_store(path)
            store_big.add(run.seconds, run.peak_rss_mib)
            run = cli_read(blob, data)
            read_big.add(run.seconds, run.peak_rss_mib)
            path.unlink()
        rows += [store_big, read_big]
        agent_rss = agent_peak_rss(devnet_dir / "genesis.toml", env)
        print(f"walrus agent (does the CLI's work): peak RSS {agent_rss:.0f} MiB", flush=True)

        http = Http("127.0.0.1", port)
        get_small = Row("walrus", "gateway GET 1 KiB")
        put_small = Row("walrus", "gateway PUT 1 KiB")
        for _ in range(args.gets):
            code, body, seconds = http.call("GET", f"/v1/blobs/{small_id}")
            if code != 200 or body != small:
                raise SystemExit(f"gateway GET: {code} {body[:200]!r}")
            get_small.add(seconds)
        for _ in range(args.reps):
            code, body, seconds = http.call("PUT", "/v1/blobs?epochs=5", secrets.token_bytes(KIB))
            if code != 200:
                raise SystemExit(f"gateway PUT: {code} {body[:300]!r}")
            put_small.add(seconds)
        put_big = Row("walrus", f"gateway PUT {args.big_mib} MiB", size=big_size)
        get_big = Row("walrus", f"gateway GET {args.big_mib} MiB", size=big_size)
        for _ in range(args.big_reps):
            data = secrets.token_bytes(big_size)
            code, body, seconds = http.call("PUT", "/v1/blobs?epochs=5", data)
            if code != 200:
                raise SystemExit(f"gateway PUT big: {code} {body[:300]!r}")
            put_big.add(seconds)
            answer = json.loads(body)
            blob = (answer.get("newlyCreated") or {}).get("blobObject", {}).get("blobId") or (
                answer.get("alreadyCertified") or {}
            ).get("blobId")
            code, body, seconds = http.call("GET", f"/v1/blobs/{blob}")
            if code != 200 or body != data:
                raise SystemExit(f"gateway GET big: {code}, {len(body)} bytes")
            get_big.add(seconds)
        gateway_rss = vm_hwm_mib(devnet.pid)
        put_big.rss_mib.append(gateway_rss)
        get_big.rss_mib.append(gateway_rss)
        rows += [get_small, put_small, put_big, get_big]


# -- Tahoe-LAFS -----------------------------------------------------------------------------------


def set_option(path: Path, section: str, key: str, value: str) -> None:
    parser = configparser.RawConfigParser()
    parser.read(path)
    if not parser.has_section(section):
        parser.add_section(section)
    parser.set(section, key, value)
    with open(path, "w") as handle:
        parser.write(handle)


def tahoe_part(args: argparse.Namespace, work: Path, rows: list[Row]) -> None:
    tahoe = args.tahoe
    env = dict(os.environ)
    nodes = work / "tahoe"
    nodes.mkdir()
    needed, happy, total = (int(x) for x in args.tahoe_encoding.split(":"))
    foolscap = "true" if args.tahoe_foolscap else "false"

    def tahoe_run(*argv: str) -> Run:
        return checked(run_timed([tahoe, *argv], env), f"tahoe {argv[0]}")

    intro_port = free_tcp_port()
    tahoe_run(
        "create-introducer",
        "--listen=tcp",
        f"--port=tcp:{intro_port}:interface=127.0.0.1",
        f"--location=tcp:127.0.0.1:{intro_port}",
        str(nodes / "intro"),
    )
    with contextlib.ExitStack() as stack:
        intro = stack.enter_context(
            process_group(
                [tahoe, "run", "--allow-stdin-close", str(nodes / "intro")],
                env,
                nodes / "intro.log",
            )
        )
        furl_path = nodes / "intro" / "private" / "introducer.furl"
        deadline = time.monotonic() + 120
        while not (furl_path.exists() and furl_path.read_text().strip()):
            if time.monotonic() > deadline or intro.poll() is not None:
                raise SystemExit("the Tahoe introducer did not start")
            time.sleep(0.2)
        furl = furl_path.read_text().strip()
        creating = []
        for index in range(1, args.peers + 1):
            port = free_tcp_port()
            creating.append(
                subprocess.Popen(
                    [
                        tahoe,
                        "create-node",
                        f"--nickname=s{index}",
                        f"--introducer={furl}",
                        "--listen=tcp",
                        f"--port=tcp:{port}:interface=127.0.0.1",
                        f"--location=tcp:127.0.0.1:{port}",
                        "--webport=none",
                        str(nodes / f"s{index}"),
                    ],
                    stdout=subprocess.DEVNULL,
                    env=env,
                )
            )
        for process in creating:
            if process.wait(timeout=COMMAND_TIMEOUT) != 0:
                raise SystemExit("tahoe create-node failed")
        web = free_tcp_port()
        client = nodes / "client"
        tahoe_run(
            "create-client",
            "--nickname=client",
            f"--introducer={furl}",
            f"--webport=tcp:{web}:interface=127.0.0.1",
            f"--shares-needed={needed}",
            f"--shares-happy={happy}",
            f"--shares-total={total}",
            str(client),
        )
        for node in [*(nodes / f"s{i}" for i in range(1, args.peers + 1)), client]:
            set_option(node / "tahoe.cfg", "storage", "force_foolscap", foolscap)
            set_option(node / "tahoe.cfg", "client", "force_foolscap", foolscap)
        started = time.perf_counter()
        for index in range(1, args.peers + 1):
            node = nodes / f"s{index}"
            stack.enter_context(
                process_group(
                    [tahoe, "run", "--allow-stdin-close", str(node)], env, nodes / f"s{index}.log"
                )
            )
        gateway = stack.enter_context(
            process_group(
                [tahoe, "run", "--allow-stdin-close", str(client)], env, nodes / "client.log"
            )
        )
        web_api = Http("127.0.0.1", web)
        deadline = time.monotonic() + TAHOE_READY_TIMEOUT
        connected_text = "no answer"
        while True:
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                code, body, _ = web_api.call("GET", "/?t=json")
                connected_text = f"HTTP {code}: {body[:300]!r}"
                servers = json.loads(body).get("servers", []) if code == 200 else []
                connected = sum(
                    1
                    for server in servers
                    if str(server.get("connection_status", "")).lower().startswith("connected")
                )
                if connected >= args.peers:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"the Tahoe grid did not connect (last: {connected_text})")
            time.sleep(0.5)
        print(
            f"tahoe grid ready in {time.perf_counter() - started:.1f} s "
            f"({needed}-of-{total}, happy {happy}, foolscap={foolscap}; load {load_text()})"
        )
        time.sleep(args.settle)
        files = work / "tahoe-files"
        files.mkdir()
        base = ("-d", str(client))

        def put(path: Path) -> tuple[str, Run]:
            run = tahoe_run(*base, "put", str(path))
            return run.stdout.strip().splitlines()[-1], run

        def get(cap: str, expected: bytes) -> Run:
            out = files / "get.out"
            run = tahoe_run(*base, "get", cap, str(out))
            if out.read_bytes() != expected:
                raise SystemExit("tahoe get gave different bytes")
            return run

        def round_trips(size: int, reps: int, label: str) -> list[Row]:
            """``reps`` fresh files of ``size`` bytes put and got back through the CLI."""
            put_row = Row("tahoe", f"cli put {label}", size=size)
            get_row = Row("tahoe", f"cli get {label}", size=size)
            for rep in range(reps):
                data = secrets.token_bytes(size)
                path = files / f"{label.replace(' ', '')}-{rep}.bin"
                path.write_bytes(data)
                cap, run = put(path)
                put_row.add(run.seconds, run.peak_rss_mib)
                run = get(cap, data)
                get_row.add(run.seconds, run.peak_rss_mib)
                path.unlink()
            return [put_row, get_row]

        rows += round_trips(KIB, args.reps, "1 KiB")
        rows += round_trips(args.big_mib * MIB, args.big_reps, f"{args.big_mib} MiB")
        big_size = args.big_mib * MIB

        web_get_small = Row("tahoe", "web GET 1 KiB")
        web_put_small = Row("tahoe", "web PUT 1 KiB")
        data = secrets.token_bytes(KIB)
        code, cap_bytes, _ = web_api.call("PUT", "/uri", data)
        small_cap = cap_bytes.decode().strip()
        for _ in range(args.gets):
            code, body, seconds = web_api.call("GET", f"/uri/{small_cap}")
            if code != 200 or body != data:
                raise SystemExit(f"tahoe web GET: {code}")
            web_get_small.add(seconds)
        for _ in range(args.reps):
            code, body, seconds = web_api.call("PUT", "/uri", secrets.token_bytes(KIB))
            if code not in (200, 201):
                raise SystemExit(f"tahoe web PUT: {code} {body[:200]!r}")
            web_put_small.add(seconds)
        web_put_big = Row("tahoe", f"web PUT {args.big_mib} MiB", size=big_size)
        web_get_big = Row("tahoe", f"web GET {args.big_mib} MiB", size=big_size)
        for _ in range(args.big_reps):
            data = secrets.token_bytes(big_size)
            code, cap_bytes, seconds = web_api.call("PUT", "/uri", data)
            if code not in (200, 201):
                raise SystemExit(f"tahoe web PUT big: {code}")
            web_put_big.add(seconds)
            code, body, seconds = web_api.call("GET", f"/uri/{cap_bytes.decode().strip()}")
            if code != 200 or body != data:
                raise SystemExit("tahoe web GET big gave different bytes")
            web_get_big.add(seconds)
        rss = vm_hwm_mib(gateway.pid)
        web_put_big.rss_mib.append(rss)
        web_get_big.rss_mib.append(rss)
        rows += [web_get_small, web_put_small, web_put_big, web_get_big]


# -- report ---------------------------------------------------------------------------------------


def ratios(rows: list[Row], big: int) -> list[str]:
    by = {(row.system, row.operation): row for row in rows}
    pairs = [
        ("CLI store", f"cli store {big} MiB", f"cli put {big} MiB", 1.5),
        ("CLI read", f"cli read {big} MiB", f"cli get {big} MiB", 3.0),
        ("gateway store", f"gateway PUT {big} MiB", f"web PUT {big} MiB", 1.5),
        ("gateway read", f"gateway GET {big} MiB", f"web GET {big} MiB", 3.0),
    ]
    lines = []
    for name, ours, theirs, target in pairs:
        mine, other = by.get(("walrus", ours)), by.get(("tahoe", theirs))
        if mine is None or other is None:
            continue
        ratio = other.median / mine.median
        lines.append(
            f"{name:<14} walrus {mine.size / MIB / mine.median:6.1f} MB/s, tahoe "
            f"{other.size / MIB / other.median:6.1f} MB/s: {ratio:4.2f}x (target >= {target}x)"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=20)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--reps", type=int, default=5, help="CLI runs per small operation")
    parser.add_argument("--gets", type=int, default=50, help="gateway GETs of the small blob")
    parser.add_argument("--big-mib", type=int, default=32)
    parser.add_argument("--big-reps", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after start-up")
    default_tahoe = "/tmp/tahoe/v/bin/tahoe"
    parser.add_argument("--tahoe", default=default_tahoe if Path(default_tahoe).exists() else None)
    parser.add_argument("--no-tahoe", action="store_true")
    parser.add_argument("--tahoe-encoding", default="7:20:20", help="k:happy:n")
    parser.add_argument("--tahoe-foolscap", action="store_true")
    parser.add_argument("--no-walrus", action="store_true", help="the Tahoe-LAFS part only")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    print(f"cpu: {cpu_model()}  cores: {os.cpu_count()}  load: {load_text()}")
    print(
        f"walrus-p2p devnet {args.peers} peers / {args.shards} shards; reps {args.reps}, "
        f"gets {args.gets}, big {args.big_mib} MiB x {args.big_reps}",
        flush=True,
    )
    rows: list[Row] = []
    work = Path(tempfile.mkdtemp(prefix="walrus-userpath-"))
    try:
        if not args.no_walrus:
            walrus_part(args, work, rows)
        for row in rows:
            print(row.line(), flush=True)
        if args.tahoe and not args.no_tahoe:
            tahoe_rows: list[Row] = []
            tahoe_part(args, work, tahoe_rows)
            for row in tahoe_rows:
                print(row.line(), flush=True)
            rows += tahoe_rows
            for line in ratios(rows, args.big_mib):
                print(line)
        elif not args.no_tahoe:
            print("tahoe: not found (pass --tahoe PATH; pip install tahoe-lafs into a venv)")
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load after: {load_text()}")


if __name__ == "__main__":
    main()
