"""Real `walrus-peer run` processes: kill -9 mid-upload, restart, and check what survived.

docs/design.md §9: a peer killed at any moment comes back with every sliver it had confirmed,
intact. Here a client streams slivers of many blobs into one peer process (three uploads at once, so
requests are in flight), the process is SIGKILLed once a dozen slivers have been acknowledged, and
the same data directory is started again. Everything the peer acknowledged must come back and verify
against the metadata; everything it confirmed must be backed by its slivers (and it signs the
confirmation again); what it never acknowledged is either absent or whole, never half-written.

The peer directories are made with the CLI (``walrus-peer init`` / ``genesis create``) and every
child runs in its own process group, killed in ``finally`` whatever happens.
"""

from __future__ import annotations

import functools
import json
import random
import secrets
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

from walrus_p2p.client.network import LightPeer, open_light_peer
from walrus_p2p.core import records, wire
from walrus_p2p.core.blob_messages import (
    PostBlobRecordsReply,
    PostBlobRecordsRequest,
    encode_records,
)
from walrus_p2p.core.encoding import EncodingConfig, SliverType
from walrus_p2p.core.genesis import Genesis
from walrus_p2p.core.identity import Identity, PublicKey
from walrus_p2p.core.metadata import (
    EncodedBlobWithMetadata,
    encode_blob,
    verify_metadata,
    verify_sliver,
)
from walrus_p2p.errors import RemoteError, WalrusError
from walrus_p2p.testing.network import free_tcp_port
from walrus_p2p.testing.processes import (
    NetworkFiles,
    PeerProcess,
    ProcessNetwork,
    init_process_network,
    run_cli,
    wait_until_answering,
)
from walrus_p2p.types import PeerId, SliverKind

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

PEERS = 4
SHARDS = 10
STEP = 20.0
READY = 45.0
"""Start-up of one peer process: ~1 CPU-second of imports, more on a loaded machine."""
KINDS = (SliverKind.PRIMARY, SliverKind.SECONDARY)
KILL_AFTER_ACKS = random.randint(8, 30)
"""Slivers acknowledged before the kill (about 120 are sent in all): a different moment each run."""
BLOBS = 24
BLOB_SIZE = 600_000

SliverKey = tuple[bytes, int, SliverKind]


@dataclass(frozen=True)
class Blob:
    data: bytes
    encoded: EncodedBlobWithMetadata
    pairs: tuple[int, ...]
    """The pairs the target peer stores."""

    @property
    def blob_id(self) -> bytes:
        return bytes(self.encoded.blob_id)

    def sliver(self, pair: int, kind: SliverKind) -> bytes:
        if kind is SliverKind.PRIMARY:
            return bytes(self.encoded.encoded.sliver(SliverType.PRIMARY, pair))
        return bytes(self.encoded.encoded.sliver(SliverType.SECONDARY, SHARDS - 1 - pair))


@dataclass
class Journal:
    """What the client saw before the kill."""

    registered: set[bytes] = field(default_factory=set)
    metadata_acked: set[bytes] = field(default_factory=set)
    attempted: set[SliverKey] = field(default_factory=set)
    acked: set[SliverKey] = field(default_factory=set)
    confirmed: set[bytes] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    enough_acked: trio.Event = field(default_factory=trio.Event)


def pairs_of(genesis: Genesis, peer_id: PeerId, blob_id: bytes) -> tuple[int, ...]:
    """docs/design.md §3: pair p lives on shard (p + int(blob id)) % n."""
    offset = int.from_bytes(blob_id, "big")
    committee = genesis.committee
    return tuple(p for p in range(SHARDS) if committee.peer_of((p + offset) % SHARDS) == peer_id)


def make_blobs(genesis: Genesis, peer_id: PeerId) -> list[Blob]:
    config = EncodingConfig.for_shards(SHARDS)
    blobs = []
    for _ in range(BLOBS):
        data = secrets.token_bytes(BLOB_SIZE)
        encoded = encode_blob(data, config)
        blobs.append(Blob(data, encoded, pairs_of(genesis, peer_id, bytes(encoded.blob_id))))
    return blobs


def sliver_type(kind: SliverKind) -> SliverType:
    return SliverType.PRIMARY if kind is SliverKind.PRIMARY else SliverType.SECONDARY


def sliver_index(pair: int, kind: SliverKind) -> int:
    return pair if kind is SliverKind.PRIMARY else SHARDS - 1 - pair


