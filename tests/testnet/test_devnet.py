"""Multi-process tests (issue 5): a devnet of real `walrus-peer` processes on 127.0.0.1.

One devnet for the module (7 storage peers, 20 shards, so f = 6; see
``walrus_p2p.testing.processes.Devnet``), with two `walrus-peer serve` gateways: ``main`` (default
limits, 64 MiB bodies) and ``limits`` (64 KiB bodies, one write and one read at a time) for the
load-shedding tests. Storage peers serve Prometheus metrics so tests can see what the peers did,
not only what the client says.

What each test proves is in its docstring. Every network call has a timeout and every wait a
deadline; the fixture stops every process it started, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from walrus_p2p.api._web import SNIFF_BYTES, sniff
from walrus_p2p.core.committee import quorum_threshold
from walrus_p2p.core.economy import Prices, quote
from walrus_p2p.core.encoding import EncodingConfig, pair_to_shard
from walrus_p2p.core.genesis import DEFAULT_STORAGE_PRICE, DEFAULT_WRITE_PRICE
from walrus_p2p.core.metadata import blob_id_of
from walrus_p2p.testing.processes import (
    CLIENT_CLI_TIMEOUT,
    Devnet,
    Gateway,
    cli_command,
    free_tcp_port,
    peers_holding_at_most,
    poll_until,
    processes_mentioning,
    stop_process,
    tail,
)
from walrus_p2p.types import blob_id_from_text, blob_id_to_text

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PEERS = 7
SHARDS = 20
EPOCHS = 2
READY_TIMEOUT = 150.0
"""Start-up of 7 peers and 2 gateways: ~10 s idle, much more on a loaded 2-core machine."""
REACHABLE_TIMEOUT = 120.0
"""A restarted peer is reachable again after its start-up plus, at worst, libp2p's 60 s
block on a peer whose dial failed (docs/design.md §7)."""
HTTP_TIMEOUT = httpx.Timeout(120.0, connect=10.0)

KIB = 1024
MIB = 1024 * KIB
BLOB_SIZES = (0, 1, MIB, 64 * MIB)
LIMITS_MAX_BODY = 64 * KIB

MEMORY_BOUND_FACTOR = 12
MEMORY_BOUND_BASELINE = 150 * MIB
"""Peak RSS bound of a CLI store: measured ~640 MiB for 64 MiB (about 10x; the encoded blob is
3.93x, plus the mapped file, wire copies in flight and ~100 MiB of interpreter and libp2p)."""


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def devnet(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Devnet]:
    net = Devnet(tmp_path_factory.mktemp("devnet"), PEERS, SHARDS, economy=True)
    failed_before = request.session.testsfailed
    try:
        net.prepare()
        for index in net.peers:
            net.start_peer(index)
        main = net.start_gateway("main")
        limited = net.start_gateway(
            "limits",
            "--max-body",
            str(LIMITS_MAX_BODY),
            "--max-concurrent-writes",
            "1",
            "--max-writes-per-address",
            "1",
            "--max-concurrent-reads",
            "1",
        )
        net.wait_all_reachable(main, READY_TIMEOUT)
        net.wait_all_reachable(limited, READY_TIMEOUT)
        for index in net.peers:
            net.wait_peer_metrics(index)
        yield net
    finally:
        net.close()
        if request.session.testsfailed != failed_before:
            # pytest prunes old temporary directories (other runs may do it meanwhile): keep
            # the end of every log in the report of the failing run.
            print(net.log_tails())


@pytest.fixture(scope="module")
def gateway(devnet: Devnet) -> Gateway:
    return devnet.gateway("main")


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        yield client


@pytest.fixture(scope="module")
def blobs(gateway: Gateway, http: httpx.Client) -> dict[int, tuple[bytes, dict[str, Any]]]:
    """Random blobs of every size in BLOB_SIZES, stored once through the main gateway."""
    stored: dict[int, tuple[bytes, dict[str, Any]]] = {}
    for size in BLOB_SIZES:
        data = fresh_bytes(size)
        reply = http.put(f"{gateway.url}/v1/blobs", params={"epochs": EPOCHS}, content=data)
        assert reply.status_code == 200, reply.text
        stored[size] = (data, reply.json())
    return stored


# -- helpers ----------------------------------------------------------------------------------

_ONE_BYTE_BLOBS: set[bytes] = set()


def fresh_bytes(size: int) -> bytes:
    """Random bytes that no other test of this module stored: a 1-byte blob has only 256 values,
    so without this, two tests' "new" 1-byte blobs collide (alreadyCertified) once in ~100 runs."""
    data = secrets.token_bytes(size)
    if size == 1:
        unused = sorted(set(range(256)) - {blob[0] for blob in _ONE_BYTE_BLOBS})
        data = bytes([secrets.choice(unused)])
        _ONE_BYTE_BLOBS.add(data)
    return data


class _AnyInt:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, int) and not isinstance(other, bool)

    def __repr__(self) -> str:
        return "ANY_INT"


ANY_INT: Any = _AnyInt()


def blob_id_of_reply(body: dict[str, Any]) -> str:
    if "newlyCreated" in body:
        return str(body["newlyCreated"]["blobObject"]["blobId"])
    return str(body["alreadyCertified"]["blobId"])


def expected_blob_id(data: bytes) -> str:
    return blob_id_to_text(blob_id_of(data, EncodingConfig.for_shards(SHARDS)))


