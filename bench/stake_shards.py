"""Stake moves shards: a process devnet with an economy, a user staking from the command line.

Run from the repository root on an otherwise quiet machine::

    .venv/bin/python bench/stake_shards.py                        # 20 peers, 100 shards, 30 s
    .venv/bin/python bench/stake_shards.py --peers 4 --shards 8 --epoch-duration 20 --stake 300

What it does (docs/economics.md, "Shards from stake" and "Settlements in the epoch change"):
starts ``walrus-peer devnet --economy`` (one ``walrus-peer run`` process per peer plus the
gateway), stores ``--blobs`` blobs through the gateway (paid by the gateway's wallet), then runs
``walrus-peer stake PEER AMOUNT`` with the devnet's wallet for one peer, and polls
``walrus-peer info --json`` until the committee gives that peer more shards (the epoch change
after the settlement that activated the stake) and until no shard is still arriving
(migration done). It prints the shards of the staked peer before and after, how many shards
moved, the epochs and seconds each step took, the CPU-s all peers spent meanwhile, and whether
every blob reads back byte for byte through the gateway afterwards.

Every process this bench starts is killed (process group) when it ends, whatever happens.
Benchmarks print; they never assert on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from walrus_p2p.testing.processes import (
    CpuMeter,
    DevnetCommand,
    bench_header,
    cli_command,
    http_get,
    http_put,
)


def cli_json(net: Path, *arguments: str, timeout: float = 120.0) -> Any:
    environment = dict(os.environ)
    environment["WALRUS_GENESIS"] = str(net / "genesis.toml")
    environment["WALRUS_WALLET"] = str(net / "wallet.key")
    result = subprocess.run(
        cli_command(*arguments, "--json"),
        capture_output=True,
        env=environment,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"walrus-peer {' '.join(arguments)}: {result.stderr.decode(errors='replace')[-800:]}"
        )
    return json.loads(result.stdout)


def shards_of(info: Any, peer_id: str) -> int:
    for entry in info["committee"]:
        if entry["peerId"] == peer_id:
            return len(entry["shards"])
    return 0


def arriving(info: Any) -> int:
    return sum(len(entry["shardsArriving"]) for entry in info["committee"])


def put_blob(devnet: DevnetCommand, data: bytes) -> str:
    status, body = http_put(devnet.url("/v1/blobs?epochs=5"), data, timeout=120)
    if status != 200:
        raise RuntimeError(f"PUT /v1/blobs: {status} {body[:300]!r}")
    reply = json.loads(body)
    created = reply.get("newlyCreated") or reply.get("alreadyCertified")
    blob = created.get("blobObject", created)
    return str(blob["blobId"])


def get_blob(devnet: DevnetCommand, blob_id: str) -> bytes:
    status, body = http_get(devnet.url(f"/v1/blobs/{blob_id}"), timeout=120)
    return body if status == 200 else b""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=20)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--epoch-duration", type=int, default=30)
    parser.add_argument("--stake", type=float, default=2000.0, help="WAL staked with one peer")
    parser.add_argument("--peer", type=int, default=3, help="index of the peer staked with")
    parser.add_argument("--blobs", type=int, default=5)
    parser.add_argument("--blob-size", type=int, default=200_000)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--epochs-timeout", type=int, default=6, help="epochs to wait at most")
    arguments = parser.parse_args()
    print(bench_header("bench/stake_shards.py"))
    print(
        f"peers={arguments.peers} shards={arguments.shards} epoch={arguments.epoch_duration}s "
        f"stake={arguments.stake} WAL blobs={arguments.blobs}x{arguments.blob_size} B"
    )
    directory = Path(tempfile.mkdtemp(prefix="walrus-stake-"))
    devnet = DevnetCommand(
        directory,
        peers=arguments.peers,
        shards=arguments.shards,
        epoch_duration=arguments.epoch_duration,
        economy=True,
    )
    meter = CpuMeter()
    net = directory / "net"
    try:
        devnet.start()
        ready = devnet.wait_ready(arguments.ready_timeout)
        print(f"devnet writable after {ready:.1f} s")
        devnet.discover()
        blobs = {}
        for _ in range(arguments.blobs):
            data = os.urandom(arguments.blob_size)
            blobs[put_blob(devnet, data)] = data
        before = cli_json(net, "info")
        peer = before["committee"][arguments.peer]["peerId"]
        shards_before = shards_of(before, peer)
        devnet.refresh_pids()
        cpu_start = meter.sample(devnet.pids())
        started = time.monotonic()
        staked = cli_json(net, "stake", peer, f"{arguments.stake}")
        stake_seconds = time.monotonic() - started
        print(
            f"staked {arguments.stake} WAL with peer {arguments.peer} ({peer[:16]}...) in epoch "
            f"{staked['epoch']}: {stake_seconds:.2f} s; it held {shards_before} shards in epoch "
            f"{before['epoch']}"
        )
        deadline = started + arguments.epochs_timeout * arguments.epoch_duration + 60
        moved_at = None
        info = before
        while time.monotonic() < deadline:
            info = cli_json(net, "info")
            if shards_of(info, peer) != shards_before:
                moved_at = time.monotonic()
                break
            time.sleep(2.0)
        if moved_at is None:
            print(f"the staked peer still holds {shards_before} shards in epoch {info['epoch']}")
            return 1
        shards_after = shards_of(info, peer)
        print(
            f"epoch {info['epoch']}: the staked peer holds {shards_after} shards "
            f"({moved_at - started:.1f} s after the stake order; "
            f"{info['economy']['totalStake']} FROST staked)"
        )
        migrated_at = None
        while time.monotonic() < deadline + 120:
            info = cli_json(net, "info")
            if arriving(info) == 0:
                migrated_at = time.monotonic()
                break
            time.sleep(2.0)
        devnet.refresh_pids()
        cpu = meter.sample(devnet.pids()) - cpu_start
        if migrated_at is None:
            print(f"shards still arriving: {arriving(info)}")
        else:
            print(
                f"every shard in place {migrated_at - moved_at:.1f} s after the change "
                f"(epoch {info['epoch']})"
            )
        good = sum(1 for blob_id, data in blobs.items() if get_blob(devnet, blob_id) == data)
        print(f"blobs read back byte for byte: {good} of {len(blobs)}")
        print(f"CPU-s of all peers from the stake to now: {cpu:.1f}")
        return 0 if good == len(blobs) and migrated_at is not None else 1
    finally:
        devnet.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