@pytest.fixture
def files(tmp_path: Path) -> NetworkFiles:
    return init_process_network(tmp_path / "net", PEERS, SHARDS)


async def upload(
    light: LightPeer,
    owner: Identity,
    genesis: Genesis,
    peer_id: PeerId,
    blobs: list[Blob],
    journal: Journal,
) -> None:
    """Register, metadata, every owned sliver, then ask for the confirmation; blob by blob.
    Stops at the first failure (the kill)."""
    try:
        for blob in blobs:
            register = records.sign_register(
                owner,
                network_id=genesis.network_id,
                blob_id=blob.blob_id,
                size=len(blob.data),
                start_epoch=0,
                end_epoch=2,
                deletable=True,
            )
            await light.call(
                peer_id,
                PostBlobRecordsRequest(blob_id=blob.blob_id, records=encode_records([register])),
                PostBlobRecordsReply,
                timeout=STEP,
            )
            journal.registered.add(blob.blob_id)
            await light.call(
                peer_id,
                wire.StoreMetadataRequest(blob_id=blob.blob_id, metadata=blob.encoded.metadata),
                wire.StoreMetadataReply,
                timeout=STEP,
            )
            journal.metadata_acked.add(blob.blob_id)
            for pair in blob.pairs:
                for kind in KINDS:
                    key = (blob.blob_id, pair, kind)
                    journal.attempted.add(key)
                    request = wire.StoreSliverRequest(
                        blob_id=blob.blob_id,
                        pair_index=pair,
                        sliver_kind=kind,
                        data=blob.sliver(pair, kind),
                    )
                    await light.call(peer_id, request, wire.StoreSliverReply, timeout=STEP)
                    journal.acked.add(key)
                    if len(journal.acked) >= KILL_AFTER_ACKS:
                        journal.enough_acked.set()
            reply = await light.call(
                peer_id,
                wire.GetConfirmationRequest(blob_id=blob.blob_id, epoch=0, permanent=False),
                wire.GetConfirmationReply,
                timeout=STEP,
            )
            check_confirmation(genesis, peer_id, blob, reply)
            journal.confirmed.add(blob.blob_id)
    except WalrusError as error:
        journal.failures.append(f"{error.reason}: {error}")


def check_confirmation(
    genesis: Genesis, peer_id: PeerId, blob: Blob, reply: wire.GetConfirmationReply
) -> None:
    body = reply.confirmation.confirmation
    key = genesis.committee.member(peer_id).public_key
    assert body.blob_id == blob.blob_id
    assert body.public_key == key
    assert body.network_id == genesis.network_id
    PublicKey(key).verify(
        records.CONFIRMATION_CONTEXT, wire.signing_bytes(body), reply.confirmation.signature
    )


async def fetch_sliver(
    light: LightPeer, peer_id: PeerId, blob: Blob, pair: int, kind: SliverKind
) -> bytes | None:
    """The sliver the peer serves, or None if it says it has none."""
    request = wire.GetSliverRequest(blob_id=blob.blob_id, pair_index=pair, sliver_kind=kind)
    try:
        with trio.fail_after(STEP):
            reply = await light.call(peer_id, request, wire.GetSliverReply, timeout=STEP)
    except RemoteError as error:
        assert error.reason == "SLIVER_NOT_FOUND", f"unexpected refusal {error.reason}: {error}"
        return None
    return reply.data


async def health(port: int) -> dict[str, object]:
    with trio.fail_after(STEP):
        async with httpx.AsyncClient(timeout=STEP) as http:
            response = await http.get(f"http://127.0.0.1:{port}/health")
    # 503 while the peer still catches up (epoch chain); the summary names the peer either way.
    assert response.status_code in (200, 503), response.text
    summary: dict[str, object] = response.json()
    assert summary["status"] in ("ok", "starting")
    return summary