def assert_newly_created(body: dict[str, Any], data: bytes, *, epochs: int, deletable: bool) -> str:
    """The Walrus publisher's shape, exactly, with values that fit this store."""
    assert set(body) == {"newlyCreated"}, body
    created = body["newlyCreated"]
    assert set(created) == {"blobObject", "cost"}
    blob = created["blobObject"]
    assert set(blob) == {
        "blobId",
        "size",
        "encodingType",
        "certifiedEpoch",
        "storage",
        "deletable",
    }
    assert set(blob["storage"]) == {"startEpoch", "endEpoch", "storageSize"}
    assert blob["blobId"] == expected_blob_id(data)
    assert blob["size"] == len(data)
    assert blob["deletable"] is deletable
    assert isinstance(blob["encodingType"], int)
    storage = blob["storage"]
    assert storage["endEpoch"] - storage["startEpoch"] == epochs
    assert blob["certifiedEpoch"] == storage["startEpoch"]
    assert storage["storageSize"] == EncodingConfig.for_shards(SHARDS).encoded_length(len(data))
    # The devnet's genesis has an economy: the cost is the FROST paid at its prices.
    prices = Prices(DEFAULT_STORAGE_PRICE, DEFAULT_WRITE_PRICE)
    price = quote(storage["storageSize"], epochs, prices)
    assert created["cost"] in (price.total, 0)  # 0: an earlier payment of this blob covered it
    return str(blob["blobId"])


def assert_error(reply: httpx.Response, status: int, reason: str) -> None:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    error = reply.json()["error"]
    assert error["code"] == status
    assert error["reason"] == reason
    assert isinstance(error["message"], str) and error["message"]


def cli_read(devnet: Devnet, blob_id: str, output: Path, *extra: str) -> bytes:
    result = devnet.cli("read", blob_id, "-o", str(output), "--json", *extra, check=True)
    summary = json.loads(result.stdout)
    assert summary == {"blobId": blob_id, "size": output.stat().st_size, "path": str(output)}
    return output.read_bytes()


def upload_counters(devnet: Devnet) -> dict[int, float]:
    """Per peer: slivers written from client uploads plus store requests of any outcome."""
    counters: dict[int, float] = {}
    for index in devnet.peers:
        values = devnet.metrics(index)
        counters[index] = sum(
            value
            for name, value in values.items()
            if name.startswith("walrus_slivers_stored_total")
            or (
                name.startswith("walrus_requests_total")
                and ('type="StoreSliverRequest"' in name or 'type="StoreMetadataRequest"' in name)
            )
        )
    return counters


def stable_upload_counters(devnet: Devnet) -> dict[int, float]:
    """Counters once two readings a second apart agree (a store's tail may still be landing)."""
    previous: list[dict[int, float]] = [upload_counters(devnet)]

    def settled() -> dict[int, float] | None:
        current = upload_counters(devnet)
        if current == previous[0]:
            return current
        previous[0] = current
        return None

    return poll_until(settled, timeout=30.0, interval=1.0, what="upload counters to settle")


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def log_since(path: Path, offset: int) -> str:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


# -- round trips ------------------------------------------------------------------------------


def test_http_store_and_read_back_identical_bytes(
    gateway: Gateway, http: httpx.Client, blobs: dict[int, tuple[bytes, dict[str, Any]]]
) -> None:
    """PUT /v1/blobs answers the publisher JSON with the blob id the bytes commit to, and
    GET /v1/blobs/{id} (whole, Range, byte-range) returns exactly those bytes, for 0 B .. 64 MiB."""
    for size, (data, body) in blobs.items():
        blob_id = assert_newly_created(body, data, epochs=EPOCHS, deletable=True)
        reply = http.get(f"{gateway.url}/v1/blobs/{blob_id}")
        assert reply.status_code == 200, reply.text
        assert reply.content == data, f"{size}-byte blob read back differs"
        # The type the gateway's sniffer states for these (random) first bytes, almost always
        # application/octet-stream; never a type a browser would run.
        assert reply.headers["content-type"] == sniff(
            data[:SNIFF_BYTES], complete=size <= SNIFF_BYTES
        )
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["content-length"] == str(size)
        assert reply.headers["etag"] == f'"{blob_id}"'
        assert "immutable" in reply.headers["cache-control"]

    big, big_body = blobs[64 * MIB]
    big_id = blob_id_of_reply(big_body)
    first, last = 1_000_000, 3_500_000  # crosses rows of the blob matrix
    reply = http.get(f"{gateway.url}/v1/blobs/{big_id}", headers={"Range": f"bytes={first}-{last}"})
    assert reply.status_code == 206, reply.text
    assert reply.headers["content-range"] == f"bytes {first}-{last}/{len(big)}"
    assert reply.content == big[first : last + 1]

    medium, medium_body = blobs[MIB]
    medium_id = blob_id_of_reply(medium_body)
    reply = http.get(f"{gateway.url}/v1/blobs/{medium_id}", headers={"Range": "bytes=-1000"})
    assert reply.status_code == 206
    assert reply.content == medium[-1000:]

    reply = http.get(
        f"{gateway.url}/v1/blobs/{big_id}/byte-range",
        params={"start": 40 * MIB + 3, "length": 2 * MIB},
    )
    assert reply.status_code == 200
    assert reply.content == big[40 * MIB + 3 : 42 * MIB + 3]

    # A permanent store says so, and the same bytes under another lifetime keep their id.
    small = fresh_bytes(1)
    reply = http.put(
        f"{gateway.url}/v1/blobs", params={"epochs": 1, "permanent": "true"}, content=small
    )
    assert reply.status_code == 200, reply.text
    assert_newly_created(reply.json(), small, epochs=1, deletable=False)


