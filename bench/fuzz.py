"""The long fuzzing campaign: framing, the wire decoder and every handler of a storage peer.

Run from the repository root::

    .venv/bin/python bench/fuzz.py                                 # 1M inputs per target
    .venv/bin/python bench/fuzz.py --inputs 20000 --target handlers --crashes /tmp/crashes
    .venv/bin/python bench/fuzz.py --inputs 1000000 --workers 2    # targets split over 2 processes
    .venv/bin/python bench/fuzz.py --reproduce /tmp/crashes/storage-GetSliverRequest-ab12.json

Targets (docs/testing.md, "Fuzzing"; the generators and oracles are
``walrus_p2p/testing/fuzz.py``):

* ``framing``: ``read_frame`` over scripted streams (random chunkings, ends, stalls under a mock
  clock); the outcome must be the one the script predicts;
* ``wire``: ``wire.decode`` of payloads fuzzed for every registered type; only ``WireError``,
  and ``encode(decode(b)) == b``;
* ``handlers``: an in-process network of 4 peers (epochs on, one stored blob); every handler
  peer 1 serves (each request type of the storage protocol, the epochs protocol, each gossip
  topic validator) gets ``--inputs`` fuzzed payloads from fuzzed remote ids, called directly;
  ``--streams`` of them per request/reply handler also go over real libp2p streams from a
  stranger's host, through ``serve_stream``.

``--inputs`` counts per target: per handler for ``handlers``. Outcomes are counted by kind and
reason: ``ok``, ``refused`` (a reason other than INTERNAL), and the failures ``internal``,
``crash`` (any other exception, a wrong frame or a reply that does not decode) and ``hang``
(beyond ``--deadline`` seconds). The process's resident memory is sampled after each target
and its peak (``VmHWM``) reported; a peak above ``--rss-bound`` MiB counts as a leak (the
process holds all 4 peers, so the bound is stricter than one peer's). Failing inputs are written
to ``--crashes DIR`` as JSON (target, remote, hex payload) for ``--reproduce``. The exit status is
1 when anything failed.

Figures depend on the machine: the CPU model and the load average are printed with them.
Benchmarks print; they never assert on speed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from trio.testing import MockClock

from walrus_p2p.core import wire
from walrus_p2p.errors import RemoteError, RequestTimeoutError, WalrusError
from walrus_p2p.testing import fuzz
from walrus_p2p.testing.network import open_test_host
from walrus_p2p.testing.processes import cpu_model, load_text
from walrus_p2p.types import PeerId

SIMPLE_TARGETS = ("framing", "wire")
RECENT_KEPT = 64
RECENT: list[dict[str, str]] = []
"""The last inputs sent to handlers: written to ``--crashes`` if a peer of the network dies
(the campaign cannot go on then, and the input that killed it is among these)."""


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_failures(tally: fuzz.Tally, directory: Path | None, seed: int) -> None:
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    for failure in tally.failures:
        digest = hashlib.sha256(bytes.fromhex(failure["payload"])).hexdigest()[:12]
        name = failure["target"].replace("/", "-")
        path = directory / f"{name}-{digest}.json"
        path.write_text(json.dumps({**failure, "seed": seed}, indent=2) + "\n")


def summary(tally: fuzz.Tally, rss_before: float, rss_after: float) -> dict[str, Any]:
    kinds = tally.kinds()
    return {
        "target": tally.name,
        "inputs": tally.inputs,
        "seconds": round(tally.seconds, 1),
        "per_second": round(tally.inputs / tally.seconds) if tally.seconds else 0,
        "counts": dict(sorted(tally.counts.items(), key=lambda item: -item[1])),
        "crash": kinds.get("crash", 0),
        "hang": kinds.get("hang", 0),
        "internal": kinds.get("internal", 0),
        "rss_before_mib": round(rss_before, 1),
        "rss_after_mib": round(rss_after, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


# -- framing and wire ---------------------------------------------------------------------------


def run_wire(count: int, seed: int) -> fuzz.Tally:
    fuzzer = fuzz.Fuzzer(random.Random(f"wire-{seed}"))
    tally = fuzz.Tally("wire")
    started = time.perf_counter()
    for _ in range(count):
        cls = fuzzer.rng.choice(fuzz.ALL_TYPES)
        payload = fuzzer.payload(cls)
        tally.add(fuzz.check_wire(payload, cls), payload, cls.__name__)
    tally.seconds = time.perf_counter() - started
    return tally


def run_framing(count: int, seed: int) -> fuzz.Tally:
    fuzzer = fuzz.Fuzzer(random.Random(f"framing-{seed}"))
    tally = fuzz.Tally("framing")

    async def main() -> None:
        for _ in range(count):
            case = fuzz.framing_case(fuzzer)
            tally.add(await fuzz.run_framing(case), case.data, framing_note(case))

    started = time.perf_counter()
    trio.run(main, clock=MockClock(autojump_threshold=0))
    tally.seconds = time.perf_counter() - started
    return tally


def framing_note(case: fuzz.FramingCase) -> str:
    """The script of a framing case besides its bytes (saved as the ``remote`` of a failure)."""
    return json.dumps(
        {"chunks": case.chunks, "eof": case.eof, "stall_at": case.stall_at, "max": case.max_size}
    )


# -- handlers -----------------------------------------------------------------------------------


async def over_stream(
    host: Any, peer_id: str, protocol: str, payload: bytes, deadline: float
) -> fuzz.Outcome:
    """One request over a real stream (the stranger's host to the fuzzed peer)."""
    started = time.monotonic()
    try:
        reply = await host.request(peer_id, protocol, payload, timeout=deadline)
    except RemoteError as error:
        if error.reason == "INTERNAL":
            return fuzz.Outcome("internal", "INTERNAL", str(error))
        return fuzz.Outcome("refused", error.reason)
    except RequestTimeoutError:
        return fuzz.Outcome("hang", "HANG", f"{time.monotonic() - started:.1f}s")
    except WalrusError as error:
        return fuzz.Outcome("crash", type(error).__name__, str(error))
    try:
        decoded = wire.decode(reply, fuzz.ALL_TYPES)
    except WalrusError as error:
        return fuzz.Outcome("crash", "BAD_REPLY", str(error))
    return fuzz.Outcome("ok", type(decoded).__name__)


async def run_handlers(
    args: argparse.Namespace, only: set[str] | None, report: list[dict[str, Any]]
) -> None:
    crashes = Path(args.crashes) if args.crashes else None
    async with fuzz.open_fuzz_network(production_rates=args.production_rates) as peer:
        service = peer.service
        async with open_test_host("fuzz-stranger") as stranger:
            for address in service.host.listen_addrs:
                stranger.host.add_addrs(service.peer_id, [address])
            for index, target in enumerate(peer.targets):
                if not chosen(target.name, only):
                    continue
                fuzzer = fuzz.Fuzzer(
                    random.Random(f"{target.name}-{args.seed}"), peer.hints, service.limits
                )
                tally = fuzz.Tally(target.name)
                rss_before = fuzz.rss_mib()
                started = time.perf_counter()
                for number, (payload, remote) in enumerate(
                    fuzz.inputs_for(target, fuzzer, args.inputs)
                ):
                    if target.rpc is not None:
                        outcome = await fuzz.run_rpc(target.rpc, payload, remote, args.deadline)
                    else:
                        outcome = fuzz.run_validator(target, payload, remote, number, args.deadline)
                    tally.add(outcome, payload, remote)
                    RECENT.append(
                        {"target": target.name, "remote": remote, "payload": payload.hex()}
                    )
                    if len(RECENT) > RECENT_KEPT:
                        del RECENT[0]
                    if number % 256 == 255:
                        await trio.sleep(0)  # let the peer's own tasks run now and then
                tally.seconds = time.perf_counter() - started
                row = summary(tally, rss_before, fuzz.rss_mib())
                streamed = None
                if target.rpc is not None and args.streams:
                    streamed = fuzz.Tally(target.name + " (streams)")
                    started = time.perf_counter()
                    for payload, _ in fuzz.inputs_for(target, fuzzer, args.streams):
                        outcome = await over_stream(
                            stranger.host,
                            service.peer_id,
                            target.protocol,
                            payload,
                            args.deadline + 5.0,
                        )
                        streamed.add(outcome, payload, stranger.host.peer_id)
                    streamed.seconds = time.perf_counter() - started
                    row["streams"] = summary(streamed, rss_before, fuzz.rss_mib())
                    save_failures(streamed, crashes, args.seed)
                report.append(row)
                save_failures(tally, crashes, args.seed)
                print_row(row, index)
        peer.network.nursery.cancel_scope.cancel()


def chosen(name: str, only: set[str] | None) -> bool:
    """Whether this process fuzzes target ``name`` (a worker's share; ``+unlisted``: the targets
    missing from HANDLER_NAMES too)."""
    if only is None or name in only:
        return True
    return "+unlisted" in only and name not in HANDLER_NAMES and name not in SIMPLE_TARGETS


# -- report -------------------------------------------------------------------------------------


def print_row(row: dict[str, Any], index: int | None = None) -> None:
    reasons = ", ".join(f"{key}={value}" for key, value in list(row["counts"].items())[:8])
    print(
        f"{row['target']:<38} {row['inputs']:>8} {row['per_second']:>7}/s "
        f"crash={row['crash']} hang={row['hang']} internal={row['internal']} "
        f"rss={row['rss_before_mib']:.0f}->{row['rss_after_mib']:.0f} "
        f"peak={row['peak_rss_mib']:.0f} MiB  {reasons}",
        flush=True,
    )
    if "streams" in row:
        streams = row["streams"]
        reasons = ", ".join(f"{key}={value}" for key, value in list(streams["counts"].items())[:6])
        print(
            f"{'  over streams':<38} {streams['inputs']:>8} {streams['per_second']:>7}/s "
            f"crash={streams['crash']} hang={streams['hang']} internal={streams['internal']}  "
            f"{reasons}",
            flush=True,
        )


def run_here(args: argparse.Namespace, only: set[str] | None) -> list[dict[str, Any]]:
    """The chosen targets in this process."""
    report: list[dict[str, Any]] = []
    crashes = Path(args.crashes) if args.crashes else None
    for name, runner in (("framing", run_framing), ("wire", run_wire)):
        if args.target not in (name, "all") or not chosen(name, only):
            continue
        rss_before = fuzz.rss_mib()
        tally = runner(args.inputs, args.seed)
        row = summary(tally, rss_before, fuzz.rss_mib())
        report.append(row)
        save_failures(tally, crashes, args.seed)
        print_row(row)
    if args.target in ("handlers", "all") and (
        only is None or any(name not in SIMPLE_TARGETS for name in only)
    ):
        try:
            trio.run(run_handlers, args, only, report)
        except BaseException as error:
            # A peer of the network died: the last inputs go to --crashes for --reproduce.
            print(f"campaign aborted: {type(error).__name__}: {error}", flush=True)
            if crashes is not None:
                crashes.mkdir(parents=True, exist_ok=True)
                for index, item in enumerate(RECENT):
                    saved = {**item, "kind": "crash", "reason": "PEER_DIED", "seed": args.seed}
                    path = crashes / f"aborted-{index:02d}.json"
                    path.write_text(json.dumps(saved, indent=2) + "\n")
            raise
    return report


def target_names(args: argparse.Namespace) -> list[str]:
    """Names of the targets a run covers, for splitting them over workers."""
    names = [name for name in SIMPLE_TARGETS if args.target in (name, "all")]
    if args.target in ("handlers", "all"):
        names += list(HANDLER_NAMES)
    return names


HANDLER_NAMES = (
    "epochs/EpochMessagesRequest",
    "storage/StoreMetadataRequest",
    "storage/StoreSliverRequest",
    "storage/GetMetadataRequest",
    "storage/GetSliverRequest",
    "storage/GetConfirmationRequest",
    "storage/GetRecoverySymbolRequest",
    "storage/GetRecoverySymbolsRequest",
    "storage/BlobStatusRequest",
    "storage/PostBlobRecordsRequest",
    "storage/GetBlobRecordsRequest",
    "storage/GetEpochRecordsRequest",
    "storage/PullShardRequest",
    "storage/GetShardsInPlaceRequest",
    "storage/ListBlobRecordsRequest",
    "storage/AttestInvalidBlobRequest",
    "gossip/blob-records",
    "gossip/epochs",
    "gossip/shards",
)
"""For splitting over workers only: a worker fuzzes every target the peer has whose name is in
its share, and targets not listed here go to the first worker."""


def run_workers(args: argparse.Namespace) -> list[dict[str, Any]]:
    names = target_names(args)
    shares = [names[index :: args.workers] for index in range(args.workers)]
    shares = [share for share in shares if share]
    directory = Path(tempfile.mkdtemp(prefix="walrus-fuzz-"))
    processes = []
    for index, share in enumerate(shares):
        out = directory / f"worker-{index}.json"
        command = [
            sys.executable,
            __file__,
            *sys.argv[1:],
            "--workers",
            "1",
            "--only",
            ",".join(share) + (",+unlisted" if index == 0 else ""),
            "--json",
            str(out),
        ]
        processes.append((subprocess.Popen(command), out))
    report: list[dict[str, Any]] = []
    for process, out in processes:
        process.wait()
        if out.exists():
            report.extend(json.loads(out.read_text()))
    return report


def reproduce(args: argparse.Namespace) -> int:
    saved = json.loads(Path(args.reproduce).read_text())
    payload = bytes.fromhex(saved["payload"])
    name = saved["target"].removesuffix(" (streams)")
    print(f"target {name}, {len(payload)} bytes, saved as {saved['kind']} {saved['reason']}")
    if name == "wire":
        cls = next(c for c in fuzz.ALL_TYPES if c.__name__ == saved["remote"])
        outcome = fuzz.check_wire(payload, cls)
    elif name == "framing":
        script = json.loads(saved["remote"])
        case = fuzz.FramingCase(
            payload, tuple(script["chunks"]), script["eof"], script["stall_at"], script["max"]
        )
        outcome = trio.run(fuzz.run_framing, case, clock=MockClock(autojump_threshold=0))
    else:
        outcome = trio.run(reproduce_handler, name, payload, saved["remote"], args.deadline)
    print(f"now: {outcome.kind} {outcome.reason}\n{outcome.detail}")
    return 1 if outcome.failed else 0


async def reproduce_handler(name: str, payload: bytes, remote: str, deadline: float) -> Any:
    async with fuzz.open_fuzz_network() as peer:
        target = next(t for t in peer.targets if t.name == name)
        started = time.perf_counter()
        if target.rpc is not None:
            outcome = await fuzz.run_rpc(target.rpc, payload, PeerId(remote), deadline)
        else:
            outcome = fuzz.run_validator(target, payload, PeerId(remote), 1, deadline)
        print(f"handled in {time.perf_counter() - started:.3f} s (load {load_text()})")
        peer.network.nursery.cancel_scope.cancel()
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=("framing", "wire", "handlers", "all"), default="all")
    parser.add_argument("--inputs", type=int, default=1_000_000, help="per target (per handler)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes the targets split over")
    parser.add_argument("--crashes", default=None, help="directory for failing inputs (JSON)")
    parser.add_argument("--deadline", type=float, default=5.0, help="seconds per input: a hang")
    parser.add_argument(
        "--streams",
        type=int,
        default=None,
        help="inputs per request handler also sent over real streams (default inputs/200)",
    )
    parser.add_argument("--rss-bound", type=float, default=250.0, help="MiB; above it: a leak")
    parser.add_argument(
        "--production-rates",
        action="store_true",
        help="keep the peer's per-peer request rates (RATE_LIMITED is then counted)",
    )
    parser.add_argument("--reproduce", default=None, help="re-run one saved failing input")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="write the report as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    if args.reproduce:
        return reproduce(args)
    if args.streams is None:
        args.streams = min(5_000, args.inputs // 200)
    print(f"cpu: {cpu_model()}  load: {load_text()}  pid: {os.getpid()}", flush=True)
    print(f"target={args.target} inputs={args.inputs} seed={args.seed} workers={args.workers}")
    started = time.perf_counter()
    if args.workers > 1:
        report = run_workers(args)
    else:
        report = run_here(args, set(args.only.split(",")) if args.only else None)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        return 0
    failures = sum(row["crash"] + row["hang"] + row["internal"] for row in report)
    failures += sum(
        row["streams"]["crash"] + row["streams"]["hang"] + row["streams"]["internal"]
        for row in report
        if "streams" in row
    )
    peak = max((row["peak_rss_mib"] for row in report), default=0.0)
    leak = peak > args.rss_bound
    total = sum(row["inputs"] for row in report)
    print(
        f"total: {total} inputs in {time.perf_counter() - started:.0f}s over {len(report)} "
        f"targets; failures={failures}; peak RSS {peak:.0f} MiB "
        f"({'LEAK: above' if leak else 'within'} {args.rss_bound:.0f} MiB)"
    )
    print(f"load after: {load_text()}")
    return 1 if failures or leak else 0


if __name__ == "__main__":
    sys.exit(main())