async def test_sigkill_while_streaming_slivers_keeps_every_acknowledged_sliver(
    files: NetworkFiles,
) -> None:
    genesis = files.genesis
    target = files.peers[0]
    metrics_port = free_tcp_port()
    peer = PeerProcess(target.path, ("--metrics", f"127.0.0.1:{metrics_port}"))
    owner = Identity.from_seed(secrets.token_bytes(32))
    blobs = await trio.to_thread.run_sync(make_blobs, genesis, target.peer_id)
    assert all(blob.pairs for blob in blobs)  # 10 shards over 4 peers: each holds 2-3
    journal = Journal()
    try:
        # -- first life: stream slivers in, kill -9 mid-stream ---------------------------------
        peer.start()
        async with open_light_peer(genesis) as light:
            await wait_until_answering(light, target.peer_id, timeout=READY, process=peer)
            first_health = await health(metrics_port)
            assert first_health["peerId"] == target.peer_id

            killed_at: list[int] = []

            async def kill_when_enough_acked() -> None:
                await journal.enough_acked.wait()
                await trio.sleep(random.uniform(0.0, 0.05))
                killed_at.append(len(journal.acked))
                status = await trio.to_thread.run_sync(peer.kill)
                assert status == -signal.SIGKILL

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(kill_when_enough_acked)
                    for worker in range(3):
                        nursery.start_soon(
                            upload, light, owner, genesis, target.peer_id, blobs[worker::3], journal
                        )
        print(
            f"killed after {killed_at} acks: metadata={len(journal.metadata_acked)} "
            f"acked={len(journal.acked)} attempted={len(journal.attempted)} "
            f"confirmed={len(journal.confirmed)} failures={journal.failures}"
        )
        assert killed_at, "the kill never happened"
        assert len(journal.acked) >= KILL_AFTER_ACKS
        assert len(journal.failures) == 3, "every upload was cut by the kill"

        # -- second life: same data directory ------------------------------------------------
        peer.start()
        async with open_light_peer(genesis) as light:
            await wait_until_answering(light, target.peer_id, timeout=READY, process=peer)
            # Same identity: the Noise handshake authenticated the committee's peer id, and the
            # peer reports it itself.
            assert target.peer_id in light.host.connected_peers()
            assert (await health(metrics_port))["peerId"] == target.peer_id

            by_id = {blob.blob_id: blob for blob in blobs}
            for blob_id in journal.metadata_acked:
                blob = by_id[blob_id]
                with trio.fail_after(STEP):
                    reply = await light.call(
                        target.peer_id,
                        wire.GetMetadataRequest(blob_id=blob_id),
                        wire.GetMetadataReply,
                        timeout=STEP,
                    )
                verify_metadata(reply.metadata, blob_id)
                assert reply.metadata == blob.encoded.metadata

            # Every acknowledged sliver is back and verifies.
            for blob_id, pair, kind in sorted(journal.acked, key=repr):
                blob = by_id[blob_id]
                data = await fetch_sliver(light, target.peer_id, blob, pair, kind)
                assert data is not None, f"acknowledged sliver lost: pair {pair} {kind}"
                verify_sliver(
                    blob.encoded.metadata, sliver_type(kind), sliver_index(pair, kind), data
                )
                assert data == blob.sliver(pair, kind)

            # Nothing half-written: a sliver never acknowledged is absent or whole.
            in_flight = journal.attempted - journal.acked
            for blob_id, pair, kind in sorted(in_flight, key=repr):
                blob = by_id[blob_id]
                data = await fetch_sliver(light, target.peer_id, blob, pair, kind)
                if data is not None:
                    verify_sliver(
                        blob.encoded.metadata, sliver_type(kind), sliver_index(pair, kind), data
                    )

            # Every confirmation is backed by durable slivers, and is signed again.
            for blob_id in journal.confirmed:
                blob = by_id[blob_id]
                for pair in blob.pairs:
                    for kind in KINDS:
                        data = await fetch_sliver(light, target.peer_id, blob, pair, kind)
                        assert data == blob.sliver(pair, kind)
                with trio.fail_after(STEP):
                    reply = await light.call(
                        target.peer_id,
                        wire.GetConfirmationRequest(blob_id=blob_id, epoch=0, permanent=False),
                        wire.GetConfirmationReply,
                        timeout=STEP,
                    )
                check_confirmation(genesis, target.peer_id, blob, reply)

            # The status a peer reports matches what it serves, and the register records
            # it acknowledged survived too.
            for blob_id in journal.registered:
                blob = by_id[blob_id]
                with trio.fail_after(STEP):
                    status = await light.call(
                        target.peer_id,
                        wire.BlobStatusRequest(blob_id=blob_id),
                        wire.BlobStatusReply,
                        timeout=STEP,
                    )
                whole = {
                    p for p in blob.pairs if all((blob_id, p, k) in journal.acked for k in KINDS)
                }
                assert status.known and status.end_epoch == 2
                if blob_id in journal.metadata_acked:
                    assert status.has_metadata
                assert whole <= set(status.stored_pair_indices)
                assert set(status.stored_pair_indices) <= set(blob.pairs)

            # A peer that was killed still stops cleanly on SIGTERM.
            peer.signal(signal.SIGTERM)
            assert await trio.to_thread.run_sync(peer.wait, 15.0) == 0, peer.log_tail()
    finally:
        if peer.process is not None:
            peer.kill()