def test_cli_store_and_read_back_identical_bytes(
    devnet: Devnet,
    tmp_path: Path,
    gateway: Gateway,
    http: httpx.Client,
    blobs: dict[int, tuple[bytes, dict[str, Any]]],
) -> None:
    """`walrus-peer store --json` stores several files in one run (0 B, 1 B, 1 MiB) with the
    publisher JSON plus the path (the empty blob, already stored through the gateway, is
    alreadyCertified); `walrus-peer read -o` writes identical bytes; what the CLI
    stored the gateway reads, and what the gateway stored the CLI reads. (64 MiB through the CLI
    is in the memory test.)"""
    files = []
    for size in (0, 1, MIB):
        path = tmp_path / f"blob-{size}.bin"
        path.write_bytes(fresh_bytes(size))
        files.append(path)
    results = devnet.cli_json("store", *map(str, files), "--epochs", str(EPOCHS))
    assert isinstance(results, list) and len(results) == len(files)
    for path, entry in zip(files, results, strict=True):
        assert entry.pop("path") == str(path)
        data = path.read_bytes()
        if not data:
            # There is one empty blob, and the `blobs` fixture stored it through the gateway.
            blob_id = expected_blob_id(data)
            assert entry == {"alreadyCertified": {"blobId": blob_id, "endEpoch": ANY_INT}}
        else:
            blob_id = assert_newly_created(entry, data, epochs=EPOCHS, deletable=True)
        assert cli_read(devnet, blob_id, tmp_path / f"{path.name}.back") == data
        reply = http.get(f"{gateway.url}/v1/blobs/{blob_id}")
        assert reply.status_code == 200 and reply.content == data

    status = devnet.cli_json("status", blob_id_of_reply(results[-1]))
    assert status["state"] == "certified"
    assert status["size"] == MIB
    assert set(status) == {"blobId", "state", "size", "certifiedEpoch", "endEpoch", "deletable"}

    data, body = blobs[MIB]
    assert cli_read(devnet, blob_id_of_reply(body), tmp_path / "from-gateway.bin") == data


def test_cli_store_of_64_mib_has_bounded_peak_memory(
    devnet: Devnet, tmp_path: Path, record_property: Any
) -> None:
    """Peak RSS (VmHWM, from wait4's rusage of exactly this child) of `walrus-peer store` of a
    64 MiB blob stays under 12x the blob + 150 MiB; the blob reads back identical via the CLI."""
    size = 64 * MIB
    path = tmp_path / "big.bin"
    data = fresh_bytes(size)
    path.write_bytes(data)
    output = tmp_path / "store.json"
    started = time.monotonic()
    with open(output, "wb") as stdout, open(tmp_path / "store.err", "wb") as stderr:
        process = subprocess.Popen(
            [*cli_command(), "store", str(path), "--epochs", str(EPOCHS), "--json"],
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=devnet.environment(),
        )
    try:
        # wait4 instead of Popen.wait: it also returns this one child's resource usage.
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid == process.pid:
                process.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() - started > CLIENT_CLI_TIMEOUT:
                raise AssertionError("walrus-peer store of 64 MiB did not finish in time")
            time.sleep(0.1)
    finally:
        if process.returncode is None:
            process.kill()
            process.wait(timeout=10)
    elapsed = time.monotonic() - started
    assert process.returncode == 0, tail(tmp_path / "store.err")
    peak = usage.ru_maxrss * 1024  # kilobytes on Linux
    bound = MEMORY_BOUND_FACTOR * size + MEMORY_BOUND_BASELINE
    record_property("store_64mib_peak_rss_bytes", peak)
    record_property("store_64mib_seconds", round(elapsed, 1))
    print(
        f"\nwalrus-peer store of 64 MiB: peak RSS {peak / MIB:.0f} MiB "
        f"({peak / size:.1f}x the blob), {elapsed:.1f} s; bound {bound / MIB:.0f} MiB"
    )
    assert peak < bound, f"peak RSS {peak / MIB:.0f} MiB exceeds {bound / MIB:.0f} MiB"

    (entry,) = json.loads(output.read_bytes())
    entry.pop("path")
    blob_id = assert_newly_created(entry, data, epochs=EPOCHS, deletable=True)
    assert cli_read(devnet, blob_id, tmp_path / "big.back") == data


# -- faults -----------------------------------------------------------------------------------


def test_reads_survive_peers_holding_f_shards_down(
    devnet: Devnet,
    gateway: Gateway,
    http: httpx.Client,
    tmp_path: Path,
    blobs: dict[int, tuple[bytes, dict[str, Any]]],
) -> None:
    """With the peers holding f shards stopped (one SIGKILLed, the others SIGTERMed), every blob
    still reads back exactly over HTTP (whole and Range) and through the CLI, and a new blob
    can still be stored; after the restart every shard answers again."""
    info = devnet.info  # `walrus-peer info --json`, read when the devnet was prepared
    assert info["shards"] == SHARDS and info["f"] == (SHARDS - 1) // 3
    assert info["quorum"] == quorum_threshold(SHARDS)
    assigned = sorted(shard for member in info["committee"] for shard in member["shards"])
    assert assigned == list(range(SHARDS)) and len(info["committee"]) == PEERS
    victims = peers_holding_at_most(devnet, devnet.f)
    down = sum(len(devnet.peers[index].shards) for index in victims)
    assert devnet.f - 2 < down <= devnet.f, (victims, down)
    try:
        for position, index in enumerate(victims):
            devnet.stop_peer(index, kill=position == 0)

        def status_sees_them_down() -> dict[str, Any] | None:
            reply = http.get(f"{gateway.url}/status", timeout=15.0)
            body: dict[str, Any] = reply.json()
            return body if body["reachableShards"] == SHARDS - down else None

        status = poll_until(status_sees_them_down, timeout=30.0, what="the gateway to see f down")
        assert status["writable"] is True  # n - f shards are still a write quorum

        for size, (data, body) in blobs.items():
            reply = http.get(f"{gateway.url}/v1/blobs/{blob_id_of_reply(body)}")
            assert reply.status_code == 200, reply.text
            assert reply.content == data, f"{size}-byte blob differs with f shards down"
        big, big_body = blobs[64 * MIB]
        reply = http.get(
            f"{gateway.url}/v1/blobs/{blob_id_of_reply(big_body)}",
            headers={"Range": "bytes=5000000-5999999"},
        )
        assert reply.status_code == 206 and reply.content == big[5_000_000:6_000_000]
        data, body = blobs[MIB]
        assert cli_read(devnet, blob_id_of_reply(body), tmp_path / "f-down.bin") == data

        fresh = secrets.token_bytes(100 * KIB)
        reply = http.put(f"{gateway.url}/v1/blobs", params={"epochs": 1}, content=fresh)
        assert reply.status_code == 200, reply.text
        fresh_id = assert_newly_created(reply.json(), fresh, epochs=1, deletable=True)
        assert http.get(f"{gateway.url}/v1/blobs/{fresh_id}").content == fresh
    finally:
        for index in victims:
            if not devnet.peers[index].running():
                devnet.start_peer(index)
        for index in victims:
            devnet.wait_peer_metrics(index)
        devnet.wait_all_reachable(gateway, REACHABLE_TIMEOUT)
        devnet.wait_all_reachable(devnet.gateway("limits"), REACHABLE_TIMEOUT)


