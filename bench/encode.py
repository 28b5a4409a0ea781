"""Encode, decode and recovery throughput of RedStuff, and the memory they need.

Run from the repository root::

    .venv/bin/python bench/encode.py                 # 1, 16, 128 MB at n = 10, 20, 100 + 1 GiB
    .venv/bin/python bench/encode.py --skip-1gib     # without the 1 GiB run (needs ~5 GiB RAM)
    .venv/bin/python bench/encode.py --codec pyeclib # the public-API fallback, for comparison
    .venv/bin/python bench/encode.py --malloc-hugepages  # glibc hands out huge pages (see below)

Each (size, n) cell runs in a fresh subprocess, so its peak RSS is its own (``ru_maxrss`` of
that child: the interpreter, the blob and everything the encoder keeps). Inside a cell, one
warm-up run touches the memory first (on this VM the very first touch of fresh memory costs
1-2 s of system time per GiB), then ``--repeat`` timed runs; the table shows medians. Each
timed run drops the previous result first, so from 8 MiB to 512 MiB of output the encoder
writes into the buffer it kept from the run before, as a peer encoding blob after blob does
(``encoding._ReusedBuffer``); a caller that still holds the last result gets fresh pages. The 1 GiB
run is a single cold run: its MB/s mostly measures those first touches; its point is the RSS.

Columns:

* encode   the whole write pipeline, ``metadata.encode_blob``: slivers, all 2n sliver hashes
           (every symbol of the n x n expanded matrix hashed), metadata and blob id. ``cpu s``
           is the CPU time of one encode (all threads); MB/cpu-s is less sensitive to the load
           than MB/s.
* decode   ``encoding.decode_primary`` from kp primary slivers (a fixed random subset, so
           parity rows are involved); ``+check`` adds the default read check (plain primary
           slivers hashed against the metadata), i.e. ``metadata.decode_blob`` without
           re-verifying slivers that were verified on arrival.
* rebuild  the rebuilding peer's work for one sliver pair: verify ks + kp recovery symbols and
           their proofs, decode the primary and the secondary sliver, re-hash both and compare
           with the metadata (``metadata.recover_sliver`` twice); wall and CPU milliseconds.
* symbol   a helper's cost to compute one recovery symbol (one output fragment of one codec
           call, ``encoding.recovery_symbol``), median over helpers, microseconds.

Large ``bytes`` objects come from glibc's mmap with 4 KiB pages, and the first touch of each
page costs more than copying into it (128 MB: ~80 ms against ~13 ms with huge pages here).
numpy asks for huge pages for its own arrays, and the decoders write a big blob straight into
such an array (``memory.new_buffer``) and return a read-only ``memoryview`` of it; each timed
decode gets fresh pages (nothing is pooled); ``--malloc-hugepages`` shows
what ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` in a peer's environment still buys on top.

Figures depend on the load: the machine is shared, so the load average is printed with them.
The header also says which leaf hasher ran: the C helper (``walrus_p2p/core/_native.c``,
built by the install where a C compiler is found; AVX-512 CPUs) or the blake3 package alone
(``WALRUS_P2P_NATIVE=0`` in the environment forces the latter, to compare).
Benchmarks print; they never assert on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZES = {"1MB": 1_000_000, "16MB": 16_000_000, "128MB": 128_000_000}
SHARDS = (10, 20, 100)
GIB = 1 << 30


def _select_codec(name: str) -> str:
    from walrus_p2p.core import encoding

    if name == "pyeclib":
        encoding.set_default_codec(encoding.PyeclibCodec())
    elif name == "isal":
        from walrus_p2p.core import isal

        encoding.set_default_codec(isal.IsalCodec())
    return encoding.default_codec().name


def _blob_buffer(size: int, seed: int) -> memoryview:
    """Pseudo-random bytes, made in place (a 16 MiB random block repeated; the codec and the
    hash run at the same speed on any content, this just avoids zeros)."""
    import numpy as np

    block = np.random.default_rng(seed).integers(0, 256, min(size, 1 << 24), dtype=np.uint8)
    buffer = np.empty(size, dtype=np.uint8)
    for start in range(0, size, len(block)):
        chunk = buffer[start : start + len(block)]
        chunk[:] = block[: len(chunk)]
    return memoryview(buffer.data)


def _blob(size: int, seed: int) -> bytes:
    return bytes(_blob_buffer(size, seed))


def _timed(function: Callable[[], Any]) -> tuple[Any, float, float]:
    wall = time.perf_counter()
    cpu = time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_cell(size: int, n: int, repeat: int, codec_name: str) -> dict[str, Any]:
    """One (size, n) cell in this process; returns medians."""
    from walrus_p2p.core import encoding, metadata
    from walrus_p2p.core.encoding import EncodingConfig, SliverType

    codec = _select_codec(codec_name)
    config = EncodingConfig.for_shards(n)
    blob = _blob(size, seed=n)
    rng = random.Random(size * 1000 + n)

    written = metadata.encode_blob(blob, config)  # warm-up: first touch of the memory
    encode_wall: list[float] = []
    encode_cpu: list[float] = []
    for _ in range(repeat):
        del written
        written, wall, cpu = _timed(lambda: metadata.encode_blob(blob, config))
        encode_wall.append(wall)
        encode_cpu.append(cpu)
    encoded, meta = written.encoded, written.metadata

    chosen = sorted(rng.sample(range(n), config.kp))
    primary = {index: encoded.primary_sliver(index) for index in chosen}
    decoded = encoding.decode_primary(config, size, primary)
    if decoded != blob:
        raise SystemExit(f"decode mismatch at size={size} n={n}")
    decode_wall = [
        _timed(lambda: encoding.decode_primary(config, size, primary))[1] for _ in range(repeat)
    ]
    read_wall = [
        _timed(
            lambda: metadata.decode_blob(meta, SliverType.PRIMARY, primary, verify_slivers=False)
        )[1]
        for _ in range(repeat)
    ]

    # Rebuild sliver pair p: primary p from ks helpers holding secondary slivers (their symbol
    # E[p, c]), secondary n-1-p from kp helpers holding primary slivers (E[r, n-1-p]).
    pair = config.kp  # a parity row, so its primary sliver is not plain blob bytes
    secondary_target = encoding.pair_secondary_index(pair, n)
    helpers_of_primary = sorted(i for i in rng.sample(range(n), config.ks) if i != secondary_target)
    helpers_of_secondary = sorted(i for i in rng.sample(range(n), config.kp + 1) if i != pair)
    helpers_of_primary = helpers_of_primary[: config.ks]
    helpers_of_secondary = helpers_of_secondary[: config.kp]
    while len(helpers_of_primary) < config.ks:  # the target's own index was drawn: top up
        extra = rng.randrange(n)
        if extra != secondary_target and extra not in helpers_of_primary:
            helpers_of_primary.append(extra)
    symbol_times: list[float] = []
    for_primary = []
    for helper in helpers_of_primary:
        sliver = encoded.secondary_sliver(helper)
        _, wall, _ = _timed(
            partial(encoding.recovery_symbol, config, size, SliverType.SECONDARY, sliver, pair)
        )
        symbol_times.append(wall)
        for_primary += metadata.make_recovery_symbols(
            meta, SliverType.SECONDARY, helper, sliver, [pair]
        )
    for_secondary = []
    for helper in helpers_of_secondary:
        sliver = encoded.primary_sliver(helper)
        _, wall, _ = _timed(
            partial(
                encoding.recovery_symbol,
                config,
                size,
                SliverType.PRIMARY,
                sliver,
                secondary_target,
            )
        )
        symbol_times.append(wall)
        for_secondary += metadata.make_recovery_symbols(
            meta, SliverType.PRIMARY, helper, sliver, [secondary_target]
        )

    def rebuild() -> tuple[bytes, bytes]:
        return (
            metadata.recover_sliver(meta, SliverType.PRIMARY, pair, for_primary),
            metadata.recover_sliver(meta, SliverType.SECONDARY, secondary_target, for_secondary),
        )

    rebuilt = rebuild()
    if rebuilt != (
        bytes(encoded.primary_sliver(pair)),
        bytes(encoded.secondary_sliver(secondary_target)),
    ):
        raise SystemExit(f"rebuild mismatch at size={size} n={n}")
    rebuild_runs = [_timed(rebuild) for _ in range(repeat)]

    return {
        "size": size,
        "n": n,
        "codec": codec,
        "encode_mbps": size / statistics.median(encode_wall) / 1e6,
        "encode_cpu_s": statistics.median(encode_cpu),
        "decode_mbps": size / statistics.median(decode_wall) / 1e6,
        "read_mbps": size / statistics.median(read_wall) / 1e6,
        "rebuild_wall_ms": statistics.median(r[1] for r in rebuild_runs) * 1e3,
        "rebuild_cpu_ms": statistics.median(r[2] for r in rebuild_runs) * 1e3,
        "symbol_us": statistics.median(symbol_times) * 1e6,
        "peak_rss_mib": _peak_rss_mib(),
    }


def run_big(size: int, n: int, codec_name: str) -> dict[str, Any]:
    """One encode of a large blob (no warm-up: the peak RSS is the point)."""
    from walrus_p2p.core import metadata
    from walrus_p2p.core.encoding import EncodingConfig

    codec = _select_codec(codec_name)
    blob = _blob_buffer(size, seed=1)  # one copy of the blob, as a writer reading a file has
    blob_rss = _peak_rss_mib()
    written, wall, cpu = _timed(lambda: metadata.encode_blob(blob, EncodingConfig.for_shards(n)))
    return {
        "size": size,
        "n": n,
        "codec": codec,
        "encode_mbps": size / wall / 1e6,
        "encode_cpu_s": cpu,
        "rss_after_blob_mib": blob_rss,
        "peak_rss_mib": _peak_rss_mib(),
        "blob_id": bytes(written.blob_id).hex()[:16],
    }


def _child(arguments: list[str], *, malloc_hugepages: bool) -> dict[str, Any]:
    environment = dict(os.environ)
    if malloc_hugepages:
        environment["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
    output = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *arguments],
        check=True,
        capture_output=True,
        text=True,
        env=environment,
    ).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma list of " + "/".join(SIZES))
    parser.add_argument("--shards", default=",".join(map(str, SHARDS)), help="comma list of n")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per cell (median)")
    parser.add_argument("--codec", choices=["default", "isal", "pyeclib"], default="default")
    parser.add_argument("--skip-1gib", action="store_true", help="skip the 1 GiB encode at n=100")
    parser.add_argument(
        "--malloc-hugepages",
        action="store_true",
        help="run the cells with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (cheaper page faults for"
        " large bytes objects, e.g. the decoded blob)",
    )
    parser.add_argument("--cell", nargs=2, type=int, metavar=("SIZE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--big", nargs=2, type=int, metavar=("SIZE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.cell:
        print(json.dumps(run_cell(args.cell[0], args.cell[1], args.repeat, args.codec)))
        return
    if args.big:
        print(json.dumps(run_big(args.big[0], args.big[1], args.codec)))
        return

    sizes = [(label, SIZES[label]) for label in args.sizes.split(",")]
    shards = [int(value) for value in args.shards.split(",")]
    from walrus_p2p.core import merkle

    hasher = "C, 16 lanes" if merkle.native_leaf_hashing() else "blake3 package"
    print(
        f"# bench/encode.py  cpus={len(os.sched_getaffinity(0))}  repeat={args.repeat}"
        f"  malloc_hugepages={args.malloc_hugepages}  leaf hasher: {hasher}"
        f"  load average {_load()}"
    )
    header = (
        f"{'size':>6} {'n':>4} {'codec':>7} | {'encode MB/s':>11} {'cpu s':>6} {'MB/cpu-s':>8} |"
        f" {'decode MB/s':>11} {'+check':>7} | {'rebuild ms':>10} {'cpu ms':>7} |"
        f" {'symbol us':>9} | {'peak RSS MiB':>12}"
    )
    print(header)
    print("-" * len(header))
    for label, size in sizes:
        for n in shards:
            cell = _child(
                ["--cell", str(size), str(n), "--repeat", str(args.repeat), "--codec", args.codec],
                malloc_hugepages=args.malloc_hugepages,
            )
            print(
                f"{label:>6} {n:>4} {cell['codec']:>7} | {cell['encode_mbps']:>11.0f}"
                f" {cell['encode_cpu_s']:>6.3f} {size / cell['encode_cpu_s'] / 1e6:>8.0f} |"
                f" {cell['decode_mbps']:>11.0f}"
                f" {cell['read_mbps']:>7.0f} | {cell['rebuild_wall_ms']:>10.2f}"
                f" {cell['rebuild_cpu_ms']:>7.2f} | {cell['symbol_us']:>9.0f} |"
                f" {cell['peak_rss_mib']:>12.0f}",
                flush=True,
            )
    if not args.skip_1gib:
        big = _child(
            ["--big", str(GIB), "100", "--codec", args.codec],
            malloc_hugepages=args.malloc_hugepages,
        )
        print(
            f"\n1 GiB encode at n=100 ({big['codec']}): {big['encode_mbps']:.0f} MB/s"
            f" (cold memory, single run), cpu {big['encode_cpu_s']:.2f} s,"
            f" RSS after making the blob {big['rss_after_blob_mib']:.0f} MiB,"
            f" peak RSS {big['peak_rss_mib']:.0f} MiB ({big['peak_rss_mib'] / 1024:.2f} GiB)"
        )
    print(f"# load average at the end {_load()}")


if __name__ == "__main__":
    main()