async def test_sigterm_stops_the_peer_cleanly_even_while_slivers_stream_in(
    files: NetworkFiles,
) -> None:
    genesis = files.genesis
    target = files.peers[1]
    peer = PeerProcess(target.path)
    owner = Identity.from_seed(secrets.token_bytes(32))
    blobs = await trio.to_thread.run_sync(make_blobs, genesis, target.peer_id)
    journal = Journal()
    try:
        peer.start()
        async with open_light_peer(genesis) as light:
            await wait_until_answering(light, target.peer_id, timeout=READY, process=peer)
            outcome: list[tuple[int | None, float]] = []

            async def terminate_when_enough_acked() -> None:
                await journal.enough_acked.wait()
                started = time.monotonic()
                peer.signal(signal.SIGTERM)
                status = await trio.to_thread.run_sync(peer.wait, 15.0)
                outcome.append((status, time.monotonic() - started))

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(terminate_when_enough_acked)
                    for worker in range(2):
                        nursery.start_soon(
                            upload, light, owner, genesis, target.peer_id, blobs[worker::2], journal
                        )
        assert outcome, "SIGTERM was never sent"
        status, took = outcome[0]
        print(
            f"SIGTERM: exit {status} after {took:.2f}s, {len(journal.acked)} slivers acknowledged"
        )
        assert status == 0, f"exit {status} after SIGTERM:\n{peer.log_tail()}"
        assert took < 10.0, f"SIGTERM took {took:.1f}s"
        log = peer.log_text()
        assert "peer stopped" in log
        assert "Traceback" not in log
        # What it acknowledged before stopping is there after a restart.
        peer.start()
        async with open_light_peer(genesis) as light:
            await wait_until_answering(light, target.peer_id, timeout=READY, process=peer)
            by_id = {blob.blob_id: blob for blob in blobs}
            for blob_id, pair, kind in sorted(journal.acked, key=repr):
                data = await fetch_sliver(light, target.peer_id, by_id[blob_id], pair, kind)
                assert data == by_id[blob_id].sliver(pair, kind)
    finally:
        if peer.process is not None:
            peer.kill()


async def test_four_peer_processes_store_and_read_through_the_cli(
    files: NetworkFiles, tmp_path: Path
) -> None:
    """The manual smoke test, automated: 4 `walrus-peer run`, then `store` and `read`."""
    network = ProcessNetwork(files)
    data = secrets.token_bytes(300_000)
    source, output, keys = tmp_path / "blob.bin", tmp_path / "back.bin", tmp_path / "keys"
    source.write_bytes(data)
    client = ("--genesis", str(files.genesis_path), "--key-dir", str(keys))
    with network.running():
        async with open_light_peer(network.genesis) as light:
            with trio.fail_after(READY + 10):
                async with trio.open_nursery() as nursery:
                    for index, process in enumerate(network.processes):
                        nursery.start_soon(
                            functools.partial(
                                wait_until_answering,
                                light,
                                network.peer_id(index),
                                timeout=READY,
                                process=process,
                            )
                        )
        stored = await trio.to_thread.run_sync(
            functools.partial(run_cli, "store", str(source), "--epochs", "2", "--json", *client)
        )
        assert stored.returncode == 0, stored.stderr
        blob_id = json.loads(stored.stdout)[0]["newlyCreated"]["blobObject"]["blobId"]
        read = await trio.to_thread.run_sync(
            functools.partial(run_cli, "read", blob_id, "-o", str(output), *client)
        )
        assert read.returncode == 0, read.stderr
        assert output.read_bytes() == data
        assert all(process.running for process in network.processes)
    assert not any(process.running for process in network.processes)


# -- bad files: one line naming the file, exit 2 ------------------------------------------------