def test_peer_serving_corrupted_slivers_is_detected_and_routed_around(
    devnet: Devnet, gateway: Gateway, http: httpx.Client, tmp_path: Path
) -> None:
    """A peer restarted with WALRUS_FAULT_INJECTION=corrupt-slivers serves every sliver with a
    flipped byte. A Range read that needs its plain sliver, and full CLI reads, still return
    exactly the stored bytes; the client logs the bad sliver with that peer's id."""
    data = secrets.token_bytes(MIB)
    reply = http.put(f"{gateway.url}/v1/blobs", params={"epochs": 1}, content=data)
    assert reply.status_code == 200, reply.text
    blob_id = blob_id_of_reply(reply.json())
    # Primary sliver 0 is row 0 of the blob matrix: the first bytes of the blob.
    shard = pair_to_shard(blob_id_from_text(blob_id), 0, SHARDS)
    (bad,) = (index for index, peer in devnet.peers.items() if shard in peer.shards)
    bad_peer = devnet.peers[bad]
    evidence = f"peer={bad_peer.peer_id[:12]}"
    try:
        devnet.stop_peer(bad)
        peer_log_offset = log_size(bad_peer.log_path)
        devnet.start_peer(bad, WALRUS_FAULT_INJECTION="corrupt-slivers")
        devnet.wait_peer_metrics(bad)
        assert "fault injection active fault=corrupt-slivers" in log_since(
            bad_peer.log_path, peer_log_offset
        )
        devnet.wait_all_reachable(gateway, REACHABLE_TIMEOUT)

        gateway_log_offset = log_size(gateway.log_path)
        reply = http.get(f"{gateway.url}/v1/blobs/{blob_id}", headers={"Range": "bytes=0-99"})
        assert reply.status_code == 206, reply.text
        assert reply.content == data[:100]
        gateway_log = log_since(gateway.log_path, gateway_log_offset)
        assert "peer served a bad sliver" in gateway_log and evidence in gateway_log, gateway_log

        # Full reads ask for the systematic primary slivers (0..kp-1) first, and the bad peer
        # holds primary sliver 0. Every read must be exact; one must have seen it.
        seen = False
        for attempt in range(5):
            result = devnet.cli(
                "read", blob_id, "-o", str(tmp_path / f"read-{attempt}.bin"), check=True
            )
            assert (tmp_path / f"read-{attempt}.bin").read_bytes() == data
            stderr = result.stderr.decode(errors="replace")
            if "peer served a bad sliver" in stderr and evidence in stderr:
                seen = True
                break
        assert seen, "no full read ever met the corrupting peer"

        served = devnet.metrics(bad)
        assert served.get('walrus_requests_total{outcome="ok",type="GetSliverRequest"}', 0) > 0
    finally:
        devnet.stop_peer(bad)
        devnet.start_peer(bad)
        devnet.wait_peer_metrics(bad)
        devnet.wait_all_reachable(gateway, REACHABLE_TIMEOUT)


def test_unknown_blob_is_404_within_a_second(
    devnet: Devnet, gateway: Gateway, http: httpx.Client, tmp_path: Path
) -> None:
    """An id nobody stored: 404 BLOB_NOT_FOUND in under a second (the peers' "unknown" answers
    reach a quorum; nothing waits for a timeout), for GET, HEAD and byte-range; the CLI exits
    with 3 (read, status) and writes no file, and with 2 for a malformed id."""
    for _ in range(3):
        unknown = blob_id_to_text(secrets.token_bytes(32))
        started = time.monotonic()
        reply = http.get(f"{gateway.url}/v1/blobs/{unknown}", timeout=10.0)
        elapsed = time.monotonic() - started
        assert_error(reply, 404, "BLOB_NOT_FOUND")
        assert elapsed < 1.0, f"404 took {elapsed:.2f}s"
    assert http.head(f"{gateway.url}/v1/blobs/{unknown}", timeout=10.0).status_code == 404
    reply = http.get(
        f"{gateway.url}/v1/blobs/{unknown}/byte-range", params={"start": 0, "length": 1}
    )
    assert_error(reply, 404, "BLOB_NOT_FOUND")

    output = tmp_path / "never.bin"
    result = devnet.cli("read", unknown, "-o", str(output))
    assert result.returncode == 3, result.stderr
    assert not output.exists()
    assert devnet.cli("status", unknown).returncode == 3
    assert devnet.cli("read", "not-a-blob-id", "-o", str(output)).returncode == 2


