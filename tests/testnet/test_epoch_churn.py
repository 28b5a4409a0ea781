"""Epoch changes and churn on a process devnet, run as a user runs it (issue 14).

``walrus-peer devnet`` (one ``walrus-peer run`` process per peer plus the HTTP gateway) with a
short epoch, driven from outside through the gateway's HTTP API and by signals, with
:class:`walrus_p2p.testing.processes.DevnetCommand` (the helper ``bench/epochs.py`` uses too).
These are the bench's scenarios shortened to fit CI; the bench measures the figures (time to
decide, messages, CPU, writability), these tests check behaviour only:

- ten consecutive epoch changes are decided by every peer, the network takes a blob before, in
  the middle and after them, and every blob reads back byte-identical;
- churn: while two writers store blobs through the gateway, three random peers are SIGKILLed
  every 15 s and restarted 8 s later; no read ever returns wrong bytes, every certified blob
  reads back byte-identical after two more epoch changes, a failed store fails with a clean
  ``NOT_ENOUGH_PEERS`` (never an internal error), the network takes a store again after the
  last restart, and every peer, restarted ones included, reaches the same epoch.

docs/testing.md, "test_epoch_churn.py". Every wait has a deadline; the fixture kills every
process group it started.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from walrus_p2p.testing.processes import DevnetCommand, http_get, http_put

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PEERS = 20
SHARDS = 100


def status(devnet: DevnetCommand) -> tuple[int, dict[str, object]]:
    code, body = http_get(devnet.url("/status"), 5.0)
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = {}
    return code, parsed if isinstance(parsed, dict) else {}


def gateway_epoch(devnet: DevnetCommand) -> int:
    _code, body = status(devnet)
    epoch = body.get("epoch")
    return epoch if isinstance(epoch, int) else -1


def store(
    devnet: DevnetCommand, data: bytes, timeout: float = 180.0
) -> tuple[int, str | None, str]:
    """``PUT /v1/blobs``: (HTTP status, blob id or None, error reason or '')."""
    # Long enough to outlive the tests' own epoch changes: a blob past its end epoch is gone
    # (404), as it should be.
    code, body = http_put(devnet.url(f"/v1/blobs?epochs={STORE_EPOCHS}"), data, timeout)
    try:
        reply = json.loads(body)
    except ValueError:
        return code, None, f"unparsable reply {body[:120]!r}"
    if code == 200:
        info = reply.get("newlyCreated") or reply.get("alreadyCertified") or {}
        blob_id = (info.get("blobObject") or {}).get("blobId") or info.get("blobId")
        return code, blob_id, ""
    return code, None, str((reply.get("error") or {}).get("reason"))


STORE_EPOCHS = 50


def read(devnet: DevnetCommand, blob_id: str) -> tuple[int, bytes]:
    return http_get(devnet.url(f"/v1/blobs/{blob_id}"), 120.0)


def peer_epochs(devnet: DevnetCommand) -> dict[int, int]:
    return {
        index: int(values.get("walrus_epoch_current", -1))
        for index, values in devnet.scrape().items()
    }


def wait_for(what: str, check: object, timeout: float, every: float = 1.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:g}s")


@pytest.fixture
def make_devnet(tmp_path: Path) -> Iterator[object]:
    started: list[DevnetCommand] = []

    def make(epoch_duration: int) -> DevnetCommand:
        devnet = DevnetCommand(tmp_path, peers=PEERS, shards=SHARDS, epoch_duration=epoch_duration)
        started.append(devnet)
        devnet.start()
        devnet.wait_ready(240.0)
        devnet.discover()
        assert len(devnet.pids()) == PEERS
        return devnet

    yield make
    for devnet in started:
        devnet.stop()


def test_ten_epoch_changes_are_decided_and_blobs_read_back(make_devnet: object) -> None:
    assert callable(make_devnet)
    devnet: DevnetCommand = make_devnet(12)
    blobs: dict[str, bytes] = {}

    def put(data: bytes) -> None:
        code, blob_id, reason = store(devnet, data)
        assert code == 200 and blob_id, f"store failed: {code} {reason}"
        blobs[blob_id] = data

    first = gateway_epoch(devnet)
    assert first >= 0
    put(os.urandom(300_000))
    target = first + 10
    wait_for("five epoch changes", lambda: gateway_epoch(devnet) >= first + 5, 5 * 12 + 60)
    put(os.urandom(1_000_000))
    wait_for("ten epoch changes", lambda: gateway_epoch(devnet) >= target, 5 * 12 + 60)
    # Every peer decided (or adopted) each change: all of them are at the target epoch or later.
    wait_for(
        "every peer at the target epoch",
        lambda: (lambda e: len(e) == PEERS and min(e.values()) >= target)(peer_epochs(devnet)),
        30,
    )
    put(b"after ten changes")
    for blob_id, data in blobs.items():
        code, body = read(devnet, blob_id)
        assert code == 200 and body == data, f"blob {blob_id} read back {code}"
    code, body = status(devnet)
    assert code == 200 and body.get("writable") is True
    # Nobody was dropped from the committee on the way.
    members = {i: v.get("walrus_epoch_committee_members") for i, v in devnet.scrape().items()}
    assert members == dict.fromkeys(range(1, PEERS + 1), float(PEERS)), members


@dataclass
class Writers:
    devnet: DevnetCommand
    stop: threading.Event = field(default_factory=threading.Event)
    stored: dict[str, bytes] = field(default_factory=dict)
    failures: list[tuple[int, str]] = field(default_factory=list)
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, seed: int) -> None:
        generator = random.Random(seed)
        for _ in range(200):  # bounded; the stop event ends it long before
            if self.stop.is_set():
                return
            size = generator.choice([0, 1, 4096, 200_000, 1_000_000])
            data = os.urandom(size)
            code, blob_id, reason = store(self.devnet, data)
            with self.lock:
                self.attempts += 1
                if code == 200 and blob_id:
                    self.stored[blob_id] = data
                else:
                    self.failures.append((code, reason))


def test_churn_loses_no_certified_blob_and_the_network_recovers(make_devnet: object) -> None:
    assert callable(make_devnet)
    epoch_duration = 20
    devnet: DevnetCommand = make_devnet(epoch_duration)
    writers = Writers(devnet)
    threads = [threading.Thread(target=writers.run, args=(seed,), daemon=True) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    generator = random.Random(7)
    restarted: set[int] = set()
    try:
        for _round in range(3):
            victims = generator.sample(sorted(devnet.peers), 3)
            for index in victims:
                devnet.kill(index)
            time.sleep(8)
            for index in victims:
                devnet.restart(index)
            restarted.update(victims)
            time.sleep(7)
    finally:
        writers.stop.set()
        for thread in threads:
            thread.join(240)
    last_restart_epoch = gateway_epoch(devnet)

    # Failed stores fail cleanly: the quorum was missing, nothing internal broke.
    for code, reason in writers.failures:
        assert (code, reason) == (504, "NOT_ENOUGH_PEERS"), (code, reason)
    assert writers.stored, f"no store succeeded out of {writers.attempts}"

    # The network takes writes again after the churn.
    wait_for("writable after the churn", lambda: status(devnet)[0] == 200, 60)
    code, blob_id, reason = store(devnet, b"after the churn")
    assert code == 200 and blob_id, (code, reason)
    writers.stored[blob_id] = b"after the churn"

    # Two more epoch changes, reached by every peer, the restarted ones included.
    target = last_restart_epoch + 2
    wait_for("two more epoch changes", lambda: gateway_epoch(devnet) >= target, 4 * epoch_duration)
    devnet.refresh_pids()
    assert len(devnet.pids()) == PEERS
    wait_for(
        "every peer, restarted ones included, at the new epoch",
        lambda: (lambda e: len(e) == PEERS and min(e.values()) >= target)(peer_epochs(devnet)),
        2 * epoch_duration,
    )

    # The restarted peers are members again (a peer is dropped only when it stays silent).
    wait_for(
        "every peer back in the committee",
        lambda: all(
            v.get("walrus_epoch_committee_members") == PEERS for v in devnet.scrape().values()
        ),
        6 * epoch_duration,
    )

    # Every certified blob reads back byte-identical.
    for stored_id, data in writers.stored.items():
        code, body = read(devnet, stored_id)
        assert code == 200, f"blob {stored_id} unreadable: {code}"
        assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    assert restarted