def test_run_with_its_listen_port_taken_prints_one_line_and_fails(files: NetworkFiles) -> None:
    peer = files.peers[2]
    port = int(peer.address.rsplit("/", 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        result = run_cli("run", "--data-dir", str(peer.path), timeout=45)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(port) in errors[0], result.stderr


def test_store_with_no_peer_running_prints_one_line_and_exits_4(
    files: NetworkFiles, tmp_path: Path
) -> None:
    """A failed store reports the quorum failure (it used to die of a BufferError traceback
    while unmapping the file)."""
    source = tmp_path / "blob.bin"
    source.write_bytes(secrets.token_bytes(100_000))
    result = run_cli(
        "store",
        str(source),
        "--epochs",
        "1",
        "--genesis",
        str(files.genesis_path),
        "--key-dir",
        str(tmp_path / "keys"),
        timeout=60,
    )
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "NOT_ENOUGH_PEERS" in errors[0], result.stderr


def _copy_peer(files: NetworkFiles, destination: Path) -> tuple[Path, Path]:
    """A copy of peer 0's directory whose config points at its own copy of the genesis."""
    source = files.peers[0].path
    data_dir = destination / "peer"
    shutil.copytree(source, data_dir)
    genesis = destination / "genesis.toml"
    shutil.copy(files.genesis_path, genesis)
    config = data_dir / "peer.toml"
    text = config.read_text()
    assert str(files.genesis_path) in text
    config.write_text(text.replace(str(files.genesis_path), str(genesis)))
    return data_dir, genesis


def _break(case: str, data_dir: Path, genesis: Path) -> Path:
    """Damage one file the way ``case`` says; return the file that is now bad."""
    key, config = data_dir / "identity.key", data_dir / "peer.toml"
    if case == "key missing":
        key.unlink()
        return key
    if case == "key corrupt":
        key.write_bytes(b"\x00\xffnot toml at all = = =\n")
        return key
    if case == "key seed damaged":
        text = key.read_text()
        seed = json.loads(text.split("seed = ", 1)[1].splitlines()[0])
        key.write_text(text.replace(seed, ("0" if seed[0] != "0" else "1") + seed[1:]))
        return key
    if case == "key readable by others":
        key.chmod(0o644)
        return key
    if case == "config missing":
        config.unlink()
        return config
    if case == "config corrupt":
        config.write_text("version = 1\nlisten_addresses = [\n")
        return config
    if case == "config bad address":
        text = config.read_text()
        config.write_text(text.replace("/ip4/127.0.0.1/tcp/", "/ip4/127.0.0.1/udp/"))
        return config
    if case == "genesis missing":
        genesis.unlink()
        return genesis
    if case == "genesis corrupt":
        genesis.write_bytes(secrets.token_bytes(200))
        return genesis
    if case == "genesis truncated":
        text = genesis.read_text()
        genesis.write_text(text[: len(text) // 2])
        return genesis
    raise AssertionError(case)


BAD_FILE_CASES = [
    "key missing",
    "key corrupt",
    "key seed damaged",
    "key readable by others",
    "config missing",
    "config corrupt",
    "config bad address",
    "genesis missing",
    "genesis corrupt",
    "genesis truncated",
]


def test_run_with_a_missing_or_corrupt_file_prints_one_line_and_exits_2(
    files: NetworkFiles, tmp_path: Path
) -> None:
    import subprocess

    from walrus_p2p.testing.processes import cli_command

    started: list[tuple[str, Path, subprocess.Popen[str]]] = []
    try:
        for number, case in enumerate(BAD_FILE_CASES):
            data_dir, genesis = _copy_peer(files, tmp_path / f"case-{number}")
            bad = _break(case, data_dir, genesis)
            process = subprocess.Popen(
                cli_command("run", "--data-dir", str(data_dir)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
            started.append((case, bad, process))
        for case, bad, process in started:
            stdout, stderr = process.communicate(timeout=45)
            assert process.returncode == 2, f"{case}: exit {process.returncode}\n{stderr}"
            assert "Traceback" not in stderr, f"{case}:\n{stderr}"
            errors = [line for line in stderr.splitlines() if line.startswith("error:")]
            assert len(errors) == 1, f"{case}: {stderr!r}"
            assert str(bad) in errors[0], f"{case}: error does not name {bad}: {errors[0]}"
            assert stdout == ""
    finally:
        for _, _, process in started:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_cli_init_refuses_to_overwrite_and_genesis_create_names_the_bad_member(
    files: NetworkFiles, tmp_path: Path
) -> None:
    peer = files.peers[0]
    again = run_cli(
        "init",
        "--data-dir",
        str(peer.path),
        "--genesis",
        str(files.genesis_path),
        "--listen",
        peer.address,
    )
    assert again.returncode == 2 and "already initialised" in again.stderr
    missing = tmp_path / "no-such-peer"
    result = run_cli(
        "genesis", "create", "--network", "x", "--shards", "4", "--member", str(missing)
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and str(missing) in result.stderr