def test_second_store_of_same_bytes_is_already_certified_and_uploads_nothing(
    devnet: Devnet, gateway: Gateway, http: httpx.Client, tmp_path: Path
) -> None:
    """After a first store (which the peers' upload counters see), storing the same bytes again
    for no longer a lifetime, through HTTP or the CLI, answers alreadyCertified with the same
    id and end epoch, and no peer receives a single metadata or sliver upload."""
    data = secrets.token_bytes(MIB)
    path = tmp_path / "twice.bin"
    path.write_bytes(data)
    before = stable_upload_counters(devnet)
    (first,) = devnet.cli_json("store", str(path), "--epochs", str(EPOCHS))
    first.pop("path")
    blob_id = assert_newly_created(first, data, epochs=EPOCHS, deletable=True)
    end_epoch = first["newlyCreated"]["blobObject"]["storage"]["endEpoch"]
    after_first = stable_upload_counters(devnet)
    uploaded = sum(after_first.values()) - sum(before.values())
    # Control: the counters do see a store (>= 2 slivers per shard of a write quorum).
    assert uploaded >= 2 * quorum_threshold(SHARDS), (before, after_first)

    expected = {"alreadyCertified": {"blobId": blob_id, "endEpoch": end_epoch}}
    for epochs in (EPOCHS, 1):
        reply = http.put(f"{gateway.url}/v1/blobs", params={"epochs": epochs}, content=data)
        assert reply.status_code == 200, reply.text
        assert reply.json() == expected
    (again,) = devnet.cli_json("store", str(path), "--epochs", str(EPOCHS))
    assert again == {"path": str(path), **expected}
    assert upload_counters(devnet) == after_first


# -- gateway limits ---------------------------------------------------------------------------


def test_gateway_refuses_oversized_bodies_with_413(devnet: Devnet, http: httpx.Client) -> None:
    """Over the limit by one byte: 413 PAYLOAD_TOO_LARGE, whether the length is declared or the
    body is chunked; exactly at the limit the blob is stored."""
    limited = devnet.gateway("limits")
    url = f"{limited.url}/v1/blobs"
    reply = http.put(url, params={"epochs": 1}, content=b"x" * (LIMITS_MAX_BODY + 1))
    assert_error(reply, 413, "PAYLOAD_TOO_LARGE")

    def chunked() -> Iterator[bytes]:
        yield b"y" * LIMITS_MAX_BODY
        yield b"y"

    reply = http.put(url, params={"epochs": 1}, content=chunked())
    assert_error(reply, 413, "PAYLOAD_TOO_LARGE")

    exact = secrets.token_bytes(LIMITS_MAX_BODY)
    reply = http.put(url, params={"epochs": 1}, content=exact)
    assert reply.status_code == 200, reply.text
    assert_newly_created(reply.json(), exact, epochs=1, deletable=True)


def test_gateway_refuses_malformed_blob_ids_with_400(gateway: Gateway, http: httpx.Client) -> None:
    """Malformed ids are a 400 INVALID_BLOB_ID before any network work; bad store parameters are
    a 400 BAD_REQUEST."""
    valid = blob_id_to_text(bytes(32))
    for text in ("abc", "!" * 43, valid + "A", valid[:-1] + "=", "A" * 42 + "B"):
        # (the last is 43 base64 characters whose unused low bits are set: not canonical)
        assert_error(http.get(f"{gateway.url}/v1/blobs/{text}"), 400, "INVALID_BLOB_ID")
    reply = http.get(f"{gateway.url}/v1/blobs/abc/byte-range", params={"start": 0, "length": 1})
    assert_error(reply, 400, "INVALID_BLOB_ID")
    assert_error(http.put(f"{gateway.url}/v1/blobs", content=b"x"), 400, "BAD_REQUEST")
    reply = http.put(f"{gateway.url}/v1/blobs", params={"epochs": "0"}, content=b"x")
    assert_error(reply, 400, "BAD_REQUEST")


def test_gateway_sheds_write_overload_with_429_and_recovers(
    devnet: Devnet, http: httpx.Client
) -> None:
    """With this address's one upload held by a slow upload (its body still arriving), another
    upload is refused at once with 429 TOO_MANY_REQUESTS and Retry-After; reads are not
    affected; once the slow upload finishes it is stored, and uploads are admitted again."""
    limited = devnet.gateway("limits")
    url = f"{limited.url}/v1/blobs"
    release = threading.Event()
    outcome: dict[str, Any] = {}
    first_half, second_half = secrets.token_bytes(1000), secrets.token_bytes(1000)

    def slow_body() -> Iterator[bytes]:
        yield first_half
        release.wait(60.0)
        yield second_half

    def slow_upload() -> None:
        try:
            with httpx.Client(timeout=HTTP_TIMEOUT) as own:
                outcome["reply"] = own.put(url, params={"epochs": 1}, content=slow_body())
        except httpx.HTTPError as error:
            outcome["error"] = error

    uploader = threading.Thread(target=slow_upload, daemon=True)
    uploader.start()
    try:
        # The probe is refused (429) while the slot is held, and otherwise admitted and answered
        # 400 at once (epochs=0), so probing never holds the slot itself.
        def refused() -> httpx.Response | None:
            reply = http.put(url, params={"epochs": 0}, content=b"probe", timeout=10.0)
            if reply.status_code == 429:
                return reply
            assert_error(reply, 400, "BAD_REQUEST")
            return None

        busy = poll_until(refused, timeout=15.0, interval=0.2, what="a 429 while the slot is held")
        assert_error(busy, 429, "TOO_MANY_REQUESTS")
        assert busy.headers["retry-after"] == "1"
        assert http.get(f"{limited.url}/status", timeout=15.0).status_code == 200
    finally:
        release.set()
        uploader.join(timeout=120.0)
    assert not uploader.is_alive()
    assert "error" not in outcome, outcome
    reply = outcome["reply"]
    assert reply.status_code == 200, reply.text
    assert_newly_created(reply.json(), first_half + second_half, epochs=1, deletable=True)

    # The slot is released when the handler returns, which can be a moment after the client
    # has read the whole reply: poll until a probe is admitted again.
    def admitted() -> httpx.Response | None:
        reply = http.put(url, params={"epochs": 0}, content=b"x", timeout=10.0)
        return None if reply.status_code == 429 else reply

    reply = poll_until(admitted, timeout=15.0, interval=0.2, what="writes admitted again")
    assert_error(reply, 400, "BAD_REQUEST")
    small = secrets.token_bytes(10)
    reply = http.put(url, params={"epochs": 1}, content=small, timeout=60.0)
    assert reply.status_code == 200, reply.text
    blob_id = blob_id_of_reply(reply.json())
    assert http.get(f"{limited.url}/v1/blobs/{blob_id}").content == small


# -- the devnet command -----------------------------------------------------------------------


def test_devnet_command_runs_the_demo_and_stops_its_peers(tmp_path: Path) -> None:
    """`walrus-peer devnet --demo FILE --exit-after-demo` starts its peers and gateway, stores
    and reads the file back identically, exits 0 and leaves no peer process behind."""
    demo = tmp_path / "demo.bin"
    demo.write_bytes(secrets.token_bytes(300 * KIB))
    directory = tmp_path / "devnet"
    arguments = [
        *cli_command(),
        "devnet",
        "--dir",
        str(directory),
        "--peers",
        "4",
        "--shards",
        "10",
        "--http",
        f"127.0.0.1:{free_tcp_port()}",
        "--max-concurrent-writes",
        "2",
        "--demo",
        str(demo),
        "--exit-after-demo",
    ]
    environment = {key: value for key, value in os.environ.items() if not key.startswith("WALRUS_")}
    with open(tmp_path / "devnet.out", "wb") as log:
        process = subprocess.Popen(
            arguments,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
            start_new_session=True,
        )
    try:
        process.wait(timeout=180)
    finally:
        # The devnet stops its peers itself on SIGTERM; whatever survives is killed here, and
        # then counts as a failure.
        stop_process(process)
        survivors = processes_mentioning(str(directory))
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    output = (tmp_path / "devnet.out").read_text(errors="replace")
    assert process.returncode == 0, output[-3000:]
    assert "devnet ready: 4 peers, 10 shards" in output
    assert f"demo: {demo.name}: {300 * KIB} bytes" in output and ": identical" in output
    # One progress line per step, and a healthy start prints no warnings or errors, on the
    # terminal or in the peers' logs (docs/testnet.md, "Process devnet").
    for step in ("peers listening: 4 of 4", "committee known: epoch 0", "gateway up: http://"):
        assert step in output, output[-3000:]
    assert "write quorum reached" in output
    noisy = [
        line for line in output.splitlines() if "level=warning" in line or "level=error" in line
    ]
    assert noisy == [], noisy[:5]
    for peer_log in sorted(directory.glob("peer-*/peer.log")):
        lines = peer_log.read_text(errors="replace").splitlines()
        noisy = [line for line in lines if "level=warning" in line or "level=error" in line]
        assert noisy == [], (peer_log, noisy[:5])
    assert survivors == [], "peer processes outlived the devnet"


def test_cli_lifetimes_and_the_expired_blobs_of_list(devnet: Devnet, tmp_path: Path) -> None:
    """`store --end-epoch`, `--earliest-expiry-time` and `--epochs max` end where they say,
    `--epochs 1` warns that the blob expires soon, and `list` hides expired blobs unless
    `--include-expired` (docs/cli.md, "Lifetimes")."""
    from walrus_p2p.node.config import load_genesis

    genesis = load_genesis(devnet.genesis_path)
    longest = genesis.limits.max_epochs_ahead
    keys = ["--key-dir", str(tmp_path / "keys")]
    files = []
    for name in ("end", "time", "max", "one"):
        path = tmp_path / f"{name}.bin"
        path.write_bytes(secrets.token_bytes(4096))
        files.append(str(path))
    current = devnet.cli_json("info", *keys)["epoch"]
    # The first epoch beginning at or after a time half-way through epoch current + 2.
    moment = genesis.epoch_start(current + 2) + genesis.epoch_duration_seconds // 2
    rfc3339 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
    (end,) = devnet.cli_json("store", files[0], "--end-epoch", str(current + 3), *keys)
    (by_time,) = devnet.cli_json("store", files[1], "--earliest-expiry-time", rfc3339, *keys)
    (longest_store,) = devnet.cli_json("store", files[2], "--epochs", "max", *keys)
    (short,) = devnet.cli_json("store", files[3], "--epochs", "1", *keys)
    if devnet.cli_json("info", *keys)["epoch"] != current:
        pytest.skip("an epoch change during the stores moved the ends")
    ends = [
        entry["newlyCreated"]["blobObject"]["storage"]["endEpoch"]
        for entry in (end, by_time, longest_store, short)
    ]
    assert ends == [current + 3, current + 3, current + longest, current + 1]
    assert "warning" not in end and "warning" not in longest_store
    assert "expires soon" in short["warning"]
    refused = devnet.cli("store", files[0], "--end-epoch", str(current), *keys)
    assert refused.returncode == 2
    assert b"--end-epoch must be after the current epoch" in refused.stderr
    too_late = devnet.cli("store", files[0], "--epochs", str(longest + 1), *keys)
    assert too_late.returncode == 2

    # A blob the peers no longer know, which this key stored until an epoch now past.
    gone = blob_id_to_text(bytes(range(32)))
    index = tmp_path / "keys" / "stored-blobs.jsonl"
    with index.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"alreadyCertified": {"blobId": gone, "endEpoch": 0}}) + "\n")
    listed = {row["blobId"]: row for row in devnet.cli_json("list", *keys)}
    everything = {row["blobId"]: row for row in devnet.cli_json("list", "--include-expired", *keys)}
    assert gone not in listed
    assert everything[gone]["state"] == "expired"
    assert set(everything) - {gone} == set(listed)
    assert {row["state"] for row in listed.values()} == {"certified"}
    assert len(listed) == 4


def test_cli_encrypted_store_and_reads(devnet: Devnet, tmp_path: Path) -> None:
    """`store --encrypt` stores ciphertext (the blob id commits to it), `read --decrypt` gives
    the file back, whole or a range; a wrong key fails clearly and writes nothing
    (docs/encryption.md)."""
    plaintext = secrets.token_bytes(300_000)
    source = tmp_path / "secret.bin"
    source.write_bytes(plaintext)
    key_file = tmp_path / "blob.key"
    created = devnet.cli(
        "store",
        str(source),
        "--epochs",
        "1",
        "--encrypt",
        "--key-file",
        str(key_file),
        "--json",
        check=True,
    )
    assert key_file.exists()
    assert b"created key file" in created.stderr
    (entry,) = json.loads(created.stdout)
    assert entry["encrypted"] is True
    blob = entry["newlyCreated"]["blobObject"]
    assert blob["blobId"] != expected_blob_id(plaintext)
    assert blob["size"] > len(plaintext)

    out = tmp_path / "out.bin"
    devnet.cli(
        "read", blob["blobId"], "-o", str(out), "--decrypt", "--key-file", str(key_file), check=True
    )
    assert out.read_bytes() == plaintext
    raw = devnet.cli("read", blob["blobId"], "-o", str(tmp_path / "raw.bin"), check=True)
    assert b"looks encrypted" in raw.stderr
    ciphertext = (tmp_path / "raw.bin").read_bytes()
    assert ciphertext != plaintext
    assert expected_blob_id(ciphertext) == blob["blobId"]  # the id commits to the ciphertext
    part = tmp_path / "part.bin"
    devnet.cli(
        "read",
        blob["blobId"],
        "-o",
        str(part),
        "--decrypt",
        "--key-file",
        str(key_file),
        "--start",
        "100000",
        "--length",
        "70000",
        check=True,
    )
    assert part.read_bytes() == plaintext[100_000:170_000]

    wrong = tmp_path / "wrong.key"
    wrong.write_text(secrets.token_bytes(32).hex())
    denied_out = tmp_path / "denied.bin"
    denied = devnet.cli(
        "read", blob["blobId"], "-o", str(denied_out), "--decrypt", "--key-file", str(wrong)
    )
    assert denied.returncode == 1
    assert b"DECRYPTION_FAILED" in denied.stderr
    assert not denied_out.exists()

    # A passphrase from the environment.
    environment = devnet.environment(WALRUS_TEST_PASSPHRASE="a long passphrase")
    stored = subprocess.run(
        [
            *cli_command(),
            "store",
            str(source),
            "--epochs",
            "1",
            "--encrypt",
            "--passphrase-env",
            "WALRUS_TEST_PASSPHRASE",
            "--json",
        ],
        capture_output=True,
        env=environment,
        timeout=CLIENT_CLI_TIMEOUT,
        check=True,
    )
    (by_passphrase,) = json.loads(stored.stdout)
    passphrase_id = by_passphrase["newlyCreated"]["blobObject"]["blobId"]
    subprocess.run(
        [
            *cli_command(),
            "read",
            passphrase_id,
            "-o",
            str(out),
            "--decrypt",
            "--passphrase-env",
            "WALRUS_TEST_PASSPHRASE",
        ],
        capture_output=True,
        env=environment,
        timeout=CLIENT_CLI_TIMEOUT,
        check=True,
    )
    assert out.read_bytes() == plaintext


def test_cli_health_lists_every_member(devnet: Devnet) -> None:
    """`walrus-peer health --json`: every peer process of the devnet answers, in the current
    epoch, with this version and its shards in place; the table form names each."""
    from walrus_p2p import __version__

    report = devnet.cli_json("health")
    assert report["writable"] is True
    assert report["shards"] == report["reachableShards"] == SHARDS
    members = report["members"]
    assert len(members) == PEERS
    assert {member["state"] for member in members} == {"ok"}
    assert {member["version"] for member in members} == {__version__}
    assert {member["epoch"] for member in members} == {report["epoch"]}
    assert sum(member["shardsInPlace"] for member in members) == SHARDS
    table = devnet.cli("health", check=True).stdout.decode()
    assert f"{PEERS} of {PEERS} members answered" in table
    for member in members:
        assert member["peerId"][:12] in table


def on_blob(devnet: Devnet, command: str, blob_id: str, *options: str) -> Any:
    """``walrus-peer COMMAND OPTIONS --json -- BLOB_ID``, its JSON answer: a blob id may begin
    with ``-`` (base64url), which argparse would read as an option without the ``--``."""
    result = devnet.cli(command, *options, "--json", "--", blob_id, check=True)
    return json.loads(result.stdout) if result.stdout.strip() else None


def test_cli_blob_attributes_and_the_gateway_headers(
    devnet: Devnet, gateway: Gateway, http: httpx.Client, tmp_path: Path
) -> None:
    """`set-blob-attribute`, `get-blob-attribute`, `remove-blob-attribute-fields` and
    `remove-blob-attribute` on a blob this key stored; the gateway sends the owner's content
    type and allowed headers (docs/attributes.md)."""
    data = b"<html><body>attributes</body></html>" + fresh_bytes(64)
    source = tmp_path / "page.bin"
    source.write_bytes(data)
    (stored,) = devnet.cli_json("store", str(source), "--epochs", "2")
    blob_id = stored["newlyCreated"]["blobObject"]["blobId"]
    assert on_blob(devnet, "get-blob-attribute", blob_id)["attributes"] == {}

    set_reply = on_blob(
        devnet,
        "set-blob-attribute",
        blob_id,
        "--attr",
        "content-type",
        "text/html; charset=utf-8",
        "--attr",
        "content-disposition",
        'inline; filename="page.html"',
        "--attr",
        "app-tag",
        "kept but not a header",
    )
    assert set_reply["attributes"]["app-tag"] == "kept but not a header"
    got = on_blob(devnet, "get-blob-attribute", blob_id)
    assert got["attributes"] == set_reply["attributes"]
    (mine,) = got["registrations"]
    assert mine["mine"] is True and mine["version"] == 0

    reply = http.get(f"{gateway.url}/v1/blobs/{blob_id}")
    assert reply.status_code == 200
    assert reply.content == data
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert reply.headers["content-security-policy"] == "sandbox"
    assert reply.headers["content-disposition"] == 'inline; filename="page.html"'
    assert "app-tag" not in reply.headers

    on_blob(devnet, "remove-blob-attribute-fields", blob_id, "--keys", "app-tag")
    after = on_blob(devnet, "get-blob-attribute", blob_id)
    assert set(after["attributes"]) == {"content-type", "content-disposition"}
    assert after["registrations"][0]["version"] == 1
    missing = devnet.cli("remove-blob-attribute-fields", "--keys", "never-set", "--", blob_id)
    assert missing.returncode != 0
    assert b"never-set" in missing.stderr
    bad = devnet.cli("set-blob-attribute", "--attr", "x", "a\nb", "--", blob_id)
    assert bad.returncode != 0
    assert b"ATTRIBUTE_INVALID" in bad.stderr or b"attributes not allowed" in bad.stderr

    on_blob(devnet, "remove-blob-attribute", blob_id)
    cleared = on_blob(devnet, "get-blob-attribute", blob_id)
    assert cleared["attributes"] == {}
    assert cleared["registrations"][0]["version"] == 2
    text = devnet.cli("get-blob-attribute", "--", blob_id, check=True).stdout.decode()
    assert "has no attributes" in text


def test_cli_and_gateway_quilts(
    devnet: Devnet, gateway: Gateway, http: httpx.Client, tmp_path: Path
) -> None:
    """`store-quilt` of a directory, `list-patches-in-quilt`, `read-quilt` by identifier, tag
    and patch id; the gateway serves the same patches, and takes a multipart quilt upload
    (docs/quilts.md)."""
    site = tmp_path / "site"
    (site / "img").mkdir(parents=True)
    files = {
        "index.html": b"<html>" + fresh_bytes(500) + b"</html>",
        "img/a.bin": fresh_bytes(40_000),
        "notes.txt": b"some notes " + fresh_bytes(30),
    }
    for name, data in files.items():
        (site / name).write_bytes(data)
    stored = devnet.cli_json("store-quilt", "--paths", str(site), "--epochs", "2")
    quilt_id = stored["blobStoreResult"]["newlyCreated"]["blobObject"]["blobId"]
    patches = {item["identifier"]: item["quiltPatchId"] for item in stored["storedQuiltBlobs"]}
    assert set(patches) == set(files)

    listed = on_blob(devnet, "list-patches-in-quilt", quilt_id)
    assert {item["identifier"]: item["quiltPatchId"] for item in listed} == patches

    out = tmp_path / "out"
    devnet.cli(
        "read-quilt",
        f"--quilt-id={quilt_id}",
        "--identifiers",
        "img/a.bin",
        "--out",
        str(out),
        check=True,
    )
    assert (out / "img" / "a.bin").read_bytes() == files["img/a.bin"]
    by_id = tmp_path / "by-id"
    devnet.cli(
        "read-quilt", f"--quilt-patch-ids={patches['notes.txt']}", "--out", str(by_id), check=True
    )
    assert (by_id / "notes.txt").read_bytes() == files["notes.txt"]
    missing = devnet.cli(
        "read-quilt", f"--quilt-id={quilt_id}", "--identifiers", "nope", "--out", str(out)
    )
    assert missing.returncode == 3
    from walrus_p2p.client.quilt import decode_patch_id, encode_patch_id

    quilt_blob, start, _ = decode_patch_id(patches["notes.txt"])
    past_end = encode_patch_id(quilt_blob, start, 10**7)
    refused = devnet.cli("read-quilt", f"--quilt-patch-ids={past_end}", "--out", str(out))
    assert refused.returncode == 1
    assert b"INVALID_PATCH_ID" in refused.stderr

    reply = http.get(f"{gateway.url}/v1/blobs/by-quilt-patch-id/{patches['index.html']}")
    assert reply.status_code == 200
    assert reply.content == files["index.html"]
    assert reply.headers["x-quilt-patch-identifier"] == "index.html"
    named = http.get(f"{gateway.url}/v1/blobs/by-quilt-id/{quilt_id}/img/a.bin")
    assert named.content == files["img/a.bin"]

    # Tagged files through the gateway, read back by tag on the command line.
    upload = http.put(
        f"{gateway.url}/v1/quilts",
        params={"epochs": 1},
        files=[
            ("red", ("red.bin", b"red " + fresh_bytes(20), "application/octet-stream")),
            ("blue", ("blue.bin", b"blue " + fresh_bytes(20), "application/octet-stream")),
        ],
        data={"_metadata": json.dumps([{"identifier": "red", "tags": {"color": "warm"}}])},
    )
    assert upload.status_code == 200, upload.text
    tagged_id = upload.json()["blobStoreResult"]["newlyCreated"]["blobObject"]["blobId"]
    warm = tmp_path / "warm"
    devnet.cli(
        "read-quilt",
        f"--quilt-id={tagged_id}",
        "--tag",
        "color",
        "warm",
        "--out",
        str(warm),
        check=True,
    )
    assert sorted(path.name for path in warm.iterdir()) == ["red"]
    assert (warm / "red").read_bytes().startswith(b"red ")
